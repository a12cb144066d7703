import json

import numpy as np
import pytest
import torch

from consumers.detection import Detections

LABELS = ("__background__", "person", "car")


def torchvision_output(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def from_output(output, **overrides):
    options = {
        "label_names": LABELS,
        "scale_x": 1.0,
        "scale_y": 1.0,
        "frame_width": 640,
        "frame_height": 480,
        "score_threshold": 0.0,
        "max_detections": 100,
    }
    options.update(overrides)
    return Detections.from_torchvision(output, **options)


def test_from_torchvision_scales_boxes_to_original_pixels_and_clips_to_frame():
    # Model input 320x240 of a 640x480 frame: every coordinate doubles.
    output = torchvision_output(
        [[10, 20, 30, 40], [300, 200, 330, 250], [-5, -5, 10, 10]],
        [0.9, 0.8, 0.7],
        [1, 2, 1],
    )

    detections = from_output(output, scale_x=2.0, scale_y=2.0)

    np.testing.assert_allclose(
        detections.boxes,
        [[20, 40, 60, 80], [600, 400, 640, 480], [0, 0, 20, 20]],
    )
    assert detections.boxes.dtype == np.float32
    assert detections.labels == ("person", "car", "person")


def test_from_torchvision_drops_boxes_left_entirely_outside_the_frame():
    output = torchvision_output(
        [[700, 10, 800, 50], [10, 10, 50, 50]], [0.9, 0.5], [1, 2]
    )

    detections = from_output(output)

    assert detections.labels == ("car",)


def test_from_torchvision_drops_low_scores_and_keeps_the_best_first():
    output = torchvision_output(
        [[0, 0, 10, 10]] * 4, [0.3, 0.95, 0.5, 0.7], [1, 2, 1, 2]
    )

    detections = from_output(output, score_threshold=0.5, max_detections=2)

    np.testing.assert_allclose(detections.scores, [0.95, 0.7])
    assert detections.class_ids.tolist() == [2, 2]


def test_to_json_gives_plain_python_types():
    output = torchvision_output([[1.234, 2, 3, 4.5]], [0.87654321], [2])

    records = from_output(output).to_json()

    assert records == [
        {"label": "car", "class_id": 2, "score": 0.8765, "box": [1.23, 2.0, 3.0, 4.5]}
    ]
    record = records[0]
    assert type(record["class_id"]) is int
    assert type(record["score"]) is float
    assert all(type(value) is float for value in record["box"])
    json.dumps(records)


def test_a_frame_without_detections_gives_an_empty_list_and_a_zero_summary():
    output = torchvision_output([], [], [])

    for detections in (Detections.empty(), from_output(output)):
        assert len(detections) == 0
        assert detections.to_json() == []
        np.testing.assert_array_equal(detections.summary(3), np.zeros(4))


def test_summary_counts_detections_per_class_and_averages_scores():
    output = torchvision_output([[0, 0, 10, 10]] * 3, [0.9, 0.6, 0.3], [1, 2, 1])

    summary = from_output(output).summary(3)

    assert summary.dtype == np.float32
    np.testing.assert_allclose(summary, [0, 2, 1, 0.6], rtol=1e-6)


def test_class_ids_without_a_name_are_named_by_number():
    output = torchvision_output([[0, 0, 10, 10]], [0.9], [7])

    detections = from_output(output)

    assert detections.labels == ("class_7",)
    np.testing.assert_allclose(detections.summary(3), [0, 0, 0, 0.9], rtol=1e-6)


@pytest.mark.parametrize(
    ("boxes", "scores", "class_ids", "labels", "message"),
    [
        (
            np.zeros((2, 4), np.float32),
            np.zeros(1, np.float32),
            np.zeros(1, np.int64),
            ("a",),
            "Detections.boxes",
        ),
        (
            np.zeros((1, 4), np.float64),
            np.zeros(1, np.float32),
            np.zeros(1, np.int64),
            ("a",),
            "float32",
        ),
        (
            np.zeros((1, 4), np.float32),
            np.zeros(1, np.float32),
            np.zeros(1, np.int32),
            ("a",),
            "Detections.class_ids",
        ),
        (
            np.zeros((1, 4), np.float32),
            np.zeros(1, np.float32),
            np.zeros(1, np.int64),
            (),
            "Detections.labels",
        ),
    ],
)
def test_detections_reject_arrays_of_the_wrong_shape_or_type(
    boxes, scores, class_ids, labels, message
):
    with pytest.raises(ValueError, match=message):
        Detections(boxes, scores, class_ids, labels)
