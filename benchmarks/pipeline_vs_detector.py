"""The demo's figures beside the bare detector's, on the same machine.

One run, one process: first the whole demo pipeline (replay into Kafka,
decode, detect, RNN, publish, commit) on the video; then the same detector
alone on the same frames, decoded beforehand, with the same batch size and
torch threads. The ratio is the share of the model's speed the pipeline keeps.

    .venv/bin/python benchmarks/pipeline_vs_detector.py [--video PATH]
        [--weights coco|random] [--batch-size N] [--threads N] [--max-frames N]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cv2
import torch
from _broker import temporary_broker

from consumers.detection import build_detector
from consumers.worker import select_device
from pipeline.config import load_settings
from pipeline.demo import run_demo
from pipeline.frames import decode_jpeg, encode_jpeg
from pipeline.samples import sample_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="default: the sample vtest.avi")
    parser.add_argument("--weights", default="coco")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--speed", default="max")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    video = args.video or sample_video()

    with (
        temporary_broker(8 * 1024 * 1024) as broker,
        tempfile.TemporaryDirectory() as out,
    ):
        settings = load_settings(
            None,
            {
                "kafka.bootstrap_servers": broker.bootstrap_servers,
                "consumer.detector.weights": args.weights,
                "consumer.batch_size": args.batch_size,
                "consumer.threads": args.threads,
            },
            environ={},
        )
        speed = args.speed if args.speed == "max" else float(args.speed)
        report = run_demo(
            settings, video, Path(out), speed=speed, max_frames=args.max_frames
        )
    print("pipeline (framestream demo):")
    for line in report.lines:
        print("  " + line)

    # The bare detector: same model, weights, batch size and threads, on the
    # same JPEG round trip of the same frames, timed around the model alone.
    config = settings.consumer.detector
    if report.random_weights:
        config = config.model_copy(update={"weights": "random"})
    detector = build_detector(config, select_device(settings.consumer.device))
    capture = cv2.VideoCapture(str(video))
    frames = []
    while args.max_frames is None or len(frames) < args.max_frames:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(decode_jpeg(encode_jpeg(image, settings.producer.jpeg_quality)))
    detector(frames[: args.batch_size])  # warm-up, as the pipeline had its first batch
    started = time.perf_counter()
    for index in range(0, len(frames), args.batch_size):
        detector(frames[index : index + args.batch_size])
    bare_s = time.perf_counter() - started
    bare_fps = len(frames) / bare_s

    pipeline_fps = report.consume.fps
    print(
        f"bare detector ({detector.name}, {detector.weights}, batch {args.batch_size}, "
        f"{args.threads} threads): {bare_fps:.1f} frames/s over {len(frames)} frames"
    )
    print(f"pipeline fps / bare detector fps: {pipeline_fps / bare_fps:.2f}")


if __name__ == "__main__":
    main()
