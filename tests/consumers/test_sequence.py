import math
import random

import pytest
import torch

from consumers.sequence import (
    CameraStates,
    SequenceInput,
    build_sequence_model,
    save_checkpoint,
)
from consumers.sequence.model import SequenceModel
from pipeline.config import SequenceSettings
from pipeline.errors import ConfigError

CPU = torch.device("cpu")
INPUT_SIZE = 12
HIDDEN_SIZE = 8
RESET_GAP_MS = 1_000
FRAME_INTERVAL_MS = 40
CLASS_NAMES = ("quiet", "busy", "blocked")


@pytest.fixture
def checkpoint_factory(tmp_path):
    def factory(cell="gru", input_size=INPUT_SIZE, class_names=CLASS_NAMES):
        torch.manual_seed(7)
        model = SequenceModel(cell, input_size, HIDDEN_SIZE, class_names)
        path = tmp_path / f"{cell}-{input_size}.pt"
        save_checkpoint(model, path)
        return path

    return factory


@pytest.fixture
def states_factory():
    def factory(cell="gru", checkpoint=None):
        settings = SequenceSettings(
            cell=cell,
            hidden_size=HIDDEN_SIZE,
            checkpoint=checkpoint,
            reset_gap_ms=RESET_GAP_MS,
        )
        model = build_sequence_model(settings, INPUT_SIZE, CPU)
        return CameraStates(model, reset_gap_ms=settings.reset_gap_ms)

    return factory


