"""The ``framestream`` command's failures: a clear message, a non-zero exit code,
and never a password."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest
from cli_process import cli_env, run_framestream

SASL_PASSWORD = "hunter2-sasl"
CAMERA_PASSWORD = "camsecret-77"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "producer:\n  jpeg_qualty: 80\n",
            "producer.jpeg_qualty: unknown field; expected one of",
            id="misspelt field",
        ),
        pytest.param(
            "topics:\n  partitions: many\n",
            "topics.partitions: Input should be a valid integer, unable to parse "
            "string as an integer; got 'many'",
            id="text for an integer",
        ),
        pytest.param(
            "cameras:\n  - {id: gate, source: 'rtsp://host:99999/x'}\n",
            "cameras.0.source: expected a URL with a port of 0-65535; "
            "got 'rtsp://host:99999/x'",
            id="port out of range",
        ),
        pytest.param(
            "cameras:\n  - {id: gate, source: 'ftp://x'}\n",
            "cameras.0.source: expected a URL of scheme rtsp, rtsps, rtmp, http, "
            "https with a host name; got 'ftp://x'",
            id="unsupported scheme",
        ),
    ],
)
def test_produce_with_an_invalid_config_exits_2_naming_the_problem(
    tmp_path, text, problem
):
    config = tmp_path / "bad.yaml"
    config.write_text(text)

    done = run_framestream(
        "-c", str(config), "produce", "--source", "x.avi", "--camera", "c"
    )

    assert done.returncode == 2
    assert f"error: invalid config ({config}):" in done.stderr
    assert problem in done.stderr
    assert done.stdout == ""


def test_config_errors_on_the_command_line_mask_every_password(tmp_path):
    config = tmp_path / "secret.yaml"
    config.write_text(
        "kafka:\n"
        "  sasl_mechanism: PLAIN\n"
        "  sasl_plain_username: framestream\n"
        f"  sasl_plain_password: {SASL_PASSWORD}\n"
        "cameras:\n"
        "  - id: gate\n"
        f"    source: rtsp://admin:{CAMERA_PASSWORD}@cam.local:99999/live\n"
        f"  - source: rtsp://admin:{CAMERA_PASSWORD}@cam.local/door\n"
    )

    done = run_framestream("-c", str(config), "produce")

    assert done.returncode == 2
    assert "cameras.0.source: expected a URL with a port" in done.stderr
    assert "rtsp://admin:***@cam.local:99999/live" in done.stderr
    assert "cameras.1.id: Field required" in done.stderr
    assert SASL_PASSWORD not in done.stderr + done.stdout
    assert CAMERA_PASSWORD not in done.stderr + done.stdout


def test_a_missing_config_file_exits_2_naming_it(tmp_path):
    config = tmp_path / "absent.yaml"

    done = run_framestream("-c", str(config), "topics", "create")

    assert done.returncode == 2
    assert f"error: cannot read config file {config}" in done.stderr


def test_a_bad_speed_flag_exits_2_saying_what_it_expects():
    done = run_framestream(
        "produce", "--source", "x.avi", "--camera", "c", "--speed", "fast"
    )

    assert done.returncode == 2
    assert "expected a number > 0 or 'max', got 'fast'" in done.stderr


def test_a_missing_source_file_stops_the_camera_naming_the_path(settings, tmp_path):
    source = tmp_path / "missing.avi"

    done = run_framestream(
        "produce",
        "--source",
        str(source),
        "--camera",
        "c",
        env=cli_env(settings),
    )

    assert done.returncode == 1
    message = f"camera c: source '{source}' is not a video file, an image folder"
    assert message in done.stderr
    assert f"c: stopped: {message}" in done.stdout
    assert "c: read 0, sent 0" in done.stdout


@pytest.mark.parametrize(
    ("depth_scaling", "exit_code", "summary"),
    [
        (None, 1, "d: read 1, sent 0, dropped 1, failed 0"),
        ("shift", 0, "d: read 1, sent 1, dropped 0, failed 0"),
    ],
)
def test_a_16_bit_image_stops_produce_unless_depth_scaling_is_set(
    settings, tmp_path, depth_scaling, exit_code, summary
):
    folder = tmp_path / "depth"
    folder.mkdir()
    cv2.imwrite(str(folder / "depth.png"), np.full((48, 64), 1000, np.uint16))
    env = cli_env(settings)
    if depth_scaling:
        env["FRAMESTREAM_PRODUCER__DEPTH_SCALING"] = depth_scaling

    done = run_framestream(
        "produce", "--source", str(folder), "--camera", "d", "--speed", "max", env=env
    )

    assert done.returncode == exit_code, done.stderr
    assert summary in done.stdout
    if exit_code:
        stopped = next(line for line in done.stdout.splitlines() if "stopped" in line)
        assert "uint16" in stopped and "producer.depth_scaling" in stopped
        assert "uint16" in done.stderr


def test_produce_without_a_running_local_broker_says_how_to_start_one(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free: nothing listens there
    env = {
        "FRAMESTREAM_BROKER__DATA_DIR": str(tmp_path / "broker"),
        "FRAMESTREAM_BROKER__PORT": str(port),
    }

    done = run_framestream("produce", "--source", "x.avi", "--camera", "c", env=env)

    assert done.returncode == 1
    assert f"the local broker at 127.0.0.1:{port} is not running" in done.stderr
    assert "framestream broker start" in done.stderr
