"""Frames of every shape and depth reach Kafka as 3-channel 8-bit JPEGs, or fail
loudly; frames too large for the topic are re-encoded to fit, never lost."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from topic_reader import read_topic

from pipeline.config import CameraSettings
from pipeline.errors import FrameFormatError
from pipeline.frames import decode_jpeg, encode_to_fit, to_bgr8
from pipeline.kafka import client_config, max_frame_bytes
from pipeline.messages import header_dict, is_end_of_stream
from producers.runner import produce

ONE_MIB = 1024 * 1024


def frames_of(settings, expect: int) -> list:
    """Frame records (end-of-stream left out) of the frames topic, by seq."""
    records = read_topic(settings, settings.topics.frames, expect=expect + 1)
    frames = [record for record in records if not is_end_of_stream(record.headers)]
    return sorted(frames, key=lambda record: int(header_dict(record.headers)["seq"]))


def topic_limit_bytes(settings) -> int:
    admin = KafkaAdminClient(**client_config(settings))
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, settings.topics.frames)
        described = admin.describe_configs([resource])
    finally:
        admin.close()
    entry = described["topic"][settings.topics.frames]["max.message.bytes"]
    return int(entry["value"])


# --- size ------------------------------------------------------------------


def test_a_4k_noise_frame_is_re_encoded_to_fit_a_1_mib_topic_and_none_is_lost(
    settings_factory, tmp_path
):
    settings = settings_factory(
        **{
            "topics.max_message_bytes": ONE_MIB,
            "producer.jpeg_quality": 95,
            "producer.speed": "max",
        }
    )
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for index in range(3):
        noise = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
        # BMP: written at once, and read back bit for bit.
        cv2.imwrite(str(folder / f"{index}.bmp"), noise)

    summary = produce(settings, [CameraSettings(id="uhd", source=str(folder))])
    frames = frames_of(settings, expect=3)

    (stats,) = summary.cameras
    assert stats.error is None
    assert stats.read == 3
    assert stats.read == stats.sent + stats.dropped + stats.failed
    assert len(frames) == stats.sent
    assert stats.reencoded == stats.sent
    assert topic_limit_bytes(settings) == ONE_MIB
    for record in frames:
        headers = header_dict(record.headers)
        assert len(record.value) <= max_frame_bytes(settings) < ONE_MIB
        image = decode_jpeg(record.value)
        assert image.shape == (int(headers["height"]), int(headers["width"]), 3)
        # Scaled down, keeping the aspect ratio within a pixel.
        assert image.shape[1] < 3840
        assert abs(image.shape[1] / image.shape[0] - 3840 / 2160) < 0.01


@pytest.mark.parametrize(
    ("shape", "max_bytes", "fits"),
    [
        ((240, 320, 3), 200_000, True),
        ((2160, 3840, 3), 1_000_000, True),
        ((2160, 3840, 3), 200, False),
        ((64, 64, 3), 100, False),
    ],
)
def test_encode_to_fit_returns_none_only_when_no_quality_or_size_fits(
    shape, max_bytes, fits
):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)

    encoded = encode_to_fit(image, 95, max_bytes)

    if not fits:
        assert encoded is None
        return
    assert len(encoded.jpeg) <= max_bytes
    assert decode_jpeg(encoded.jpeg).shape == (encoded.height, encoded.width, 3)


# --- shape and depth ---------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected_pixel"),
    [
        pytest.param(np.full((24, 32), 200, np.uint8), (200, 200, 200), id="H,W"),
        pytest.param(np.full((24, 32, 1), 90, np.uint8), (90, 90, 90), id="H,W,1"),
        pytest.param(np.full((24, 32, 3), (1, 2, 3), np.uint8), (1, 2, 3), id="H,W,3"),
        pytest.param(
            np.full((24, 32, 4), (10, 120, 240, 50), np.uint8),
            (10, 120, 240),
            id="H,W,4",
        ),
    ],
)
def test_to_bgr8_makes_every_8_bit_shape_a_3_channel_frame(image, expected_pixel):
    converted = to_bgr8(image)

    assert converted.shape == (24, 32, 3)
    assert converted.dtype == np.uint8
    assert converted.flags.c_contiguous
    assert tuple(converted[5, 5]) == expected_pixel


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.zeros((24, 32, 2), np.uint8), "got (24, 32, 2)"),
        (np.zeros((2, 24, 32, 3), np.uint8), "got (2, 24, 32, 3)"),
        (np.zeros((0, 32, 3), np.uint8), "non-empty frame"),
        ([[1, 2], [3, 4]], "numpy array, got list"),
    ],
)
def test_to_bgr8_refuses_shapes_it_cannot_encode(image, problem):
    with pytest.raises(FrameFormatError, match=re.escape(problem)):
        to_bgr8(image)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_deep_frame_without_a_scaling_option_names_its_dtype_and_the_option(dtype):
    image = np.zeros((24, 32), dtype)

    with pytest.raises(FrameFormatError) as caught:
        to_bgr8(image, "error")

    message = str(caught.value)
    assert np.dtype(dtype).name in message
    assert "producer.depth_scaling" in message
    assert "'shift' or 'minmax'" in message


@pytest.mark.parametrize(
    ("image", "scaling", "expected"),
    [
        (np.array([[0x0100, 0xAB00, 0xFFFF]], np.uint16), "shift", [1, 0xAB, 255]),
        (np.array([[1000, 2000, 3000]], np.uint16), "minmax", [0, 128, 255]),
        (np.array([[0.0, 0.5, 1.0]], np.float32), "shift", [0, 128, 255]),
        (np.array([[-1.0, 0.0, 1.0]], np.float32), "minmax", [0, 128, 255]),
        (np.array([[7, 7, 7]], np.uint16), "minmax", [0, 0, 0]),
    ],
)
def test_a_deep_frame_converts_with_depth_scaling(image, scaling, expected):
    converted = to_bgr8(image, scaling)

    assert converted.dtype == np.uint8
    assert converted.shape == (1, 3, 3)
    assert converted[0, :, 0].tolist() == expected


def test_gray_and_alpha_images_in_a_folder_arrive_as_3_channel_frames(
    settings_factory, tmp_path
):
    settings = settings_factory(**{"producer.speed": "max"})
    folder = tmp_path / "images"
    folder.mkdir()
    gray = np.full((100, 200), 200, np.uint8)
    bgra = np.full((120, 160, 4), (10, 120, 240, 50), np.uint8)
    bgr = np.full((90, 80, 3), (30, 60, 90), np.uint8)
    for name, image in (("0-gray.png", gray), ("1-bgra.png", bgra), ("2-bgr.png", bgr)):
        cv2.imwrite(str(folder / name), image)
    assert cv2.imread(str(folder / "0-gray.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    assert cv2.imread(str(folder / "1-bgra.png"), cv2.IMREAD_UNCHANGED).shape[2] == 4

    summary = produce(settings, [CameraSettings(id="mixed", source=str(folder))])
    frames = frames_of(settings, expect=3)

    assert summary.cameras[0].sent == 3
    decoded = [decode_jpeg(record.value) for record in frames]
    assert [image.shape for image in decoded] == [
        (100, 200, 3),
        (120, 160, 3),
        (90, 80, 3),
    ]
    for image, pixel in zip(decoded, [(200, 200, 200), (10, 120, 240), (30, 60, 90)]):
        assert np.abs(image[40, 40].astype(int) - pixel).max() <= 3, (
            image[40, 40],
            pixel,
        )


@pytest.mark.parametrize(
    ("scaling", "left", "right"),
    [("error", None, None), ("shift", 1000 >> 8, 3000 >> 8), ("minmax", 0, 255)],
)
def test_a_16_bit_png_stops_its_camera_unless_depth_scaling_converts_it(
    settings_factory, tmp_path, scaling, left, right
):
    settings = settings_factory(
        **{"producer.speed": "max", "producer.depth_scaling": scaling}
    )
    folder = tmp_path / "depth"
    folder.mkdir()
    depth = np.full((64, 128), 1000, np.uint16)
    depth[:, 64:] = 3000
    cv2.imwrite(str(folder / "depth.png"), depth)
    assert (
        cv2.imread(str(folder / "depth.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    )

    summary = produce(settings, [CameraSettings(id="depth", source=str(folder))])
    frames = frames_of(settings, expect=0 if left is None else 1)

    (stats,) = summary.cameras
    if left is None:
        assert stats.error is not None
        assert "uint16" in stats.error and "producer.depth_scaling" in stats.error
        assert (stats.read, stats.dropped, stats.sent) == (1, 1, 0)
        assert summary.failed_cameras == [stats]
        assert f"depth: stopped: {stats.error}" in summary.lines()
        assert frames == []
        return
    assert stats.error is None and stats.sent == 1
    (image,) = [decode_jpeg(record.value) for record in frames]
    assert image.shape == (64, 128, 3)
    assert abs(int(image[32, 16, 0]) - left) <= 2
    assert abs(int(image[32, 112, 0]) - right) <= 2
