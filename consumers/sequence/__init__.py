"""Per-camera sequence models stepped once per frame."""

from consumers.sequence.model import (
    CHECKPOINT_FORMAT,
    SequenceModel,
    build_sequence_model,
    save_checkpoint,
)
from consumers.sequence.states import CameraStates, SequenceInput, SequenceOutput

__all__ = [
    "CHECKPOINT_FORMAT",
    "CameraStates",
    "SequenceInput",
    "SequenceModel",
    "SequenceOutput",
    "build_sequence_model",
    "save_checkpoint",
]
