"""A broker that goes away mid-replay: every frame read ends on the topic or in a
counter, and none is written twice."""

from __future__ import annotations

import threading
import time

from kafka import TopicPartition
from topic_reader import read_topic

from pipeline.config import CameraSettings
from pipeline.kafka import make_consumer
from pipeline.messages import header_dict, is_end_of_stream
from producers.runner import produce

OUTAGE_S = 20
CLIP_FRAMES = 600
CLIP_FPS = 25


def wait_for_first_frames(settings, timeout_s: float = 30.0) -> None:
    """Returns once the broker has acknowledged a frame of the topic."""
    consumer = make_consumer(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(settings.topics.frames) or set()
            assigned = [TopicPartition(settings.topics.frames, p) for p in partitions]
            acked = sum(consumer.end_offsets(assigned).values()) if assigned else 0
            if acked:
                return
            time.sleep(0.1)
        raise AssertionError("no frame reached the broker before the outage")
    finally:
        consumer.close()


def test_a_broker_outage_mid_replay_loses_no_frame_and_writes_none_twice(
    broker_factory, settings_factory, clip_factory
):
    broker = broker_factory()
    # Real time: the 24 s clip is still replaying when the broker goes away.
    settings = settings_factory(broker, **{"producer.speed": 1.0})
    clip = clip_factory(frames=CLIP_FRAMES, width=320, height=240, fps=CLIP_FPS)
    outcome = {}
    replay = threading.Thread(
        target=lambda: outcome.update(
            summary=produce(settings, [CameraSettings(id="yard", source=str(clip))])
        )
    )

    replay.start()
    try:
        wait_for_first_frames(settings)
        broker.stop(timeout_s=30)
        time.sleep(OUTAGE_S)
        broker.start()
        # Still replaying (its frames waiting for Kafka), not long finished.
        replaying_at_restart = replay.is_alive()
    finally:
        replay.join(timeout=120)
    assert not replay.is_alive(), "the replay did not finish after the broker returned"
    assert replaying_at_restart, "the outage came after the replay had ended"

    (stats,) = outcome["summary"].cameras
    records = read_topic(settings, settings.topics.frames, expect=stats.sent + 1)
    frames = [record for record in records if not is_end_of_stream(record.headers)]
    seqs = [int(header_dict(record.headers)["seq"]) for record in frames]

    assert stats.error is None and stats.end_of_stream_sent
    assert stats.read == CLIP_FRAMES
    assert len(seqs) == len(set(seqs)), "a frame was written twice"
    assert set(seqs) <= set(range(CLIP_FRAMES))
    assert len(set(seqs)) + stats.failed + stats.dropped == stats.read
    assert len(seqs) == stats.sent
