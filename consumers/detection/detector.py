"""The per-frame CNN: batched detection plus one feature vector per frame.

``DetectorSettings.model`` is either a name from :data:`MODELS` (a torchvision
detection model) or a path to a TorchScript file. ``DetectorSettings.weights``
picks the torchvision model's weights:

- ``coco``: torchvision's published COCO weights, downloaded once into
  torchvision's cache (``$TORCH_HOME/hub/checkpoints``). Without network access
  and without a cached copy this is a :class:`~pipeline.errors.ConfigError`;
  framestream never falls back to other weights on its own.
- a path to a state dict saved from the same torchvision model;
- ``random``: initialised from ``DetectorSettings.seed``, the same numbers for
  the same seed. Detections are meaningless; for tests and dry runs.

A TorchScript file carries its own weights (``weights`` is ignored) and must
have this contract::

    forward(images: List[Tensor]) -> List[Dict[str, Tensor]]

Each image is float32 CHW RGB in [0, 1] at the model's input size (the frame
scaled down to ``input_max_side``, if set). Each dict holds ``boxes`` (N, 4)
xyxy in pixels of that input, ``scores`` (N,), ``labels`` (N,) int64 class ids
and, optionally, ``features``: a 1-D vector of the same length for every
frame. A scripted torchvision detector, which returns ``(losses, detections)``,
is accepted as well. Label names come from a ``labels`` attribute (a list of
strings indexed by class id); without it, ids are named ``class_<id>`` and the
model's ``num_classes`` attribute, or else torchvision's 91 COCO ids, sets the
length of the per-frame summary.

Every frame yields :class:`~consumers.detection.detections.Detections` in
pixels of the original frame and a feature vector: for torchvision models the
backbone's output, each level average-pooled over space and concatenated,
captured during the detection forward pass itself; for TorchScript models
their ``features``, or else the input scaled to 8x8 RGB (192 values).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models import detection as tv_detection

from consumers.detection.detections import Detections
from pipeline.config import DetectorSettings
from pipeline.errors import ConfigError, FrameFormatError

logger = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")

# What torch.load raises for a file that is not a safe, complete torch.save.
LOAD_ERRORS = (OSError, EOFError, pickle.UnpicklingError, RuntimeError)

# Size of the fallback feature: the frame shrunk to this many pixels a side,
# three channels each. Enough to tell scenes and lighting apart, small next to
# the detection summary.
THUMBNAIL_SIDE = 8

# A TorchScript model without ``labels`` or ``num_classes`` is assumed to use
# torchvision's COCO ids (1-90, 0 the background), as models exported from
# torchvision do.
DEFAULT_NUM_CLASSES = 91

# The square input, in pixels, used once at build time to measure the feature
# length: every supported backbone still has all of its levels at this size.
PROBE_SIDE = 320


@dataclass(frozen=True)
class ModelSpec:
    """A torchvision detection model framestream knows how to build."""

    builder: Callable[..., nn.Module]
    weights: type[WeightsEnum]


MODELS: dict[str, ModelSpec] = {
    "ssdlite320_mobilenet_v3_large": ModelSpec(
        tv_detection.ssdlite320_mobilenet_v3_large,
        tv_detection.SSDLite320_MobileNet_V3_Large_Weights,
    ),
    "ssd300_vgg16": ModelSpec(
        tv_detection.ssd300_vgg16, tv_detection.SSD300_VGG16_Weights
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ModelSpec(
        tv_detection.fasterrcnn_mobilenet_v3_large_320_fpn,
        tv_detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": ModelSpec(
        tv_detection.fasterrcnn_mobilenet_v3_large_fpn,
        tv_detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    ),
    "fasterrcnn_resnet50_fpn_v2": ModelSpec(
        tv_detection.fasterrcnn_resnet50_fpn_v2,
        tv_detection.FasterRCNN_ResNet50_FPN_V2_Weights,
    ),
    "retinanet_resnet50_fpn_v2": ModelSpec(
        tv_detection.retinanet_resnet50_fpn_v2,
        tv_detection.RetinaNet_ResNet50_FPN_V2_Weights,
    ),
}


@dataclass(frozen=True)
class DetectorOutput:
    """What one batch of frames gave, in the order the frames came."""

    detections: list[Detections]
    # (B, feature_dim) float32 on the CPU.
    features: torch.Tensor

    def vectors(self, num_classes: int) -> torch.Tensor:
        """Per-frame sequence input: features ++ detection summary.

        (B, feature_dim + num_classes + 1) float32 on the CPU.
        """
        summaries = np.zeros((len(self.detections), num_classes + 1), np.float32)
        for row, detections in zip(summaries, self.detections):
            row[:] = detections.summary(num_classes)
        return torch.cat([self.features, torch.from_numpy(summaries)], dim=1)


@dataclass(frozen=True)
class _Input:
    """One frame as the model sees it, and how to map boxes back."""

    image: torch.Tensor  # float32 CHW RGB in [0, 1], on the device
    frame_width: int
    frame_height: int

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


class Detector:
    """Runs a detection model over batches of frames.

    Build one with :func:`build_detector`. Call it with BGR uint8 HxWx3 arrays
    (decoded JPEGs) or with uint8 CHW RGB tensors (decoded on the device).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        weights: str,
        label_names: Sequence[str],
        num_classes: int,
        device: torch.device,
        settings: DetectorSettings,
        fp16: bool = False,
        torchscript: bool = False,
    ) -> None:
        self.name = name
        self.weights = weights
        self.label_names = tuple(label_names)
        self.num_classes = num_classes
        self.device = device
        self.fp16 = fp16
        self.score_threshold = settings.score_threshold
        self.max_detections = settings.max_detections
        self.input_max_side = settings.input_max_side
        self._model = model
        self._torchscript = torchscript

        # The hook keeps the backbone's pooled output of the forward pass in
        # progress, so features cost no second backbone run.
        self._captured: list[torch.Tensor] = []
        if not torchscript:
            model.backbone.register_forward_hook(self._capture_backbone)
        self.feature_dim = self._measure_feature_dim()

    @property
    def vector_size(self) -> int:
        """Length of :meth:`DetectorOutput.vectors`, the sequence input."""
        return self.feature_dim + self.num_classes + 1

    @torch.inference_mode()
    def __call__(self, frames: Sequence[np.ndarray | torch.Tensor]) -> DetectorOutput:
        inputs = [self._prepare(frame, index) for index, frame in enumerate(frames)]

        # torchvision pads a batch to its largest image, which would change a
        # smaller frame's results; frames of one input size form one
        # sub-batch, so a frame's results never depend on its neighbours.
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(inputs):
            groups.setdefault(item.size, []).append(index)

        detections: list[Detections] = [Detections.empty()] * len(inputs)
        features = torch.zeros(len(inputs), self.feature_dim)
        for indices in groups.values():
            outputs, group_features = self._forward([inputs[i].image for i in indices])
            features[indices] = group_features.float().cpu()
            for index, output in zip(indices, outputs):
                item = inputs[index]
                height, width = item.size
                detections[index] = Detections.from_torchvision(
                    output,
                    self.label_names,
                    scale_x=item.frame_width / width,
                    scale_y=item.frame_height / height,
                    frame_width=item.frame_width,
                    frame_height=item.frame_height,
                    score_threshold=self.score_threshold,
                    max_detections=self.max_detections,
                )
        return DetectorOutput(detections=detections, features=features)

    def _prepare(self, frame: np.ndarray | torch.Tensor, index: int) -> _Input:
        if isinstance(frame, torch.Tensor):
            return self._prepare_tensor(frame, index)
        if not isinstance(frame, np.ndarray):
            raise FrameFormatError(
                f"frame {index}: expected a numpy array or torch tensor, "
                f"got {type(frame).__name__}"
            )
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise FrameFormatError(
                f"frame {index}: expected BGR uint8 of shape (H, W, 3), "
                f"got {frame.dtype.name} of shape {frame.shape}"
            )

        height, width = frame.shape[:2]
        size = self._input_size(height, width)
        if size != (height, width):
            frame = cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        image = torch.from_numpy(rgb).permute(2, 0, 1).to(self.device)
        return _Input(image.float().div_(255), width, height)

    def _prepare_tensor(self, frame: torch.Tensor, index: int) -> _Input:
        if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
            raise FrameFormatError(
                f"frame {index}: expected RGB uint8 tensor of shape (3, H, W), "
                f"got {frame.dtype} of shape {tuple(frame.shape)}"
            )

        height, width = int(frame.shape[1]), int(frame.shape[2])
        image = frame.to(self.device).float().div_(255)
        size = self._input_size(height, width)
        if size != (height, width):
            image = F.interpolate(
                image[None], size=size, mode="bilinear", antialias=True
            )[0].clamp_(0, 1)
        return _Input(image, width, height)

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        longest = max(height, width)
        if self.input_max_side is None or longest <= self.input_max_side:
            return height, width
        scale = self.input_max_side / longest
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _forward(
        self, images: list[torch.Tensor]
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        with self._autocast():
            if self._torchscript:
                return self._forward_torchscript(images)
            self._captured.clear()
            outputs = self._model(images)
            return outputs, self._captured.pop()

    def _forward_torchscript(
        self, images: list[torch.Tensor]
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        outputs = self._model(images)
        if isinstance(outputs, tuple):
            outputs = outputs[1]  # a scripted torchvision model: (losses, dets)
        if not isinstance(outputs, list) or len(outputs) != len(images):
            raise ConfigError(
                f"detector.model {self.name}: expected forward() to return a list "
                f"of {len(images)} dicts, got {_describe(outputs)}"
            )
        for output in outputs:
            missing = {"boxes", "scores", "labels"} - set(output)
            if missing:
                raise ConfigError(
                    f"detector.model {self.name}: expected each output dict to "
                    f"hold boxes, scores and labels, missing {sorted(missing)}"
                )

        if "features" not in outputs[0]:
            stacked = torch.stack(images)
            pooled = F.adaptive_avg_pool2d(stacked, THUMBNAIL_SIDE)
            return outputs, pooled.flatten(1)
        features = [output.get("features") for output in outputs]
        if any(f is None or f.numel() != self.feature_dim for f in features):
            raise ConfigError(
                f"detector.model {self.name}: expected 'features' of "
                f"{self.feature_dim} values in every output, got "
                f"{[None if f is None else f.numel() for f in features]}"
            )
        return outputs, torch.stack([f.reshape(-1) for f in features])

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.fp16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16)

    def _capture_backbone(self, module: nn.Module, args: Any, output: Any) -> None:
        levels = output.values() if isinstance(output, dict) else [output]
        pooled = [level.float().mean(dim=(2, 3)) for level in levels]
        self._captured.append(torch.cat(pooled, dim=1))

    @torch.inference_mode()
    def _measure_feature_dim(self) -> int:
        probe = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE, device=self.device)
        if not self._torchscript:
            # The backbone alone is enough to see its levels' channels.
            self._captured.clear()
            self._model.backbone(probe)
            return int(self._captured.pop().shape[1])

        # The length read here is what every later frame is checked against.
        with self._autocast():
            outputs = self._model([probe[0]])
        if isinstance(outputs, tuple):
            outputs = outputs[1]
        if not isinstance(outputs, list) or len(outputs) != 1:
            raise ConfigError(
                f"detector.model {self.name}: expected forward() to return a list "
                f"with one dict per image, got {_describe(outputs)}"
            )
        features = outputs[0].get("features")
        if features is None:
            return 3 * THUMBNAIL_SIDE * THUMBNAIL_SIDE
        return int(features.numel())


