"""The framestream message formats on Kafka.

A frame is one message: value = JPEG bytes, key = camera id, and headers

=============  ========================================================
schema         ``framestream.frame/1``
camera_id      the camera's id (also the key, so a camera stays in order)
seq            0, 1, 2, ... per camera run
capture_ts_ms  the source's own timestamp, or wall clock for live sources
width, height  pixels of the encoded image
encoding       ``jpeg``
=============  ========================================================

An end-of-stream message has an empty value, the same key, and headers
``schema``, ``camera_id``, ``eos`` = ``1`` and ``seq`` = the number of frames the
run sent. Header values are UTF-8 text.

A result is one JSON message per frame (schema ``framestream.result/1``),
described by ``pipeline/schemas/result.schema.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.errors import MessageError

FRAME_SCHEMA = "framestream.frame/1"
RESULT_SCHEMA = "framestream.result/1"
JPEG = "jpeg"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class FrameHeaders:
    camera_id: str
    seq: int
    capture_ts_ms: int
    width: int
    height: int
    encoding: str = JPEG

    def to_kafka(self) -> Headers:
        return [
            ("schema", FRAME_SCHEMA.encode()),
            ("camera_id", self.camera_id.encode()),
            ("seq", str(self.seq).encode()),
            ("capture_ts_ms", str(self.capture_ts_ms).encode()),
            ("width", str(self.width).encode()),
            ("height", str(self.height).encode()),
            ("encoding", self.encoding.encode()),
        ]


def end_of_stream_headers(camera_id: str, frames_sent: int) -> Headers:
    return [
        ("schema", FRAME_SCHEMA.encode()),
        ("camera_id", camera_id.encode()),
        ("eos", b"1"),
        ("seq", str(frames_sent).encode()),
    ]


def header_dict(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as text; undecodable values are kept escaped, not lost."""
    return {
        name: (value or b"").decode("utf-8", errors="backslashreplace")
        for name, value in headers or ()
    }


def is_end_of_stream(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    return any(name == "eos" for name, _ in headers or ())


def parse_frame_headers(headers: Sequence[tuple[str, bytes]] | None) -> FrameHeaders:
    """Validated frame headers, or :class:`MessageError` saying what is wrong."""
    fields = header_dict(headers)
    if not fields:
        raise MessageError("frame has no headers; expected schema, camera_id, seq, ...")
    if fields.get("schema") != FRAME_SCHEMA:
        raise MessageError(
            f"header schema: expected {FRAME_SCHEMA!r}, got {fields.get('schema')!r}"
        )
    missing = [
        name
        for name in ("camera_id", "seq", "capture_ts_ms", "width", "height", "encoding")
        if name not in fields
    ]
    if missing:
        raise MessageError(f"frame headers missing: {', '.join(missing)}")
    if not fields["camera_id"]:
        raise MessageError("header camera_id: expected a camera id, got ''")
    if fields["encoding"] != JPEG:
        raise MessageError(
            f"header encoding: expected {JPEG!r}, got {fields['encoding']!r}"
        )

    numbers = {}
    for name, lowest in (("seq", 0), ("capture_ts_ms", 0), ("width", 1), ("height", 1)):
        try:
            numbers[name] = int(fields[name])
        except ValueError:
            raise MessageError(
                f"header {name}: expected an integer, got {fields[name]!r}"
            ) from None
        if numbers[name] < lowest:
            raise MessageError(
                f"header {name}: expected an integer >= {lowest}, got {numbers[name]}"
            )
    return FrameHeaders(camera_id=fields["camera_id"], encoding=JPEG, **numbers)


def dead_letter_headers(
    record, reason: str, group: str, stage: str = "consume"
) -> Headers:
    """The record's own headers plus why and where from it was refused.

    ``dead_letter_reason`` says what was wrong in words; ``dead_letter_topic``,
    ``..._partition`` and ``..._offset`` say where the message came from.
    """
    original = [
        (name, value or b"")
        for name, value in record.headers or ()
        if not name.startswith("dead_letter_")
    ]
    return original + [
        ("dead_letter_reason", reason.encode()),
        ("dead_letter_stage", stage.encode()),
        ("dead_letter_group", group.encode()),
        ("dead_letter_topic", record.topic.encode()),
        ("dead_letter_partition", str(record.partition).encode()),
        ("dead_letter_offset", str(record.offset).encode()),
    ]
