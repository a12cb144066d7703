"""Result messages (``framestream.result/1``) and their JSON Schema."""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

from consumers.decoding import FrameRecord
from consumers.detection import Detections
from consumers.sequence import SequenceOutput
from pipeline.messages import RESULT_SCHEMA


@cache
def result_schema() -> dict:
    """The JSON Schema every result validates against."""
    text = (
        resources.files("pipeline.schemas").joinpath("result.schema.json").read_text()
    )
    return json.loads(text)


def build_result(
    frame: FrameRecord,
    detections: Detections,
    sequence: SequenceOutput,
    model: dict[str, str],
    processed_ts_ms: int,
) -> dict:
    record = frame.record
    headers = frame.headers
    novelty = sequence.novelty
    if novelty is not None and not math.isfinite(novelty):
        novelty = None  # JSON has no NaN; an undefined score is reported as none
    return {
        "schema": RESULT_SCHEMA,
        "camera_id": headers.camera_id,
        "seq": headers.seq,
        "capture_ts_ms": headers.capture_ts_ms,
        "processed_ts_ms": processed_ts_ms,
        # From the frame's publication (its Kafka timestamp) to its result: the
        # pipeline's own delay, whatever the pace of a replayed file.
        "latency_ms": processed_ts_ms - record.timestamp,
        "width": headers.width,
        "height": headers.height,
        "detections": detections.to_json(),
        "sequence": {
            "novelty": novelty,
            "classes": sequence.classes,
            "state_reset": sequence.state_reset,
        },
        "model": model,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        },
    }


def encode_result(result: dict) -> bytes:
    return json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