def build_detector(
    settings: DetectorSettings, device: torch.device, fp16: bool = False
) -> Detector:
    """The detector ``settings`` describe, in eval mode on ``device``.

    ``fp16`` runs the model under CUDA autocast in half precision; on any
    other device it is ignored with a warning.
    """
    if fp16 and device.type != "cuda":
        logger.warning("fp16 needs a CUDA device; running in fp32 on %s", device)
        fp16 = False

    if settings.model in MODELS:
        detector = _build_torchvision(settings, device, fp16)
    elif _looks_like_torchscript(settings.model):
        detector = _load_torchscript(settings, device, fp16)
    else:
        raise ConfigError(
            f"detector.model: expected one of {', '.join(MODELS)} or a path to "
            f"a TorchScript file ({', '.join(TORCHSCRIPT_SUFFIXES)}); "
            f"got {settings.model!r}"
        )

    logger.info(
        "detector %s (weights %s) on %s%s: %d classes, %d feature values",
        detector.name,
        detector.weights,
        device,
        " in fp16" if fp16 else "",
        detector.num_classes,
        detector.feature_dim,
    )
    return detector


def _looks_like_torchscript(model: str) -> bool:
    return model.endswith(TORCHSCRIPT_SUFFIXES) or Path(model).is_file()


def _build_torchvision(
    settings: DetectorSettings, device: torch.device, fp16: bool
) -> Detector:
    spec = MODELS[settings.model]
    # The weights' metadata ships with torchvision, so names need no download.
    label_names = spec.weights.DEFAULT.meta["categories"]

    if settings.weights == "coco":
        model = _build_coco(settings.model, spec)
        weights = "coco"
    elif settings.weights == "random":
        # A forked generator leaves the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model = spec.builder(weights=None, weights_backbone=None)
        weights = f"random(seed={settings.seed})"
    else:
        model = spec.builder(weights=None, weights_backbone=None)
        _load_state_dict(model, Path(settings.weights).expanduser())
        weights = settings.weights

    _limit_outputs(model, settings.score_threshold, settings.max_detections)
    model.eval().to(device)
    return Detector(
        model,
        name=settings.model,
        weights=weights,
        label_names=label_names,
        num_classes=len(label_names),
        device=device,
        settings=settings,
        fp16=fp16,
    )


