"""Results drawn onto their frames: boxes, labels and the novelty score."""

from __future__ import annotations

import cv2
import numpy as np

_BOX_COLOUR = (60, 220, 60)
_TEXT_COLOUR = (255, 255, 255)
_WARNING_COLOUR = (40, 40, 220)


def annotate(image: np.ndarray, result: dict, warning: str | None = None) -> np.ndarray:
    """A copy of ``image`` (BGR) with ``result`` drawn on it.

    The image is scaled to the result's width and height first, since boxes
    are in pixels of the frame as published.
    """
    height, width = result["height"], result["width"]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    canvas = image.copy()

    for detection in result["detections"]:
        x1, y1, x2, y2 = (int(round(value)) for value in detection["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _BOX_COLOUR, 2)
        _label(
            canvas,
            f"{detection['label']} {detection['score']:.2f}",
            (x1, max(y1 - 4, 12)),
        )

    sequence = result["sequence"]
    novelty = sequence["novelty"]
    text = "novelty: reset" if novelty is None else f"novelty {novelty:.3f}"
    _label(
        canvas, f"{result['camera_id']} #{result['seq']}  {text}", (8, 22), scale=0.6
    )
    if warning:
        _label(canvas, warning, (8, height - 10), scale=0.5, background=_WARNING_COLOUR)
    return canvas


def _label(canvas, text, origin, scale: float = 0.45, background=(0, 0, 0)) -> None:
    (width, height), baseline = cv2.getTextSize(
        text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1
    )
    x, y = origin
    cv2.rectangle(
        canvas, (x - 2, y - height - 3), (x + width + 2, y + baseline), background, -1
    )
    cv2.putText(
        canvas,
        text,
        (x, y),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        _TEXT_COLOUR,
        1,
        cv2.LINE_AA,
    )
