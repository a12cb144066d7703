"""Per-camera RNN state through Kafka: cameras sharing a topic and a worker's
batches give each camera the outputs it would get alone."""

from itertools import groupby

import pytest
from inference_support import (
    CPU,
    assert_sequence_matches,
    frame_seq,
    labelled_image,
    offline_run,
    read_frames,
    read_results,
    run_worker,
    write_clip,
)

from consumers.detection import build_detector
from pipeline.config import CameraSettings
from producers.runner import produce

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"
)

FRAMES_PER_CAMERA = 12
RESTART_FRAMES = 6


def clip(tmp_path, name, frames):
    """A clip of frames labelled with its name, so each camera's inputs differ."""
    images = [labelled_image(f"{name}{i}") for i in range(frames)]
    return write_clip(tmp_path / f"{name}.avi", images)


def runs(records, camera_of, seq_of, place_of):
    """Records per camera run, in offset order; a run restarts at seq 0."""
    by_run: dict[tuple[str, int], list] = {}
    ordered = sorted(records, key=lambda item: (camera_of(item), place_of(item)))
    for camera_id, items in groupby(ordered, key=camera_of):
        run = -1
        for item in items:
            if seq_of(item) == 0:
                run += 1
            by_run.setdefault((camera_id, run), []).append(item)
    return by_run


def test_cameras_sharing_a_topic_get_the_sequence_outputs_of_each_camera_alone(
    settings_factory, nothing_found_model, tmp_path
):
    settings = settings_factory(
        **{
            "consumer.detector.model": str(nothing_found_model),
            # Batches large enough to hold frames of several cameras at once.
            "consumer.batch_size": 8,
        }
    )
    cameras = [
        CameraSettings(
            id=name, source=str(clip(tmp_path, name, FRAMES_PER_CAMERA)), speed="max"
        )
        for name in ("a", "b", "c")
    ]
    restart = CameraSettings(
        id="a", source=str(clip(tmp_path, "r", RESTART_FRAMES)), speed="max"
    )

    produce(settings, cameras)
    produce(settings, [restart])
    stats = run_worker(settings, max_frames=3 * FRAMES_PER_CAMERA + RESTART_FRAMES)
    results = read_results(settings)

    frame_runs = runs(
        read_frames(settings),
        camera_of=lambda record: frame_seq(record)[0],
        seq_of=lambda record: frame_seq(record)[1],
        place_of=lambda record: (record.partition, record.offset),
    )
    result_runs = runs(
        results,
        camera_of=lambda result: result["camera_id"],
        seq_of=lambda result: result["seq"],
        place_of=lambda result: (
            result["source"]["partition"],
            result["source"]["offset"],
        ),
    )
    assert stats.results_out == len(results) == 3 * FRAMES_PER_CAMERA + RESTART_FRAMES
    assert {key: len(run) for key, run in result_runs.items()} == {
        ("a", 0): FRAMES_PER_CAMERA,
        ("b", 0): FRAMES_PER_CAMERA,
        ("c", 0): FRAMES_PER_CAMERA,
        ("a", 1): RESTART_FRAMES,
    }

    detector = build_detector(settings.consumer.detector, CPU)
    expected = {
        key: offline_run(detector, settings, records)
        for key, records in frame_runs.items()
    }
    for key, run in result_runs.items():
        assert [result["seq"] for result in run] == list(range(len(run)))
        for result, (_, sequence) in zip(run, expected[key], strict=True):
            assert_sequence_matches(result["sequence"], sequence)

    # The cameras' inputs differ, so a state shared between them would show.
    novelties = {key: expected[key][5][1].novelty for key in expected}
    assert len({round(value, 6) for value in novelties.values()}) == 4
    second_run = result_runs[("a", 1)]
    assert second_run[0]["sequence"]["state_reset"] is True
    assert second_run[0]["sequence"]["novelty"] is None
    assert not any(result["sequence"]["state_reset"] for result in second_run[1:])
