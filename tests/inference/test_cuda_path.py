"""The CUDA path: decoding on the GPU and half-precision inference.

Skipped on machines without a CUDA device, except the batch decoder's
handling of a bad frame, which runs on the CPU as well."""

import numpy as np
import pytest
import torch
from inference_support import (
    RANDOM_DETECTOR,
    FrameWriter,
    frame_headers,
    labelled_image,
    read_frames,
    read_results,
)

from consumers.decoding import FrameRecord, decode_on_cuda
from consumers.worker import InferenceWorker
from pipeline.config import CameraSettings
from pipeline.errors import MessageError
from pipeline.frames import decode_jpeg, encode_jpeg
from pipeline.messages import parse_frame_headers
from producers.runner import produce

requires_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_worker_on_cuda_in_fp16_gives_a_result_for_every_frame(
    settings_factory, clip_factory
):
    settings = settings_factory(
        **RANDOM_DETECTOR, **{"consumer.device": "cuda", "consumer.fp16": True}
    )
    clip = clip_factory(frames=20, width=320, height=240)
    produce(settings, [CameraSettings(id="cam-cuda", source=str(clip), speed="max")])

    worker = InferenceWorker(settings, max_frames=20, idle_timeout_s=30.0)
    stats = worker.run()
    results = read_results(settings)

    assert worker.device.type == "cuda" and worker.detector.fp16
    assert sorted(result["seq"] for result in results) == list(range(20))
    assert stats.results_out == 20 and stats.dead_letters == 0


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=requires_cuda), "cpu"])
def test_batch_decoding_refuses_a_truncated_jpeg_and_decodes_the_rest(
    settings_factory, device
):
    settings = settings_factory()
    images = [labelled_image(f"gpu{index}") for index in range(3)]
    truncated = encode_jpeg(images[1], 90)[:1000]
    writer = FrameWriter(settings)
    writer.send_image("cam-gpu", 0, images[0])
    writer.send("cam-gpu", truncated, frame_headers("cam-gpu", 1, images[1]))
    writer.send_image("cam-gpu", 2, images[2])
    writer.close()
    # Straight to the decoder: the worker's own checks would refuse the
    # truncated frame before it reached the GPU.
    frames = [
        FrameRecord(record, parse_frame_headers(record.headers))
        for record in read_frames(settings)
    ]

    decoded = decode_on_cuda(frames, torch.device(device))

    assert [frame.headers.seq for frame in frames] == [0, 1, 2]
    assert isinstance(decoded[1], MessageError)
    for index in (0, 2):
        image = decoded[index]
        assert isinstance(image, torch.Tensor)
        assert image.device.type == device and image.dtype == torch.uint8
        assert tuple(image.shape) == (3, 240, 320)
        # GPU and CPU decoders may round differently, never by much.
        on_cpu = decode_jpeg(frames[index].record.value)[:, :, ::-1]
        difference = image.permute(1, 2, 0).cpu().numpy().astype(np.int16) - on_cpu
        assert np.abs(difference).mean() < 2.0
