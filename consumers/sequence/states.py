"""Per-camera recurrent state, stepped for a whole batch at once.

A batch may hold frames of many cameras and several frames of one camera. It
is run in rounds: round r takes the r-th frame of every camera that has one
and steps all of them as one batched cell step. Each camera's frames thus run
in order, and a camera's results do not depend on which other cameras shared
its batches.

A camera starts from a fresh state (zeros, no prediction, so no novelty) when

- it is new, or its stream ended (:meth:`CameraStates.end_of_stream`);
- its sequence number is not above the last one seen (the camera restarted or
  its frames were replayed);
- its capture timestamp is more than ``reset_gap_ms`` after the last one (the
  camera was silent too long for the old state to describe the scene).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from consumers.sequence.model import SequenceModel
from pipeline.errors import ConfigError


class SequenceInput(NamedTuple):
    camera_id: str
    seq: int
    capture_ts_ms: int
    # (input_size,) float: backbone features ++ detection summary.
    vector: torch.Tensor


class SequenceOutput(NamedTuple):
    # None on a camera's first frame after a reset: nothing was predicted.
    novelty: float | None
    # Softmax over the model's class names; None without a classifier head.
    classes: dict[str, float] | None
    state_reset: bool


@dataclass
class _CameraState:
    h: torch.Tensor  # (hidden_size,)
    c: torch.Tensor | None  # (hidden_size,), LSTM only
    prediction: torch.Tensor | None  # (input_size,), None right after a reset
    last_seq: int
    last_capture_ts_ms: int


class CameraStates:
    """The sequence model's state for every camera seen, on the model's device."""

    def __init__(self, model: SequenceModel, reset_gap_ms: int) -> None:
        self.model = model
        # Raising it keeps context across longer silences (and across scene
        # changes during them); lowering it restarts cameras more often.
        self.reset_gap_ms = reset_gap_ms
        self._states: dict[str, _CameraState] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def cameras(self) -> list[str]:
        return list(self._states)

    def end_of_stream(self, camera_id: str) -> None:
        """Forget the camera; its next frame starts from a fresh state."""
        self._states.pop(camera_id, None)

    @torch.inference_mode()
    def step(self, items: Sequence[SequenceInput]) -> list[SequenceOutput]:
        """One output per item, in the order of ``items``."""
        rounds: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            self._check_vector(item, index)
            rounds.setdefault(item.camera_id, []).append(index)

        outputs: list[SequenceOutput | None] = [None] * len(items)
        for r in range(max(map(len, rounds.values()), default=0)):
            indices = [frames[r] for frames in rounds.values() if len(frames) > r]
            for index, output in zip(indices, self._step_round(items, indices)):
                outputs[index] = output
        return outputs  # type: ignore[return-value]  # every slot is filled

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every camera's state as plain CPU tensors.

        Per camera: ``h``, ``c`` (LSTM only), ``prediction`` (absent before a
        camera's first step after a reset), ``seq`` and ``capture_ts_ms``
        (int64 scalars).
        """
        snapshot = {}
        for camera_id, state in self._states.items():
            tensors = {
                "h": state.h.cpu().clone(),
                "seq": torch.tensor(state.last_seq, dtype=torch.int64),
                "capture_ts_ms": torch.tensor(
                    state.last_capture_ts_ms, dtype=torch.int64
                ),
            }
            if state.c is not None:
                tensors["c"] = state.c.cpu().clone()
            if state.prediction is not None:
                tensors["prediction"] = state.prediction.cpu().clone()
            snapshot[camera_id] = tensors
        return snapshot

    def restore(self, snapshot: dict[str, dict[str, torch.Tensor]]) -> None:
        """Add or replace the states of the cameras in ``snapshot``."""
        model = self.model
        device = self.device
        restored = {}
        for camera_id, tensors in snapshot.items():
            shapes = {
                "h": (model.hidden_size,),
                "seq": (),
                "capture_ts_ms": (),
            }
            if model.cell_type == "lstm":
                shapes["c"] = (model.hidden_size,)
            if "prediction" in tensors:
                shapes["prediction"] = (model.input_size,)
            found = {key: tuple(tensors[key].shape) for key in tensors}
            if found != shapes:
                raise ConfigError(
                    f"state of camera {camera_id} does not fit the {model.cell_type} "
                    f"sequence model: expected tensors {shapes}, found {found}"
                )

            restored[camera_id] = _CameraState(
                h=tensors["h"].to(device, torch.float32).clone(),
                c=_optional_on(tensors.get("c"), device),
                prediction=_optional_on(tensors.get("prediction"), device),
                last_seq=int(tensors["seq"]),
                last_capture_ts_ms=int(tensors["capture_ts_ms"]),
            )
        self._states.update(restored)

    def _step_round(
        self, items: Sequence[SequenceInput], indices: list[int]
    ) -> list[SequenceOutput]:
        model = self.model
        device = self.device

        # Gather: each camera's state, fresh where a reset is due.
        h_rows, c_rows, previous, resets = [], [], [], []
        for index in indices:
            item = items[index]
            state = self._states.get(item.camera_id)
            reset = state is None or self._needs_reset(state, item)
            if reset:
                h, c = model.zero_state(1, device)
                h_rows.append(h[0])
                c_rows.append(None if c is None else c[0])
                previous.append(None)
            else:
                h_rows.append(state.h)
                c_rows.append(state.c)
                previous.append(state.prediction)
            resets.append(reset)

        # One batched step for every camera of this round.
        vectors = torch.stack([items[i].vector for i in indices]).to(device)
        inputs = model.normalise(vectors)
        h = torch.stack(h_rows)
        c = torch.stack(c_rows) if model.cell_type == "lstm" else None
        h, c, predictions, logits = model(inputs, h, c)
        probabilities = logits.softmax(dim=1).cpu() if logits is not None else None

        # Scatter: store new states and build the outputs.
        outputs = []
        for row, index in enumerate(indices):
            item = items[index]
            self._states[item.camera_id] = _CameraState(
                h=h[row].clone(),
                c=None if c is None else c[row].clone(),
                prediction=predictions[row].clone(),
                last_seq=item.seq,
                last_capture_ts_ms=item.capture_ts_ms,
            )
            novelty = None
            if previous[row] is not None:
                novelty = float(((previous[row] - inputs[row]) ** 2).mean())
            classes = None
            if probabilities is not None:
                classes = dict(
                    zip(model.class_names, probabilities[row].tolist(), strict=True)
                )
            outputs.append(SequenceOutput(novelty, classes, resets[row]))
        return outputs

    def _needs_reset(self, state: _CameraState, item: SequenceInput) -> bool:
        if item.seq <= state.last_seq:
            return True
        return item.capture_ts_ms - state.last_capture_ts_ms > self.reset_gap_ms

    def _check_vector(self, item: SequenceInput, index: int) -> None:
        shape = tuple(item.vector.shape)
        if shape != (self.model.input_size,):
            raise ValueError(
                f"sequence input {index} (camera {item.camera_id}): expected a "
                f"vector of shape ({self.model.input_size},), got {shape}"
            )


def _optional_on(
    tensor: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, torch.float32).clone()
