"""Recorded clips replayed onto Kafka: every frame once, in order, decodable."""

from __future__ import annotations

import cv2
import numpy as np
from topic_reader import read_topic

from pipeline.config import CameraSettings
from pipeline.frames import decode_jpeg
from pipeline.messages import FRAME_SCHEMA, header_dict, is_end_of_stream
from producers.runner import produce

FRAME_HEADERS = {
    "schema",
    "camera_id",
    "seq",
    "capture_ts_ms",
    "width",
    "height",
    "encoding",
}


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def frames_in(path) -> list[np.ndarray]:
    """The clip's frames as OpenCV decodes them: what was replayed."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def test_a_replayed_clip_arrives_once_in_order_then_ends_with_end_of_stream(
    settings_factory, clip_factory
):
    settings = settings_factory(**{"producer.speed": "max"})
    clip = clip_factory(frames=60, width=320, height=240, fps=25)

    summary = produce(settings, [CameraSettings(id="cam-a", source=str(clip))])
    records = read_topic(settings, settings.topics.frames, expect=61)
    originals = frames_in(clip)

    (stats,) = summary.cameras
    assert (stats.read, stats.sent, stats.dropped, stats.failed) == (60, 60, 0, 0)
    assert stats.error is None and stats.end_of_stream_sent
    assert len(records) == 61 and len(originals) == 60
    # The camera id is the key: one camera stays in one partition, in order.
    assert {record.partition for record in records} == {records[0].partition}
    records.sort(key=lambda record: record.offset)
    frames, end = records[:-1], records[-1]

    assert [int(header_dict(r.headers)["seq"]) for r in frames] == list(range(60))
    stamps = []
    for seq, record in enumerate(frames):
        headers = header_dict(record.headers)
        assert set(headers) == FRAME_HEADERS
        assert headers["schema"] == FRAME_SCHEMA
        assert headers["camera_id"] == "cam-a"
        assert record.key == b"cam-a"
        assert headers["encoding"] == "jpeg"
        assert (headers["width"], headers["height"]) == ("320", "240")
        image = decode_jpeg(record.value)
        assert image.shape == (240, 320, 3)
        # The clip's own frame with this number, not a neighbour of it.
        differences = {
            n: mean_difference(image, originals[n])
            for n in (seq - 1, seq, seq + 1)
            if 0 <= n < len(originals)
        }
        assert min(differences, key=differences.get) == seq, (seq, differences)
        assert differences[seq] < 2.0, (seq, differences)
        stamps.append(int(headers["capture_ts_ms"]))
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))
    # 25 fps: the capture timestamps step by 40 ms.
    assert abs((stamps[-1] - stamps[0]) - 59 * 40) <= 2

    assert is_end_of_stream(end.headers) and end.value == b""
    assert header_dict(end.headers) == {
        "schema": FRAME_SCHEMA,
        "camera_id": "cam-a",
        "eos": "1",
        "seq": "60",
    }
