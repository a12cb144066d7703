"""Helpers shared by the inference tests: writing frames, reading topics back,
running a worker to the end and the offline reference run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import torch
from kafka import TopicPartition

from consumers.detection import Detector
from consumers.results import result_schema
from consumers.sequence import CameraStates, SequenceInput, build_sequence_model
from consumers.worker import ConsumeStats, InferenceWorker
from pipeline.config import Settings
from pipeline.frames import decode_jpeg, encode_jpeg
from pipeline.kafka import ensure_topics, make_consumer, make_producer
from pipeline.messages import FrameHeaders, header_dict, is_end_of_stream

CPU = torch.device("cpu")

# COCO weights need a download; random weights are repeatable and offline.
# Small batches keep every batch of a short clip quick on two CPU cores.
RANDOM_DETECTOR = {
    "consumer.detector.weights": "random",
    "consumer.batch_size": 4,
}

# Tests stop workers by frame count; this is the safety net for a worker that
# never gets its frames. Its clock starts before the group is joined, so it
# leaves a slow join on a busy machine plenty of time.
IDLE_TIMEOUT_S = 20.0

# Published results round boxes to 1/100 px and scores to 1e-4 (see
# consumers.detection.detections); the offline run is compared unrounded, so
# the tolerance is half a published digit plus what floating point may add.
BOX_TOLERANCE_PX = 0.005 + 1e-3
SCORE_TOLERANCE = 0.00005 + 1e-5
NOVELTY_TOLERANCE = 1e-5


def run_worker(settings: Settings, **kwargs) -> ConsumeStats:
    """Runs one InferenceWorker to its ``max_frames``, or until no frame came
    for IDLE_TIMEOUT_S."""
    kwargs.setdefault("idle_timeout_s", IDLE_TIMEOUT_S)
    return InferenceWorker(settings, **kwargs).run()


def start_worker(worker: InferenceWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, name=f"worker-{id(worker)}")
    thread.start()
    return thread


def read_to_end(settings: Settings, topic: str) -> list:
    """Every record of ``topic`` up to its end offsets now, in partition order."""
    consumer = make_consumer(settings, consumer_timeout_ms=500)
    try:
        partitions = [
            TopicPartition(topic, p)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            records.extend(consumer)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def read_results(settings: Settings) -> list[dict]:
    """Every result on the results topic, each checked against the schema."""
    results = []
    for record in read_to_end(settings, settings.topics.results):
        result = json.loads(record.value)
        jsonschema.validate(result, result_schema())
        results.append(result)
    return results


def read_frames(settings: Settings) -> list:
    """The frame records (end-of-stream markers left out) of the frames topic."""
    records = read_to_end(settings, settings.topics.frames)
    return [record for record in records if not is_end_of_stream(record.headers)]


def frame_seq(record) -> tuple[str, int]:
    headers = header_dict(record.headers)
    return headers["camera_id"], int(headers["seq"])


def unique_frames(results: Iterable[dict]) -> set[tuple[str, int]]:
    return {(result["camera_id"], result["seq"]) for result in results}


def frame_headers(camera_id: str, seq: int, image: np.ndarray) -> list:
    height, width = image.shape[:2]
    return FrameHeaders(
        camera_id=camera_id,
        seq=seq,
        capture_ts_ms=1_700_000_000_000 + 40 * seq,
        width=width,
        height=height,
    ).to_kafka()


class FrameWriter:
    """Writes frame messages straight onto the frames topic."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.frames
        ensure_topics(settings)
        self._producer = make_producer(settings)

    def send(
        self,
        camera_id: str,
        value: bytes,
        headers: list | None,
        partition: int | None = None,
    ):
        """The (partition, offset) the broker gave the message; ``partition``
        None leaves the choice to the key, as cameras do."""
        future = self._producer.send(
            self.topic,
            key=camera_id,
            value=value,
            headers=headers or [],
            partition=partition,
        )
        metadata = future.get(timeout=30)
        return metadata.partition, metadata.offset

    def send_image(
        self, camera_id: str, seq: int, image: np.ndarray, partition: int | None = None
    ):
        jpeg = encode_jpeg(image, 90)
        headers = frame_headers(camera_id, seq, image)
        return self.send(camera_id, jpeg, headers, partition)

    def close(self) -> None:
        self._producer.close(timeout=5)


def labelled_image(label: str, width: int = 320, height: int = 240) -> np.ndarray:
    """A frame showing ``label`` in large digits, on a background whose tint
    also follows the label: frames with different labels look different to
    a model, down to an 8x8 thumbnail."""
    tint = sum(label.encode()) % 97
    image = np.full((height, width, 3), (30 + tint, 80, 150 - tint), np.uint8)
    cv2.putText(
        image,
        label,
        (width // 8, height * 2 // 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        height / 80,
        (255, 255, 255),
        3,
    )
    return image


def write_clip(path: Path, images: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height)
    )
    assert writer.isOpened(), "OpenCV cannot write MJPG AVI files here"
    for image in images:
        writer.write(image)
    writer.release()
    return path


def offline_run(detector: Detector, settings: Settings, frame_records: Sequence):
    """The detector and a fresh CameraStates over one camera run's frames, in
    order, one frame at a time: what the worker must have published."""
    config = settings.consumer
    model = build_sequence_model(config.sequence, detector.vector_size, CPU)
    states = CameraStates(model, config.sequence.reset_gap_ms)
    outputs = []
    for record in frame_records:
        camera_id, seq = frame_seq(record)
        capture_ts_ms = int(header_dict(record.headers)["capture_ts_ms"])
        output = detector([decode_jpeg(record.value)])
        vector = output.vectors(detector.num_classes)[0]
        (sequence,) = states.step(
            [SequenceInput(camera_id, seq, capture_ts_ms, vector)]
        )
        outputs.append((output.detections[0], sequence))
    return outputs


def assert_sequence_matches(published: dict, expected) -> None:
    """A result's "sequence" object against an offline SequenceOutput."""
    assert published["state_reset"] == expected.state_reset
    assert published["classes"] == expected.classes
    if expected.novelty is None:
        assert published["novelty"] is None
    else:
        assert abs(published["novelty"] - expected.novelty) <= NOVELTY_TOLERANCE


def assert_detections_match(published: list[dict], expected) -> None:
    """A result's "detections" against offline Detections, within the
    published rounding (BOX_TOLERANCE_PX, SCORE_TOLERANCE).

    Published detections must be highest score first; among equal scores
    (random weights score every box about 1/91) their order is the model's
    and may differ between batch sizes, so both sides are compared sorted.
    """
    scores = [d["score"] for d in published]
    assert scores == sorted(scores, reverse=True)

    def key(class_id, box):
        return (class_id, *(round(float(v), 2) for v in box))

    mine = sorted(published, key=lambda d: key(d["class_id"], d["box"]))
    order = sorted(
        range(len(expected)),
        key=lambda i: key(int(expected.class_ids[i]), expected.boxes[i]),
    )
    assert [d["label"] for d in mine] == [expected.labels[i] for i in order]
    assert [d["class_id"] for d in mine] == expected.class_ids[order].tolist()
    boxes = np.array([d["box"] for d in mine], np.float64).reshape(-1, 4)
    np.testing.assert_allclose(
        boxes, expected.boxes[order], rtol=0, atol=BOX_TOLERANCE_PX
    )
    np.testing.assert_allclose(
        [d["score"] for d in mine],
        expected.scores[order],
        rtol=0,
        atol=SCORE_TOLERANCE,
    )
