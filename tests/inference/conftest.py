"""Fixtures of the inference tests: settings for a random-weight detector and
TorchScript test detectors whose output is known."""

from pathlib import Path

import pytest
import torch

pytest.register_assert_rewrite("inference_support")


class FixedBox(torch.nn.Module):
    """One box over the middle half of whatever input it is given; its score
    is the input's width / 1000, so a result shows what size the model saw."""

    labels: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.labels = ["__background__", "thing"]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results: list[dict[str, torch.Tensor]] = []
        for image in images:
            height, width = image.shape[-2], image.shape[-1]
            box = [0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height]
            results.append(
                {
                    "boxes": torch.tensor([box], device=image.device),
                    "scores": torch.tensor([width / 1000.0], device=image.device),
                    "labels": torch.tensor([1], device=image.device),
                }
            )
        return results


class NothingFound(torch.nn.Module):
    """Finds nothing; the detector's features are then the frame shrunk to
    8x8 RGB, cheap and different for every numbered frame."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results: list[dict[str, torch.Tensor]] = []
        for image in images:
            results.append(
                {
                    "boxes": torch.zeros(0, 4, device=image.device),
                    "scores": torch.zeros(0, device=image.device),
                    "labels": torch.zeros(0, dtype=torch.int64, device=image.device),
                }
            )
        return results


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def fixed_box_model(tmp_path) -> Path:
    """A TorchScript file of :class:`FixedBox`."""
    return _script(FixedBox(), tmp_path / "fixed-box.pt")


@pytest.fixture
def nothing_found_model(tmp_path) -> Path:
    """A TorchScript file of :class:`NothingFound`."""
    return _script(NothingFound(), tmp_path / "nothing-found.pt")
