"""One ``produce`` process serving many cameras over one Kafka producer.

Each camera runs on a thread of its own, so a camera that fails, hangs on a
reconnect or ends early never holds up the others. The Kafka producer is
shared (kafka-python's producer is thread-safe) so that frames of all cameras
fill the same request batches.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from kafka.errors import KafkaError

from pipeline.config import CameraSettings, Settings
from pipeline.kafka import (
    describe_connection,
    ensure_topics,
    make_producer,
    max_frame_bytes,
)
from producers.camera import CameraPublisher, CameraStats

log = logging.getLogger(__name__)


@dataclass
class ProduceSummary:
    cameras: list[CameraStats]
    elapsed_s: float

    @property
    def failed_cameras(self) -> list[CameraStats]:
        return [camera for camera in self.cameras if camera.error]

    def total(self, name: str) -> int:
        return sum(getattr(camera, name) for camera in self.cameras)

    def lines(self) -> list[str]:
        rows = [
            _summary_line(camera.camera_id, vars(camera), camera.elapsed_s)
            for camera in self.cameras
        ]
        if len(self.cameras) > 1:
            totals = {name: self.total(name) for name in _COUNTERS}
            rows.append(_summary_line("total", totals, self.elapsed_s))
        for camera in self.failed_cameras:
            rows.append(f"{camera.camera_id}: stopped: {camera.error}")
        return rows


_COUNTERS = ("read", "sent", "dropped", "failed", "skipped", "bytes_sent")


def _summary_line(name: str, counts: dict, elapsed_s: float) -> str:
    elapsed_s = max(elapsed_s, 1e-9)
    megabytes = counts["bytes_sent"] / 1e6
    return (
        f"{name}: read {counts['read']}, sent {counts['sent']}, "
        f"dropped {counts['dropped']}, failed {counts['failed']}, "
        f"skipped {counts['skipped']}, {counts['sent'] / elapsed_s:.1f} frames/s, "
        f"{megabytes:.2f} MB sent ({megabytes / elapsed_s:.2f} MB/s)"
    )


def produce(
    settings: Settings,
    cameras: list[CameraSettings],
    stop: threading.Event | None = None,
) -> ProduceSummary:
    """Publish every camera until each ends (or ``stop`` is set); then flush."""
    stop = stop or threading.Event()
    topics = {camera.topic or settings.topics.frames for camera in cameras}
    log.info(
        "producing %d camera(s) to %s on %s",
        len(cameras),
        ", ".join(sorted(topics)),
        describe_connection(settings),
    )
    ensure_topics(settings, topics)
    producer = make_producer(settings)
    started = time.monotonic()

    publishers = [
        CameraPublisher(
            camera,
            settings.producer,
            producer,
            camera.topic or settings.topics.frames,
            max_frame_bytes(settings),
            stop,
            progress_position=index,
        )
        for index, camera in enumerate(cameras)
    ]
    threads = [
        threading.Thread(target=publisher.run, name=f"camera-{publisher.camera.id}")
        for publisher in publishers
    ]
    for thread in threads:
        thread.start()
    # Join with a timeout so the main thread keeps receiving signals.
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.2)

    _flush_and_close(producer, settings.producer.delivery_timeout_ms / 1000.0)
    stats = [publisher.stats for publisher in publishers]
    for camera in stats:
        if camera.unaccounted:
            # Still unacknowledged after the delivery timeout: count them, so
            # the summary always adds up to the frames read.
            log.warning(
                "camera %s: %d frame(s) unacknowledged at close; counted as failed",
                camera.camera_id,
                camera.unaccounted,
            )
            camera.failed += camera.unaccounted
    return ProduceSummary(stats, time.monotonic() - started)


def _flush_and_close(producer, timeout_s: float) -> None:
    try:
        producer.flush(timeout=timeout_s)
    except KafkaError as err:
        log.warning("flush did not finish within %.0f s: %s", timeout_s, err)
    producer.close(timeout=5)
