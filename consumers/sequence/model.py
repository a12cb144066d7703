"""The per-camera recurrent model: one cell step per frame.

Each frame's input vector is the detector's backbone features followed by its
detection summary (a count per class id, then the mean score). The vector is
normalised (zero mean, unit variance over its own values, no learnt scale) so
that features and counts of any magnitude land on one scale.

After each step the model predicts the *next* frame's normalised vector. A
frame's **novelty** is the mean squared distance between the prediction made at
the camera's previous step and this frame's normalised vector. It is 0 for a frame
exactly as predicted; a normalised vector's mean square is 1, so an untrained
model, whose predictions stay near zero, gives about 1 for every frame. The
first frame after a reset has no novelty. A checkpoint may add a classifier head
whose softmax over ``class_names`` is published with each frame.

A checkpoint is a ``torch.save`` of a dict::

    {"format": "framestream.rnn/1", "cell": "gru" | "lstm", "input_size": int,
     "hidden_size": int, "state_dict": {...}, "class_names": [str, ...]}

``class_names`` is optional; with it the state dict holds the classifier.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import SequenceSettings
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "framestream.rnn/1"
UNTRAINED = "untrained"

Cell = Literal["gru", "lstm"]


class SequenceModel(nn.Module):
    """A GRU or LSTM cell with a next-frame prediction head.

    State tensors are (k, hidden_size) for k cameras stepped together: ``h``
    for both cells, ``c`` as well for the LSTM.
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        hidden_size: int,
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ConfigError(f"sequence.cell: expected 'gru' or 'lstm', got {cell!r}")
        self.cell_type: Cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.class_names = tuple(class_names)
        # Set by build_sequence_model; published with every result.
        self.weights_name = UNTRAINED

        self.cell: nn.GRUCell | nn.LSTMCell
        if cell == "gru":
            self.cell = nn.GRUCell(input_size, hidden_size)
        else:
            self.cell = nn.LSTMCell(input_size, hidden_size)
        self.predictor = nn.Linear(hidden_size, input_size)
        self.classifier = (
            nn.Linear(hidden_size, len(self.class_names)) if self.class_names else None
        )

    @property
    def has_classifier(self) -> bool:
        return self.classifier is not None

    def normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        """(k, input_size) vectors, each standardised over its own values."""
        return F.layer_norm(vectors.float(), (self.input_size,))

    def zero_state(
        self, count: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = torch.zeros(count, self.hidden_size, device=device)
        c = torch.zeros_like(h) if self.cell_type == "lstm" else None
        return h, c

    def forward(
        self, inputs: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """One step for k cameras.

        ``inputs`` are already normalised, (k, input_size). Returns the new
        ``h`` and ``c`` (None for the GRU), the prediction of the next
        normalised input (k, input_size), and class logits (k, classes) or
        None without a classifier head.
        """
        if self.cell_type == "lstm":
            if c is None:
                raise ValueError("an LSTM step needs the cell state c, got None")
            h, c = self.cell(inputs, (h, c))
        else:
            h = self.cell(inputs, h)
        prediction = self.predictor(h)
        logits = self.classifier(h) if self.classifier is not None else None
        return h, c, prediction, logits


def build_sequence_model(
    settings: SequenceSettings, input_size: int, device: torch.device
) -> SequenceModel:
    """The model ``settings`` describe, in eval mode on ``device``.

    Without a checkpoint the weights come from ``settings.seed`` and the
    model's ``weights_name`` is ``"untrained"``; with one, it is the path.
    """
    if settings.checkpoint is None:
        # A forked generator leaves the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model = SequenceModel(settings.cell, input_size, settings.hidden_size)
    else:
        model = _load_checkpoint(settings, input_size)

    model.eval().to(device)
    logger.info(
        "sequence model %s (%s) on %s: %d inputs, %d hidden, %d classes",
        settings.cell,
        model.weights_name,
        device,
        input_size,
        settings.hidden_size,
        len(model.class_names),
    )
    return model


def _load_checkpoint(settings: SequenceSettings, input_size: int) -> SequenceModel:
    path = Path(settings.checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"sequence.checkpoint: expected a checkpoint file; no file at {path}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError) as err:
        raise ConfigError(
            f"sequence.checkpoint: {path} cannot be loaded: {_first_line(err)}"
        ) from err

    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
    ):
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        raise ConfigError(
            f"sequence.checkpoint: expected format {CHECKPOINT_FORMAT!r} in {path}, "
            f"found {found!r}"
        )
    expected = {
        "cell": settings.cell,
        "input_size": input_size,
        "hidden_size": settings.hidden_size,
    }
    for key, value in expected.items():
        if checkpoint.get(key) != value:
            raise ConfigError(
                f"sequence.checkpoint: {path} does not fit this pipeline: "
                f"expected {key} {value!r} (from the detector and sequence "
                f"settings), found {checkpoint.get(key)!r}"
            )

    class_names = checkpoint.get("class_names") or ()
    model = SequenceModel(settings.cell, input_size, settings.hidden_size, class_names)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise ConfigError(
            f"sequence.checkpoint: {path} holds no matching state dict: "
            f"{_first_line(err)}"
        ) from err
    model.weights_name = str(path)
    return model


def _first_line(err: BaseException) -> str:
    # torch.load and load_state_dict explain at length; the first line says
    # what went wrong and keeps the error readable in a log.
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def save_checkpoint(
    model: SequenceModel, path: str | Path, class_names: Sequence[str] | None = None
) -> None:
    """Write ``model`` where :func:`build_sequence_model` can load it.

    ``class_names`` renames the classifier's classes; there must be one name
    per classifier output.
    """
    names = tuple(model.class_names if class_names is None else class_names)
    outputs = model.classifier.out_features if model.classifier is not None else 0
    if len(names) != outputs:
        raise ValueError(
            f"expected {outputs} class names for the classifier head, got {len(names)}"
        )

    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "cell": model.cell_type,
        "input_size": model.input_size,
        "hidden_size": model.hidden_size,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if names:
        checkpoint["class_names"] = list(names)
    torch.save(checkpoint, Path(path))
