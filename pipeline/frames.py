"""Frames as the pipeline carries them: 3-channel 8-bit BGR, JPEG-encoded.

Encoding uses libjpeg-turbo through simplejpeg. A frame too large for the
topic is re-encoded at lower quality, then scaled down, until it fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from pipeline.config import DepthScaling
from pipeline.errors import FrameFormatError

# Qualities tried, in order, when a frame does not fit at the configured one.
_FALLBACK_QUALITIES = (85, 75, 60, 45)
# Each scale-down step keeps this share of each side; 0.75 roughly halves
# the bytes per step without jumping past a size that would have fitted.
_SCALE_STEP = 0.75
# Below this longest side a frame is not worth sending: it is dropped instead.
_MIN_SIDE = 64


@dataclass(frozen=True)
class EncodedFrame:
    jpeg: bytes
    width: int
    height: int
    quality: int


def to_bgr8(image: np.ndarray, depth_scaling: DepthScaling = "error") -> np.ndarray:
    """The frame as (H, W, 3) uint8; gray and 4-channel frames are converted.

    16-bit and float frames need ``depth_scaling`` "shift" or "minmax"
    (``producer.depth_scaling`` in config); with "error" they are refused.
    """
    if not isinstance(image, np.ndarray):
        raise FrameFormatError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        channels = 1
    elif image.ndim == 3 and image.shape[2] in (1, 3, 4):
        channels = image.shape[2]
    else:
        raise FrameFormatError(
            f"expected a frame shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FrameFormatError(f"expected a non-empty frame, got shape {image.shape}")

    image = _to_uint8(image, depth_scaling)
    if channels == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray, depth_scaling: DepthScaling) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if depth_scaling == "error":
        raise FrameFormatError(
            f"expected an 8-bit frame (uint8), got {image.dtype}; set "
            "producer.depth_scaling to 'shift' or 'minmax' to convert such frames"
        )
    if depth_scaling == "minmax":
        low, high = float(image.min()), float(image.max())
        span = high - low or 1.0
        scaled = (image.astype(np.float32) - low) * (255.0 / span)
        return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    # "shift": integers keep their top 8 bits, floats are taken as [0, 1].
    if np.issubdtype(image.dtype, np.integer):
        bits = np.iinfo(image.dtype).bits
        if np.issubdtype(image.dtype, np.signedinteger):
            image = np.clip(image, 0, None)
            bits -= 1
        return (image.astype(np.uint64) >> (bits - 8)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise FrameFormatError(f"expected integer or float pixels, got {image.dtype}")


def limit_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The frame scaled down so its longest side is at most ``max_side``."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR")


def decode_jpeg(data: bytes) -> np.ndarray:
    """BGR (H, W, 3) uint8 pixels of a JPEG; ValueError if it is not one."""
    return simplejpeg.decode_jpeg(data, colorspace="BGR")


def encode_to_fit(
    image: np.ndarray, quality: int, max_bytes: int
) -> EncodedFrame | None:
    """The frame as a JPEG of at most ``max_bytes``, or None if none fits.

    Lower quality is tried first, since it keeps the frame's geometry; then the
    frame is scaled down step by step.
    """
    qualities = [quality, *(q for q in _FALLBACK_QUALITIES if q < quality)]
    for candidate in qualities:
        jpeg = encode_jpeg(image, candidate)
        if len(jpeg) <= max_bytes:
            return EncodedFrame(jpeg, image.shape[1], image.shape[0], candidate)

    lowest = qualities[-1]
    while max(image.shape[:2]) * _SCALE_STEP >= _MIN_SIDE:
        image = limit_side(image, int(max(image.shape[:2]) * _SCALE_STEP))
        jpeg = encode_jpeg(image, lowest)
        if len(jpeg) <= max_bytes:
            return EncodedFrame(jpeg, image.shape[1], image.shape[0], lowest)
    return None
