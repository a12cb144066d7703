"""Results through Kafka equal the same models run offline on the same frames."""

from collections import Counter

import numpy as np
import pytest
from inference_support import (
    CPU,
    RANDOM_DETECTOR,
    FrameWriter,
    assert_detections_match,
    assert_sequence_matches,
    frame_seq,
    offline_run,
    read_frames,
    read_results,
    run_worker,
)

from consumers.detection import build_detector
from pipeline.config import CameraSettings
from producers.runner import produce

# torch deprecates TorchScript in favour of torch.export; the TorchScript file
# contract is what the geometry test relies on, so the notice is noise here.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"
)

CLIP_FRAMES = 60
# With random weights every score is about 1/91: a threshold of 0 lets boxes
# through, and 10 of them per frame give the comparison something to compare.
SOME_BOXES = {
    "consumer.detector.score_threshold": 0.0,
    "consumer.detector.max_detections": 10,
}


def test_a_replayed_clip_gives_one_result_per_frame_equal_to_an_offline_run(
    settings_factory, clip_factory
):
    settings = settings_factory(**RANDOM_DETECTOR, **SOME_BOXES)
    clip = clip_factory(frames=CLIP_FRAMES, width=320, height=240)
    camera = CameraSettings(id="cam-replay", source=str(clip), speed="max")

    summary = produce(settings, [camera])
    stats = run_worker(settings, max_frames=CLIP_FRAMES)
    results = read_results(settings)

    assert summary.total("sent") == CLIP_FRAMES
    assert stats.results_out == CLIP_FRAMES and stats.dead_letters == 0
    assert Counter(result["seq"] for result in results) == Counter(range(CLIP_FRAMES))

    frames = sorted(read_frames(settings), key=lambda record: frame_seq(record)[1])
    detector = build_detector(settings.consumer.detector, CPU)
    expected = offline_run(detector, settings, frames)
    by_seq = {result["seq"]: result for result in results}
    for record, (detections, sequence) in zip(frames, expected):
        result = by_seq[frame_seq(record)[1]]
        assert len(detections) == 10
        assert result["source"] == {
            "topic": settings.topics.frames,
            "partition": record.partition,
            "offset": record.offset,
        }
        assert result["model"]["weights"] == "random(seed=0)"
        assert_detections_match(result["detections"], detections)
        assert_sequence_matches(result["sequence"], sequence)
    assert by_seq[0]["sequence"]["state_reset"] is True
    assert not any(by_seq[seq]["sequence"]["state_reset"] for seq in range(1, 60))


@pytest.mark.parametrize(
    ("width", "height", "expected_box", "model_width"),
    [
        (1280, 720, [320, 180, 960, 540], 320),
        (640, 480, [160, 120, 480, 360], 320),
    ],
)
def test_boxes_are_published_in_pixels_of_the_frame_not_of_the_model_input(
    settings_factory,
    clip_factory,
    fixed_box_model,
    width,
    height,
    expected_box,
    model_width,
):
    settings = settings_factory(
        **{
            "consumer.detector.model": str(fixed_box_model),
            "consumer.detector.input_max_side": 320,
            # The test model's score (0.32) is below the default threshold.
            "consumer.detector.score_threshold": 0.1,
            "consumer.batch_size": 4,
        }
    )
    clip = clip_factory(frames=3, width=width, height=height)
    camera = CameraSettings(id="cam-geometry", source=str(clip), speed="max")

    produce(settings, [camera])
    run_worker(settings, max_frames=3)
    results = read_results(settings)

    assert sorted(result["seq"] for result in results) == [0, 1, 2]
    for result in results:
        assert (result["width"], result["height"]) == (width, height)
        (detection,) = result["detections"]
        # The score is the width the model saw: the frame was scaled down.
        assert detection["score"] == pytest.approx(model_width / 1000)
        np.testing.assert_allclose(detection["box"], expected_box, atol=0.01)


def test_a_blank_frame_gives_an_empty_detection_list(settings_factory):
    settings = settings_factory(**RANDOM_DETECTOR)
    writer = FrameWriter(settings)
    writer.send_image("cam-blank", 0, np.zeros((240, 320, 3), np.uint8))
    writer.close()

    stats = run_worker(settings, max_frames=1)
    (result,) = read_results(settings)

    assert result["camera_id"] == "cam-blank" and result["seq"] == 0
    assert result["detections"] == []
    assert stats.results_out == 1 and stats.detections == 0
