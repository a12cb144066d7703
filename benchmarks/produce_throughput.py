"""Producer throughput: `produce --speed max` beside kafka-python's raw send rate.

Both run in one process against one fresh local broker, on the same JPEG
bytes: the raw run sends frames encoded beforehand with a bare producer of the
same configuration, so the ratio shows what reading, encoding and accounting
cost on top of Kafka itself.

    .venv/bin/python benchmarks/produce_throughput.py [--video PATH]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
from _broker import temporary_broker

from pipeline.config import CameraSettings, load_settings
from pipeline.frames import encode_jpeg
from pipeline.kafka import ensure_topics, make_producer
from pipeline.samples import sample_video
from producers.runner import produce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="default: the sample vtest.avi")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    video = args.video or sample_video()

    with temporary_broker(8 * 1024 * 1024) as broker:
        settings = load_settings(
            None,
            {
                "kafka.bootstrap_servers": broker.bootstrap_servers,
                "topics.frames": "bench.frames",
            },
            environ={},
        )
        quality = settings.producer.jpeg_quality

        started = time.perf_counter()
        summary = produce(
            settings, [CameraSettings(id="bench", source=str(video), speed="max")]
        )
        pipeline_s = time.perf_counter() - started
        camera = summary.cameras[0]

        capture = cv2.VideoCapture(str(video))
        frames = []
        started = time.perf_counter()
        while True:
            ok, image = capture.read()
            if not ok:
                break
            frames.append(encode_jpeg(image, quality))
        encode_s = time.perf_counter() - started

        ensure_topics(settings, ["bench.raw"])
        producer = make_producer(settings)
        started = time.perf_counter()
        futures = [
            producer.send("bench.raw", key="bench", value=jpeg) for jpeg in frames
        ]
        producer.flush()
        raw_s = time.perf_counter() - started
        producer.close()
        assert all(future.succeeded() for future in futures)

    megabytes = sum(map(len, frames)) / 1e6
    print(
        f"video {video.name}: {len(frames)} frames, "
        f"{megabytes:.1f} MB as JPEG q{quality}"
    )
    print(
        f"framestream produce --speed max: {camera.sent / pipeline_s:7.1f} frames/s "
        f"{camera.bytes_sent / 1e6 / pipeline_s:6.1f} MB/s  (sent {camera.sent}, "
        f"failed {camera.failed}, dropped {camera.dropped})"
    )
    print(
        f"kafka-python raw send, same bytes: {len(frames) / raw_s:7.1f} frames/s "
        f"{megabytes / raw_s:6.1f} MB/s"
    )
    print(f"decode + JPEG encode alone:        {len(frames) / encode_s:7.1f} frames/s")
    print(f"produce / raw send: {raw_s / pipeline_s:.2f}")


if __name__ == "__main__":
    main()
