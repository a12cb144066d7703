"""The ``framestream`` command end to end: produce, subscribe, topics, broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest
from cli_process import FRAMESTREAM, cli_env, run_framestream
from kafka import KafkaConsumer
from topic_reader import read_topic

from pipeline.config import CameraSettings
from pipeline.kafka import client_config, ensure_topics
from pipeline.messages import header_dict, is_end_of_stream
from producers.runner import produce


def test_produce_replays_a_clip_then_exits_with_a_summary(settings, clip_factory):
    clip = clip_factory(frames=50, width=160, height=120)

    done = run_framestream(
        "produce",
        "--source",
        str(clip),
        "--camera",
        "c",
        "--speed",
        "max",
        env=cli_env(settings),
        timeout_s=30,
    )
    records = read_topic(settings, settings.topics.frames, expect=51)

    assert done.returncode == 0, done.stderr
    assert re.search(
        r"^c: read 50, sent 50, dropped 0, failed 0, skipped 0, [\d.]+ frames/s",
        done.stdout,
        re.MULTILINE,
    ), done.stdout
    records.sort(key=lambda record: record.offset)
    assert len(records) == 51
    assert [int(header_dict(r.headers)["seq"]) for r in records[:-1]] == list(range(50))
    assert is_end_of_stream(records[-1].headers)
    assert header_dict(records[-1].headers)["seq"] == "50"


def test_subscribe_from_a_time_prints_only_messages_at_or_after_it(
    settings_factory, clip_factory
):
    # Paced (2 s of clip in 1 s) so that the messages' times spread out.
    settings = settings_factory(**{"producer.speed": 2.0})
    clip = clip_factory(frames=50, fps=25)
    produce(settings, [CameraSettings(id="gate", source=str(clip))])
    records = sorted(
        read_topic(settings, settings.topics.frames, expect=51),
        key=lambda record: record.offset,
    )
    start_ms = records[25].timestamp
    start = datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc)
    expected = {record.offset for record in records if record.timestamp >= start_ms}
    assert 10 < len(expected) < 40, "the messages' times did not spread out"

    done = run_framestream(
        "subscribe",
        "--from-time",
        start.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        # Stops once as many messages came as expected: a start too early
        # shows as earlier offsets, one too late as a timeout with fewer.
        "--max-messages",
        str(len(expected)),
        "--timeout",
        "10",
        env=cli_env(settings),
    )

    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(message["offset"] for message in printed) == sorted(expected)
    assert all(message["timestamp_ms"] >= start_ms for message in printed)
    assert {message["key"] for message in printed} == {"gate"}
    frames = [message for message in printed if "eos" not in message["headers"]]
    assert all(message["size_bytes"] > 0 for message in frames)


@pytest.mark.parametrize(
    ("in_file", "in_env", "flag", "expected"),
    [(2, None, None, 2), (2, 3, None, 3), (2, 3, 4, 4)],
)
def test_topics_create_takes_partitions_from_file_then_environment_then_flag(
    settings, tmp_path, in_file, in_env, flag, expected
):
    config = tmp_path / "framestream.yaml"
    config.write_text(f"topics:\n  partitions: {in_file}\n")
    env = cli_env(settings)
    del env["FRAMESTREAM_TOPICS__PARTITIONS"]
    if in_env is not None:
        env["FRAMESTREAM_TOPICS__PARTITIONS"] = str(in_env)
    args = ["-c", str(config), "topics", "create"]
    if flag is not None:
        args += ["--partitions", str(flag)]

    done = run_framestream(*args, env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created: ")
    consumer = KafkaConsumer(**client_config(settings))
    try:
        for topic in (settings.topics.frames, settings.topics.results):
            assert len(consumer.partitions_for_topic(topic)) == expected
    finally:
        consumer.close()


def test_broker_status_of_an_empty_data_folder_says_not_running(tmp_path):
    data_dir = tmp_path / "no-broker"
    data_dir.mkdir()

    done = run_framestream("broker", "status", "--data-dir", str(data_dir))

    assert done.returncode == 3
    assert done.stdout.strip() == f"broker not running; data folder {data_dir}"


def test_subscribe_waiting_on_a_quiet_topic_ends_promptly_on_sigterm(settings):
    ensure_topics(settings)
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FRAMESTREAM_")
    } | cli_env(settings)
    process = subprocess.Popen(
        [str(FRAMESTREAM), "subscribe"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Time to connect and settle into waiting for messages that never come.
        time.sleep(4)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0
    assert "SIGTERM received" in process.stderr.read()
