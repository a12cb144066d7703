"""Per-frame detection: the CNN, its typed results and its feature vectors."""

from consumers.detection.detections import Detections
from consumers.detection.detector import (
    MODELS,
    Detector,
    DetectorOutput,
    build_detector,
)

__all__ = ["MODELS", "Detections", "Detector", "DetectorOutput", "build_detector"]
