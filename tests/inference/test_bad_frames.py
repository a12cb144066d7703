"""Frames that cannot be used go to the dead-letter topic, saying why and where
from; the good frames around them still get their results."""

import numpy as np
from inference_support import (
    RANDOM_DETECTOR,
    FrameWriter,
    frame_headers,
    labelled_image,
    read_results,
    read_to_end,
    run_worker,
)

from pipeline.frames import encode_jpeg
from pipeline.messages import header_dict

CAMERA = "cam-bad"


def bad_frames(jpeg: bytes) -> list[tuple[str, bytes, bool, str]]:
    """(case, value, with headers, what the dead-letter reason must say)."""
    noise = np.random.default_rng(7).integers(0, 256, 5000, np.uint8).tobytes()
    return [
        ("empty value", b"", True, "empty value"),
        ("first 1000 bytes", jpeg[:1000], True, "truncated"),
        ("last 2 bytes cut", jpeg[:-2], True, "truncated"),
        ("random bytes", b"\x00" + noise, True, "not a JPEG"),
        ("no headers", jpeg, False, "no headers"),
    ]


def test_each_bad_frame_is_dead_lettered_with_its_reason_and_origin(
    settings_factory,
):
    settings = settings_factory(**RANDOM_DETECTOR)
    image = labelled_image("ok")
    jpeg = encode_jpeg(image, 90)
    cases = bad_frames(jpeg)
    writer = FrameWriter(settings)

    # good 0, bad, good 1, bad, ... good 5: one camera, so one partition, in order.
    origins = {}
    for index, (case, value, with_headers, _) in enumerate(cases):
        writer.send_image(CAMERA, index, labelled_image(f"ok{index}"))
        headers = frame_headers(CAMERA, 100 + index, image) if with_headers else None
        origins[case] = writer.send(CAMERA, value, headers)
    writer.send_image(CAMERA, len(cases), labelled_image(f"ok{len(cases)}"))
    writer.close()

    stats = run_worker(settings, max_frames=2 * len(cases) + 1)
    results = read_results(settings)
    dead_letters = read_to_end(settings, settings.topics.dead_letters)

    assert stats.dead_letters == len(cases) == 5
    assert sorted(result["seq"] for result in results) == list(range(len(cases) + 1))
    assert len(dead_letters) == len(cases)
    for letter, (case, value, _, reason) in zip(dead_letters, cases, strict=True):
        headers = header_dict(letter.headers)
        partition, offset = origins[case]
        assert reason in headers["dead_letter_reason"], case
        assert headers["dead_letter_topic"] == settings.topics.frames
        assert (headers["dead_letter_partition"], headers["dead_letter_offset"]) == (
            str(partition),
            str(offset),
        ), case
        assert letter.value == value, case
        assert letter.key == CAMERA.encode()
