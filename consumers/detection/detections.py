"""The one container for what a detector found in one frame.

Shapes, for N detections:

===========  =========  ==================================================
boxes        (N, 4)     float32, xyxy in pixels of the original frame
scores       (N,)       float32, in [0, 1], highest first
class_ids    (N,)       int64, index into the detector's label names
labels       N names    the label name of each class id
===========  =========  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Published results carry boxes to 1/100 pixel and scores to 1e-4: finer
# digits are noise from the model and would only make every result longer.
BOX_DECIMALS = 2
SCORE_DECIMALS = 4


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one frame, highest score first."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.scores)
        expected = {
            "boxes": ((count, 4), np.float32),
            "scores": ((count,), np.float32),
            "class_ids": ((count,), np.int64),
        }
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"Detections.{name}: expected {np.dtype(dtype).name} of shape "
                    f"{shape}, got {array.dtype.name} of shape {array.shape}"
                )
        if len(self.labels) != count:
            raise ValueError(
                f"Detections.labels: expected {count} names, got {len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            class_ids=np.zeros(0, np.int64),
            labels=(),
        )

    @classmethod
    def from_torchvision(
        cls,
        output: Mapping[str, torch.Tensor],
        label_names: Sequence[str],
        scale_x: float,
        scale_y: float,
        frame_width: int,
        frame_height: int,
        score_threshold: float,
        max_detections: int,
    ) -> Detections:
        """Detections from one torchvision-style output dict.

        ``output`` holds ``boxes`` (xyxy in pixels of the model's input),
        ``scores`` and ``labels``. Boxes are multiplied by ``scale_x`` and
        ``scale_y`` (original size / input size), clipped to the frame, and
        dropped when nothing of them is left inside it. Scores below
        ``score_threshold`` are dropped, then the ``max_detections`` best kept.
        """
        boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
        class_ids = output["labels"].detach().cpu().numpy().astype(np.int64)
        class_ids = class_ids.reshape(-1)

        boxes = boxes * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, frame_width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, frame_height)
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep = np.flatnonzero(inside & (scores >= score_threshold))
        # A stable sort keeps the model's own order among equal scores.
        order = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]

        kept_ids = class_ids[order]
        return cls(
            boxes=np.ascontiguousarray(boxes[order], np.float32),
            scores=np.ascontiguousarray(scores[order], np.float32),
            class_ids=np.ascontiguousarray(kept_ids, np.int64),
            labels=tuple(label_name(label_names, int(i)) for i in kept_ids),
        )

    def to_json(self) -> list[dict[str, Any]]:
        """Plain Python values, ready for ``json.dumps``; ``[]`` when empty."""
        return [
            {
                "label": label,
                "class_id": int(class_id),
                "score": round(float(score), SCORE_DECIMALS),
                "box": [round(float(v), BOX_DECIMALS) for v in box],
            }
            for box, score, class_id, label in zip(
                self.boxes, self.scores, self.class_ids, self.labels
            )
        ]

    def summary(self, num_classes: int) -> np.ndarray:
        """Counts per class id ``0..num_classes-1``, then the mean score.

        Float32 of length ``num_classes + 1``. Class ids outside that range
        are not counted but do enter the mean score; the mean is 0 for a frame
        with no detections.
        """
        known = self.class_ids[(self.class_ids >= 0) & (self.class_ids < num_classes)]
        vector = np.zeros(num_classes + 1, np.float32)
        vector[:num_classes] = np.bincount(known, minlength=num_classes)
        if len(self):
            vector[num_classes] = self.scores.mean()
        return vector


def label_name(label_names: Sequence[str], class_id: int) -> str:
    """The name of ``class_id``, or ``class_<id>`` where none is known."""
    if 0 <= class_id < len(label_names):
        return label_names[class_id]
    return f"class_{class_id}"
