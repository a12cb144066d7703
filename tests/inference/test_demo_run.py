"""``framestream demo`` end to end against the session's broker."""

import json
import logging
import urllib.error

import cv2
import jsonschema
import pytest
import torchvision.models._api

from consumers.results import result_schema
from pipeline.demo import RANDOM_WEIGHTS_WARNING, run_demo
from pipeline.samples import sample_video

SAMPLE_FRAMES = 795


@pytest.fixture
def offline_torchvision(monkeypatch, tmp_path):
    """COCO weights unreachable, whatever this machine's cache and network:
    the demo must fall back to random weights and say so."""

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in this test ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(
        torchvision.models._api, "load_state_dict_from_url", unreachable
    )


def read_back(path) -> tuple[int, tuple[int, int]]:
    """Frames OpenCV decodes from a video, and their (width, height)."""
    capture = cv2.VideoCapture(str(path))
    frames, size = 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames += 1
        size = (image.shape[1], image.shape[0])
    capture.release()
    return frames, size


def test_the_demo_writes_one_result_per_frame_and_an_annotated_video(
    settings_factory, clip_factory, tmp_path, offline_torchvision, caplog
):
    settings = settings_factory(
        **{"consumer.detector.weights": "coco", "consumer.batch_size": 4}
    )
    clip = clip_factory(frames=20, width=320, height=240)

    with caplog.at_level(logging.WARNING, logger="pipeline.demo"):
        report = run_demo(settings, clip, tmp_path / "out", speed="max")
    lines = report.results_path.read_text().splitlines()
    results = [json.loads(line) for line in lines]

    assert report.random_weights
    assert RANDOM_WEIGHTS_WARNING + "." in report.lines
    assert any(RANDOM_WEIGHTS_WARNING in record.message for record in caplog.records)
    assert report.frames_sent == 20
    assert [result["seq"] for result in results] == list(range(20))
    for result in results:
        jsonschema.validate(result, result_schema())
        assert result["model"]["weights"] == "random(seed=0)"
    assert report.video_path == tmp_path / "out" / "annotated.mp4"
    assert read_back(report.video_path) == (20, (320, 240))


@pytest.mark.slow
def test_the_demo_runs_the_whole_sample_video(
    settings_factory, tmp_path, offline_torchvision
):
    settings = settings_factory(**{"consumer.detector.weights": "coco"})

    report = run_demo(settings, sample_video(), tmp_path / "out", speed="max")
    lines = report.results_path.read_text().splitlines()

    assert report.random_weights
    assert report.frames_sent == SAMPLE_FRAMES
    assert len(lines) == SAMPLE_FRAMES
    assert [json.loads(line)["seq"] for line in lines] == list(range(SAMPLE_FRAMES))
    assert read_back(report.video_path)[0] == SAMPLE_FRAMES
