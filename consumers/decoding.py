"""Frame messages to pixels, and the reasons a frame cannot be used.

A frame is refused (and goes to the dead-letter topic) when its headers are
missing or malformed, its value is empty, it is not a complete JPEG (no
start-of-image or end-of-image marker: truncated files decode into half-grey
pictures otherwise), it fails to decode, or its size differs from its headers.

On the CPU frames decode with libjpeg-turbo (simplejpeg); on CUDA a batch
decodes in one call of torchvision's GPU decoder, with a per-frame CPU decode
to find the culprit when the batch call fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch

from pipeline.errors import MessageError
from pipeline.frames import decode_jpeg
from pipeline.messages import FrameHeaders, parse_frame_headers

log = logging.getLogger(__name__)

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class FrameRecord:
    """A frame whose headers and JPEG structure passed the checks."""

    record: object  # kafka ConsumerRecord
    headers: FrameHeaders


def check_frame(record) -> FrameRecord:
    """The record as a frame, or MessageError naming what is wrong with it."""
    headers = parse_frame_headers(record.headers)
    value = record.value or b""
    if not value:
        raise MessageError("empty value: expected JPEG bytes")
    if not value.startswith(_SOI):
        raise MessageError(
            f"value is not a JPEG: expected start marker FFD8, got {value[:2].hex()!r}"
        )
    if not value.rstrip(b"\x00").endswith(_EOI):
        raise MessageError(
            f"JPEG is truncated: no end marker FFD9 after {len(value)} bytes"
        )
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(value)
    except ValueError as err:
        raise MessageError(f"JPEG header unreadable: {err}") from None
    if (width, height) != (headers.width, headers.height):
        raise MessageError(
            f"JPEG is {width}x{height}, headers say {headers.width}x{headers.height}"
        )
    return FrameRecord(record, headers)


def decode_on_cpu(frame: FrameRecord) -> np.ndarray:
    """BGR (H, W, 3) uint8; MessageError if libjpeg-turbo refuses it."""
    try:
        return decode_jpeg(frame.record.value)
    except ValueError as err:
        raise MessageError(f"JPEG does not decode: {err}") from None


def decode_on_cuda(
    frames: Sequence[FrameRecord], device: torch.device
) -> list[torch.Tensor | MessageError]:
    """uint8 CHW RGB tensors on ``device``, or the error for frames that fail."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as decode_jpeg_tensor

    datas = [
        torch.frombuffer(bytearray(frame.record.value), dtype=torch.uint8)
        for frame in frames
    ]
    try:
        return list(decode_jpeg_tensor(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as err:
        log.debug("batch GPU decode failed (%s); decoding one by one", err)

    results: list[torch.Tensor | MessageError] = []
    for frame, data in zip(frames, datas):
        try:
            decode_on_cpu(frame)
            image = decode_jpeg_tensor(data, mode=ImageReadMode.RGB, device=device)
            results.append(image)
        except MessageError as err:
            results.append(err)
        except RuntimeError as err:
            results.append(MessageError(f"JPEG does not decode on the GPU: {err}"))
    return results