def _build_coco(name: str, spec: ModelSpec) -> nn.Module:
    try:
        return spec.builder(weights=spec.weights.DEFAULT)
    except (OSError, HTTPException, RuntimeError) as err:
        raise ConfigError(
            f"detector.weights: COCO weights for {name} could not be had from "
            f"torchvision's cache or download ({type(err).__name__}: {err}). "
            "Copy them into $TORCH_HOME/hub/checkpoints, or set detector.weights "
            "to a local state dict file, or to 'random' for meaningless but "
            "repeatable detections"
        ) from err


def _load_state_dict(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            "detector.weights: expected 'coco', 'random' or a path to a state "
            f"dict file; no file at {path}"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict)
    except LOAD_ERRORS + (TypeError, AttributeError) as err:
        raise ConfigError(
            f"detector.weights: {path} is not a state dict of this detector: "
            f"{_first_line(err)}"
        ) from err


def _limit_outputs(model: nn.Module, score_threshold: float, max_boxes: int) -> None:
    # Filtering inside the model saves NMS work; Detections.from_torchvision
    # applies both limits again, so a model without these knobs is still right.
    heads = getattr(model, "roi_heads", model)
    if hasattr(heads, "score_thresh"):
        heads.score_thresh = score_threshold
    if hasattr(heads, "detections_per_img"):
        heads.detections_per_img = max_boxes


