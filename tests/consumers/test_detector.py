import logging
import urllib.error

import cv2
import numpy as np
import pytest
import torch

from consumers.detection import MODELS, build_detector
from pipeline.config import DetectorSettings
from pipeline.errors import ConfigError, FrameFormatError

CPU = torch.device("cpu")

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)

# The RCNN transform pads every image of a batch to the largest one, so it
# shows whether frames of different sizes leak into each other; SSD resizes
# every frame to 320x320 and would hide a leak.
PADDING_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"

# torch deprecates TorchScript in favour of torch.export; the TorchScript file
# contract is what these tests pin down, so the notice is noise here.
quiet_jit_deprecation = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"
)


class CentreBox(torch.nn.Module):
    """A TorchScript test detector: one box over the middle half of its input."""

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
                    "scores": torch.tensor([0.9], device=image.device),
                    "labels": torch.tensor([1], device=image.device),
                }
            )
        return results


class MeanColour(torch.nn.Module):
    """A TorchScript test detector that finds nothing but gives features."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results: list[dict[str, torch.Tensor]] = []
        for image in images:
            results.append(
                {
                    "boxes": torch.zeros(0, 4, device=image.device),
                    "scores": torch.zeros(0, device=image.device),
                    "labels": torch.zeros(0, dtype=torch.int64, device=image.device),
                    "features": image.mean(dim=(1, 2)),
                }
            )
        return results


@pytest.fixture(scope="module")
def detector_factory():
    built = {}

    def factory(device=CPU, **fields):
        fields.setdefault("weights", "random")
        key = (str(device), tuple(sorted(fields.items())))
        if key not in built:
            built[key] = build_detector(DetectorSettings(**fields), device)
        return built[key]

    return factory


@pytest.fixture
def script_factory(tmp_path):
    def factory(module, name="detector.pt"):
        path = tmp_path / name
        torch.jit.script(module).save(str(path))
        return str(path)

    return factory


def noise_frame(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def assert_features_close(actual, expected, rtol=1e-4):
    # Random-weight features are tiny (1e-9 and below), so compare relative
    # to the vector's own size rather than against a fixed tolerance.
    assert (actual - expected).norm() <= rtol * expected.norm()


def assert_detections_close(actual, expected, atol=1e-4):
    assert actual.labels == expected.labels
    np.testing.assert_allclose(actual.boxes, expected.boxes, atol=atol)
    np.testing.assert_allclose(actual.scores, expected.scores, atol=atol)


def test_blank_frame_gives_no_detections(detector_factory):
    detector = detector_factory(score_threshold=0.5)
    blank = np.zeros((240, 320, 3), np.uint8)

    output = detector([blank])

    assert len(output.detections) == 1
    assert len(output.detections[0]) == 0
    assert output.detections[0].to_json() == []
    assert output.features.shape == (1, detector.feature_dim)


def test_random_weights_of_one_seed_give_identical_outputs():
    settings = DetectorSettings(weights="random", seed=3, score_threshold=0.0)
    frame = noise_frame(240, 320)

    first = build_detector(settings, CPU)([frame])
    second = build_detector(settings, CPU)([frame])
    other_seed = build_detector(settings.model_copy(update={"seed": 4}), CPU)([frame])

    assert torch.equal(first.features, second.features)
    assert_detections_close(first.detections[0], second.detections[0], atol=0)
    assert not torch.equal(first.features, other_seed.features)


def test_random_weights_are_named_with_their_seed(detector_factory):
    detector = detector_factory(seed=0)

    assert detector.weights == "random(seed=0)"
    assert detector.name == "ssdlite320_mobilenet_v3_large"
    assert detector.label_names[1] == "person"
    assert detector.num_classes == 91


def test_frames_of_two_sizes_in_one_batch_match_each_frame_alone(detector_factory):
    detector = detector_factory(
        model=PADDING_MODEL, score_threshold=0.0, max_detections=10
    )
    frames = [
        noise_frame(240, 320, 1),
        noise_frame(320, 240, 2),
        noise_frame(240, 320, 3),
    ]

    together = detector(frames)

    for index, frame in enumerate(frames):
        alone = detector([frame])
        assert len(together.detections[index]) == 10
        assert_detections_close(together.detections[index], alone.detections[0])
        assert_features_close(together.features[index], alone.features[0])


def test_output_vectors_join_features_and_detection_summary(detector_factory):
    detector = detector_factory(score_threshold=0.0, max_detections=5)

    output = detector([noise_frame(240, 320), noise_frame(240, 320, 1)])
    vectors = output.vectors(detector.num_classes)

    assert vectors.shape == (2, detector.vector_size)
    assert vectors.dtype == torch.float32
    assert torch.equal(vectors[:, : detector.feature_dim], output.features)
    assert vectors[0, detector.feature_dim : -1].sum() == 5


def test_an_empty_batch_gives_empty_output(detector_factory):
    detector = detector_factory()

    output = detector([])

    assert output.detections == []
    assert output.features.shape == (0, detector.feature_dim)


def test_uint8_chw_tensors_give_the_same_results_as_bgr_arrays(detector_factory):
    detector = detector_factory(score_threshold=0.0, max_detections=5)
    frame = noise_frame(240, 320)
    tensor = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1)

    from_array = detector([frame])
    from_tensor = detector([tensor])

    assert torch.equal(from_array.features, from_tensor.features)
    assert_detections_close(from_tensor.detections[0], from_array.detections[0], 0)


@quiet_jit_deprecation
def test_torchscript_boxes_land_in_original_frame_pixels(script_factory):
    path = script_factory(CentreBox())
    settings = DetectorSettings(model=path, input_max_side=320, score_threshold=0.5)
    detector = build_detector(settings, CPU)
    frames = [np.zeros((720, 1280, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)]

    output = detector(frames)

    large, small = output.detections
    np.testing.assert_allclose(large.boxes, [[320, 180, 960, 540]], atol=1e-3)
    np.testing.assert_allclose(small.boxes, [[160, 120, 480, 360]], atol=1e-3)
    assert large.labels == small.labels == ("thing",)
    assert detector.label_names == ("__background__", "thing")
    assert detector.weights == path
    # Without model features, an 8x8 RGB thumbnail of the frame.
    assert detector.feature_dim == 192
    assert output.features.shape == (2, 192)


@quiet_jit_deprecation
def test_torchscript_features_are_used_when_the_model_gives_them(script_factory):
    path = script_factory(MeanColour(), "colour.torchscript")
    detector = build_detector(DetectorSettings(model=path), CPU)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR

    output = detector([frame])

    assert detector.feature_dim == 3
    torch.testing.assert_close(output.features, torch.tensor([[0.0, 0.0, 1.0]]))
    assert output.detections[0].to_json() == []
    # No labels attribute: ids are named by number over the COCO id range.
    assert detector.num_classes == 91
    assert detector.label_names[5] == "class_5"


def test_coco_weights_without_network_name_the_other_choices(tmp_path, monkeypatch):
    # An empty cache and a download that fails at once, whatever the network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)

    with pytest.raises(ConfigError) as caught:
        build_detector(DetectorSettings(weights="coco"), CPU)

    message = str(caught.value)
    assert "COCO weights" in message
    assert "network unreachable" in message
    assert "'random'" in message
    assert "local state dict file" in message


def test_a_state_dict_file_loads_the_same_weights(detector_factory, tmp_path):
    seeded = detector_factory(seed=0, score_threshold=0.0, max_detections=5)
    path = tmp_path / "ssdlite.pth"
    torch.save(seeded._model.state_dict(), path)
    frame = noise_frame(240, 320)

    loaded = build_detector(
        DetectorSettings(weights=str(path), score_threshold=0.0, max_detections=5), CPU
    )

    assert loaded.weights == str(path)
    assert torch.equal(loaded([frame]).features, seeded([frame]).features)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weights": "/no/such/weights.pth"}, "no file at /no/such/weights.pth"),
        ({"model": "yolo9000"}, "expected one of ssdlite320_mobilenet_v3_large"),
        ({"model": "/no/such/model.pt"}, "no file at /no/such/model.pt"),
    ],
)
def test_bad_model_settings_raise_config_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_detector(DetectorSettings(**fields), CPU)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"conv.weight": torch.zeros(1)}, "RuntimeError: Error"),
        ([1, 2], "TypeError"),
        (b"not a torch file", "UnpicklingError"),
        (b"", "EOFError"),
    ],
)
def test_a_weights_file_of_another_kind_raises_config_error(tmp_path, content, reason):
    path = tmp_path / "other.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)

    with pytest.raises(
        ConfigError, match="is not a state dict of this detector"
    ) as err:
        build_detector(DetectorSettings(weights=str(path)), CPU)

    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((240, 320), np.uint8), r"shape \(240, 320\)"),
        (np.zeros((240, 320, 4), np.uint8), r"shape \(240, 320, 4\)"),
        (np.zeros((240, 320, 3), np.float32), "got float32"),
        (torch.zeros(240, 320, 3, dtype=torch.uint8), r"shape \(240, 320, 3\)"),
        (b"\xff\xd8", "got bytes"),
    ],
)
def test_frames_of_the_wrong_format_raise_frame_format_error(
    detector_factory, frame, message
):
    detector = detector_factory()

    with pytest.raises(FrameFormatError, match=message):
        detector([frame])


def test_fp16_on_the_cpu_warns_and_runs_in_fp32(caplog):
    caplog.set_level(logging.WARNING, logger="consumers.detection.detector")

    detector = build_detector(DetectorSettings(weights="random"), CPU, fp16=True)

    assert detector.fp16 is False
    assert "fp16 needs a CUDA device" in caplog.text


def test_every_listed_model_has_coco_label_names_offline():
    for spec in MODELS.values():
        assert spec.weights.DEFAULT.meta["categories"][1] == "person"


@pytest.mark.cuda
@requires_cuda
def test_cuda_gives_the_same_results_as_the_cpu(detector_factory):
    fields = {"model": PADDING_MODEL, "score_threshold": 0.0, "max_detections": 10}
    frames = [noise_frame(240, 320), noise_frame(320, 240, 1)]

    on_cpu = detector_factory(**fields)(frames)
    on_cuda = detector_factory(torch.device("cuda"), **fields)(frames)

    for cpu, cuda in zip(on_cpu.detections, on_cuda.detections):
        # Random weights score every box alike, so which equal-score boxes
        # survive may differ between devices; scores and counts may not.
        assert len(cpu) == len(cuda)
        np.testing.assert_allclose(cuda.scores, cpu.scores, atol=1e-4)
    assert on_cuda.features.device.type == "cpu"
    assert_features_close(on_cuda.features[0], on_cpu.features[0], rtol=1e-2)
    assert_features_close(on_cuda.features[1], on_cpu.features[1], rtol=1e-2)


@pytest.mark.cuda
@requires_cuda
def test_fp16_on_cuda_runs_and_returns_float32_on_the_cpu():
    settings = DetectorSettings(weights="random", score_threshold=0.0)
    detector = build_detector(settings, torch.device("cuda"), fp16=True)

    output = detector([noise_frame(240, 320), noise_frame(480, 640, 1)])

    assert detector.fp16 is True
    assert output.features.dtype == torch.float32
    assert output.features.device.type == "cpu"
    assert torch.isfinite(output.features).all()
    assert all(d.boxes.dtype == np.float32 for d in output.detections)


@pytest.mark.cuda
@requires_cuda
def test_uint8_chw_tensors_decoded_on_cuda_are_accepted(detector_factory):
    from torchvision.io import decode_jpeg

    cuda = torch.device("cuda")
    detector = detector_factory(cuda, score_threshold=0.0, input_max_side=160)
    frame = noise_frame(240, 320)
    encoded = cv2.imencode(".jpg", frame)[1]
    jpeg = torch.from_numpy(encoded.reshape(-1).copy())

    decoded = decode_jpeg(jpeg, device=cuda)
    output = detector([decoded, decoded])

    assert decoded.device.type == "cuda" and decoded.shape == (3, 240, 320)
    assert output.features.shape == (2, detector.feature_dim)
    assert_features_close(output.features[1], output.features[0], rtol=1e-3)
    for detections in output.detections:
        # Boxes come back in pixels of the 320x240 frame, not the 160x120 input.
        assert len(detections) > 0
        assert detections.boxes[:, 2].max() > 160
        assert detections.boxes[:, 2].max() <= 320
