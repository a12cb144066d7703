"""``framestream demo``: the whole pipeline on recorded video, end to end.

Starts the local broker unless a cluster is configured, creates the topics,
replays the video into the frames topic while an inference consumer runs,
waits until every frame has a result (or a dead letter), then writes the
results as JSONL and an annotated MP4 and prints a summary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
from kafka import TopicPartition

from pipeline.config import CameraSettings, Settings
from pipeline.errors import ConfigError, FramestreamError
from pipeline.kafka import ensure_topics, make_consumer

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: COCO weights could not be had, so detections mean nothing"
)
# After the replay ends, how long results may take to catch up before the demo
# gives up and reports what is missing.
_CATCH_UP_TIMEOUT_S = 600.0


@dataclass
class DemoReport:
    frames_sent: int
    results: list[dict]
    lines: list[str]
    results_path: Path
    video_path: Path | None
    random_weights: bool
    # consumers.worker.ConsumeStats of the demo's inference consumer.
    consume: object


def run_demo(
    settings: Settings,
    video: Path,
    out_dir: Path,
    *,
    speed: float | str = "max",
    max_frames: int | None = None,
    keep_broker: bool = False,
    stop: threading.Event | None = None,
) -> DemoReport:
    from consumers.detection import build_detector
    from consumers.worker import InferenceWorker, select_device
    from producers.runner import produce

    stop = stop or threading.Event()
    if not video.is_file():
        raise FramestreamError(f"demo video {video} not found: expected a video file")
    out_dir.mkdir(parents=True, exist_ok=True)

    broker = _start_local_broker(settings)
    try:
        ensure_topics(settings)
        config = settings.consumer
        device = select_device(config.device)
        detector, random_weights = _detector_for_demo(settings, device, build_detector)

        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        camera_id = f"demo-{run_id}"
        group = f"{config.group}-demo-{run_id}"
        # The demo's group starts where the topic ends now, and its results are
        # read from where the results topic ends now: earlier runs stay out.
        _start_group_at_end(settings, settings.topics.frames, group)
        results_start = _end_offsets(settings, settings.topics.results)

        worker = InferenceWorker(
            settings, group=group, detector=detector, stop=threading.Event()
        )
        consumer_thread = threading.Thread(target=worker.run, name="inference")
        consumer_thread.start()

        camera = CameraSettings(
            id=camera_id, source=str(video), speed=speed, max_frames=max_frames
        )
        summary = produce(settings, [camera], stop)
        produced = summary.cameras[0]
        if produced.error:
            worker.stop.set()
            consumer_thread.join()
            raise FramestreamError(f"replay failed: {produced.error}")

        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S
        while (
            worker.stats.frames_in < produced.sent
            and consumer_thread.is_alive()
            and time.monotonic() < deadline
            and not stop.is_set()
        ):
            time.sleep(0.2)
        worker.stop.set()
        consumer_thread.join()

        results = _read_results(settings, results_start, camera_id)
        results_path = out_dir / "results.jsonl"
        with open(results_path, "w") as out:
            out.writelines(json.dumps(result) + "\n" for result in results)
        warning = RANDOM_WEIGHTS_WARNING if random_weights else None
        video_path = _write_annotated(
            video, results, out_dir / "annotated.mp4", warning
        )

        stats = worker.stats
        lines = [
            f"video {video.name}: {produced.read} frames read, {produced.sent} sent to "
            f"{settings.topics.frames}",
            *stats.lines(),
            f"results: {len(results)} for {produced.sent} frames, in {results_path}",
        ]
        if video_path:
            lines.append(f"annotated video: {video_path}")
        if len(results) + stats.dead_letters < produced.sent:
            missing = produced.sent - len(results) - stats.dead_letters
            lines.append(
                f"MISSING: {missing} frame(s) have neither a result nor a dead letter"
            )
        if speed == "max":
            lines.append(
                "latency counts from publication: at --speed max frames wait in "
                "Kafka for the consumer; --speed 1 shows latency at the video's pace"
            )
        if random_weights:
            lines.append(RANDOM_WEIGHTS_WARNING + ".")
        return DemoReport(
            produced.sent,
            results,
            lines,
            results_path,
            video_path,
            random_weights,
            stats,
        )
    finally:
        if broker is not None and not keep_broker:
            broker.stop()


def _start_local_broker(settings: Settings):
    if not settings.uses_local_broker:
        return None
    from pipeline.broker import LocalBroker

    broker = LocalBroker(settings.broker, settings.topics.max_message_bytes)
    if broker.status().running:
        return None  # someone else's broker: leave it running
    log.info("starting the local broker")
    broker.start()
    return broker


def _detector_for_demo(settings: Settings, device, build_detector):
    """The configured detector; random weights, loudly, when COCO is unreachable."""
    config = settings.consumer
    try:
        return build_detector(config.detector, device, config.fp16), False
    except ConfigError as err:
        if config.detector.weights != "coco":
            raise
        log.warning("%s", err)
        log.warning("%s; the demo goes on to show the pipeline", RANDOM_WEIGHTS_WARNING)
        fallback = config.detector.model_copy(update={"weights": "random"})
        return build_detector(fallback, device, config.fp16), True


def _start_group_at_end(settings: Settings, topic: str, group: str) -> None:
    from kafka.structs import OffsetAndMetadata

    consumer = make_consumer(settings, group_id=group)
    try:
        partitions = [
            TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)
        ]
        ends = consumer.end_offsets(partitions)
        consumer.commit(
            {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in ends.items()}
        )
    finally:
        consumer.close()


def _end_offsets(settings: Settings, topic: str) -> dict:
    consumer = make_consumer(settings)
    try:
        partitions = [
            TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)
        ]
        return consumer.end_offsets(partitions)
    finally:
        consumer.close()


def _read_results(settings: Settings, start: dict, camera_id: str) -> list[dict]:
    consumer = make_consumer(settings, consumer_timeout_ms=2000)
    try:
        consumer.assign(list(start))
        for partition, offset in start.items():
            consumer.seek(partition, offset)
        ends = consumer.end_offsets(list(start))
        by_seq: dict[int, dict] = {}
        key = camera_id.encode()
        while any(consumer.position(tp) < ends[tp] for tp in start):
            for message in consumer:
                if message.key == key:
                    result = json.loads(message.value)
                    by_seq[result["seq"]] = result  # a repeat replaces its twin
    finally:
        consumer.close()
    return [by_seq[seq] for seq in sorted(by_seq)]


def _write_annotated(video: Path, results: list[dict], path: Path, warning: str | None):
    from consumers.annotate import annotate

    if not results:
        return None
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = (results[0]["width"], results[0]["height"])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        log.warning("cannot write %s: no MP4 encoder in this OpenCV", path)
        return None
    by_seq = {result["seq"]: result for result in results}
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            result = by_seq.get(index)
            if result is not None:
                writer.write(annotate(image, result, warning))
            index += 1
    finally:
        capture.release()
        writer.release()
    return path