def camera_frames(camera_id, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [
        SequenceInput(
            camera_id,
            seq,
            1_700_000_000_000 + seq * FRAME_INTERVAL_MS,
            torch.randn(INPUT_SIZE, generator=generator),
        )
        for seq in range(count)
    ]


def frame(camera_id, seq, capture_ts_ms, seed=0):
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(INPUT_SIZE, generator=generator)
    return SequenceInput(camera_id, seq, capture_ts_ms, vector)


def run_alone(states, frames):
    return [states.step([item])[0] for item in frames]


def assert_outputs_close(actual, expected):
    assert actual.state_reset == expected.state_reset
    if expected.novelty is None:
        assert actual.novelty is None
    else:
        assert actual.novelty == pytest.approx(expected.novelty, abs=1e-5)
    if expected.classes is None:
        assert actual.classes is None
    else:
        assert actual.classes.keys() == expected.classes.keys()
        for name, probability in expected.classes.items():
            assert actual.classes[name] == pytest.approx(probability, abs=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_camera_gives_the_same_results_whatever_shares_its_batches(
    cell, states_factory, checkpoint_factory
):
    checkpoint = checkpoint_factory(cell)
    cameras = {name: camera_frames(name, 4, seed) for seed, name in enumerate("abc")}
    alone = {
        name: run_alone(states_factory(cell, checkpoint), frames)
        for name, frames in cameras.items()
    }

    # Interleave the cameras at random, each camera's frames still in order,
    # then cut into batches of 4, 3 and 5 (several frames of one camera land
    # in one batch).
    order = [name for name in cameras for _ in range(4)]
    random.Random(0).shuffle(order)
    pending = {name: iter(frames) for name, frames in cameras.items()}
    stream = [next(pending[name]) for name in order]
    batches = [stream[:4], stream[4:7], stream[7:]]
    states = states_factory(cell, checkpoint)
    together = {name: [] for name in cameras}
    for batch in batches:
        for item, output in zip(batch, states.step(batch)):
            together[item.camera_id].append(output)

    assert sorted(states.cameras()) == ["a", "b", "c"]
    for name in cameras:
        assert len(together[name]) == 4
        for actual, expected in zip(together[name], alone[name]):
            assert_outputs_close(actual, expected)


def test_the_first_frame_of_a_camera_resets_and_has_no_novelty(states_factory):
    states = states_factory()

    first, second = run_alone(states, camera_frames("a", 2, seed=0))

    assert first.state_reset is True and first.novelty is None
    assert second.state_reset is False and second.novelty > 0
    # An untrained model predicts near zero: novelty near the mean square of a
    # normalised vector, which is 1.
    assert 0.5 < second.novelty < 2


def test_seq_going_back_to_zero_resets_state(states_factory):
    states = states_factory()
    run_alone(states, camera_frames("a", 3, seed=0))

    restarted = states.step([frame("a", 0, 1_700_000_000_200)])[0]
    after = states.step([frame("a", 1, 1_700_000_000_240)])[0]

    assert restarted.state_reset is True and restarted.novelty is None
    assert after.state_reset is False and after.novelty is not None


def test_a_repeated_seq_resets_state(states_factory):
    states = states_factory()
    states.step([frame("a", 5, 1_000)])

    repeated = states.step([frame("a", 5, 1_040)])[0]

    assert repeated.state_reset is True


@pytest.mark.parametrize(
    ("gap_ms", "resets"),
    [(RESET_GAP_MS, False), (RESET_GAP_MS + 1, True), (-500, False)],
)
def test_a_capture_gap_longer_than_reset_gap_resets_state(
    states_factory, gap_ms, resets
):
    states = states_factory()
    states.step([frame("a", 0, 10_000)])

    output = states.step([frame("a", 1, 10_000 + gap_ms)])[0]

    assert output.state_reset is resets
    assert (output.novelty is None) is resets


def test_end_of_stream_resets_state(states_factory):
    states = states_factory()
    states.step([frame("a", 0, 1_000), frame("b", 0, 1_000)])

    states.end_of_stream("a")
    outputs = states.step([frame("a", 1, 1_040), frame("b", 1, 1_040)])

    assert states.cameras() == ["b", "a"]
    assert outputs[0].state_reset is True and outputs[0].novelty is None
    assert outputs[1].state_reset is False and outputs[1].novelty is not None


def test_a_reset_state_runs_like_a_new_camera(states_factory):
    states = states_factory()
    frames = camera_frames("a", 3, seed=4)
    run_alone(states, frames)

    replayed = run_alone(states, frames)
    fresh = run_alone(states_factory(), frames)

    for actual, expected in zip(replayed, fresh):
        assert_outputs_close(actual, expected)


def test_a_checkpoint_with_a_classifier_gives_probabilities_summing_to_one(
    states_factory, checkpoint_factory
):
    checkpoint = checkpoint_factory()
    states = states_factory(checkpoint=checkpoint)

    outputs = run_alone(states, camera_frames("a", 3, seed=0))

    assert states.model.weights_name == str(checkpoint)
    for output in outputs:
        assert list(output.classes) == list(CLASS_NAMES)
        assert all(type(p) is float for p in output.classes.values())
        assert math.isclose(sum(output.classes.values()), 1.0, abs_tol=1e-6)


def test_a_model_without_classifier_gives_no_classes(states_factory):
    states = states_factory()

    output = states.step([frame("a", 0, 0)])[0]

    assert output.classes is None
    assert states.model.weights_name == "untrained"


def test_untrained_models_of_one_seed_are_identical():
    settings = SequenceSettings(hidden_size=HIDDEN_SIZE, seed=5)

    first = build_sequence_model(settings, INPUT_SIZE, CPU)
    second = build_sequence_model(settings, INPUT_SIZE, CPU)

    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ({"input_size": INPUT_SIZE + 3}, f"expected input_size {INPUT_SIZE}.*found 15"),
        ({"cell": "lstm"}, "expected cell 'gru'.*found 'lstm'"),
    ],
)
def test_a_checkpoint_that_does_not_fit_raises_config_error(
    checkpoint_factory, saved, message
):
    checkpoint = checkpoint_factory(**saved)
    settings = SequenceSettings(hidden_size=HIDDEN_SIZE, checkpoint=checkpoint)

    with pytest.raises(ConfigError, match=message):
        build_sequence_model(settings, INPUT_SIZE, CPU)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no file at"),
        ({"format": "someone.else/2"}, "expected format 'framestream.rnn/1'"),
        ([1, 2, 3], "found None"),
        (b"not a torch file", "cannot be loaded: UnpicklingError"),
        (b"", "cannot be loaded: EOFError"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_raises_config_error(
    tmp_path, content, message
):
    path = tmp_path / "rnn.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    settings = SequenceSettings(checkpoint=path)

    with pytest.raises(ConfigError, match=message):
        build_sequence_model(settings, INPUT_SIZE, CPU)


def test_a_vector_of_the_wrong_size_is_refused(states_factory):
    states = states_factory()
    wrong = SequenceInput("a", 0, 0, torch.zeros(INPUT_SIZE + 1))

    with pytest.raises(
        ValueError, match=f"expected a vector of shape \\({INPUT_SIZE},\\)"
    ):
        states.step([wrong])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_restored_snapshot_continues_where_it_left_off(cell, states_factory):
    frames = camera_frames("a", 5, seed=2)
    original = states_factory(cell)
    run_alone(original, frames[:3])

    snapshot = original.snapshot()
    copy = states_factory(cell)
    copy.restore(snapshot)

    assert set(snapshot["a"]) >= {"h", "seq", "capture_ts_ms", "prediction"}
    assert ("c" in snapshot["a"]) is (cell == "lstm")
    for actual, expected in zip(
        run_alone(copy, frames[3:]), run_alone(original, frames[3:])
    ):
        assert_outputs_close(actual, expected)


def test_a_snapshot_of_another_model_is_refused(states_factory):
    gru = states_factory("gru")
    gru.step([frame("a", 0, 0)])

    with pytest.raises(ConfigError, match="does not fit the lstm sequence model"):
        states_factory("lstm").restore(gru.snapshot())


def test_an_empty_batch_gives_no_outputs(states_factory):
    assert states_factory().step([]) == []