def _load_torchscript(
    settings: DetectorSettings, device: torch.device, fp16: bool
) -> Detector:
    path = Path(settings.model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"detector.model: expected a TorchScript file; no file at {path}"
        )
    try:
        model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"detector.model: {path} is not a loadable TorchScript file: {err}"
        ) from err
    if settings.weights != "coco":
        logger.warning(
            "detector.weights %r is ignored: TorchScript model %s has its own",
            settings.weights,
            path,
        )

    label_names = _script_label_names(model, path)
    model.eval()
    return Detector(
        model,
        name=str(path),
        weights=str(path),
        label_names=label_names,
        num_classes=len(label_names),
        device=device,
        settings=settings,
        fp16=fp16,
        torchscript=True,
    )


def _script_label_names(model: torch.jit.ScriptModule, path: Path) -> list[str]:
    labels = getattr(model, "labels", None)
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or not all(
            isinstance(name, str) for name in labels
        ):
            raise ConfigError(
                f"detector.model: expected {path}'s 'labels' attribute to be a "
                f"list of strings, got {_describe(labels)}"
            )
        return list(labels)
    num_classes = getattr(model, "num_classes", DEFAULT_NUM_CLASSES)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"detector.model: expected {path}'s 'num_classes' attribute to be a "
            f"positive int, got {num_classes!r}"
        )
    return [f"class_{i}" for i in range(num_classes)]


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"{type(value).__name__} of {len(value)} ({', '.join(kinds)})"
    return type(value).__name__


def _first_line(err: BaseException) -> str:
    # load_state_dict lists every missing and unexpected key, and torch.load
    # adds pages of advice: the first line tells a wrong model from a corrupt
    # file, and keeps the error readable in a log.
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
