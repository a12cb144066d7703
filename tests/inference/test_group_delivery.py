"""Consumer-group delivery: a slow model keeps its group membership, and a
worker stopped mid-stream hands over without losing a frame."""

import threading
import time

from inference_support import (
    CPU,
    RANDOM_DETECTOR,
    FrameWriter,
    labelled_image,
    read_results,
    read_to_end,
    start_worker,
    unique_frames,
)

from consumers.detection import DetectorOutput, build_detector
from consumers.worker import InferenceWorker

PARTITIONS = 4


class SlowDetector:
    """A real detector that takes ``seconds_per_frame`` longer per frame."""

    def __init__(self, detector, seconds_per_frame: float) -> None:
        self._detector = detector
        self.seconds_per_frame = seconds_per_frame
        for name in (
            "name",
            "weights",
            "device",
            "num_classes",
            "vector_size",
            "label_names",
            "feature_dim",
        ):
            setattr(self, name, getattr(detector, name))

    def __call__(self, frames) -> DetectorOutput:
        time.sleep(self.seconds_per_frame * len(frames))
        return self._detector(frames)


def write_frames(settings, cameras: list[str], frames_per_camera: int) -> set:
    """Frames of each camera, camera i on partition i; their (camera, seq)."""
    writer = FrameWriter(settings)
    for seq in range(frames_per_camera):
        for partition, camera_id in enumerate(cameras):
            image = labelled_image(f"{camera_id} {seq}")
            writer.send_image(camera_id, seq, image, partition)
    writer.close()
    return {
        (camera_id, seq) for camera_id in cameras for seq in range(frames_per_camera)
    }


def test_two_workers_with_a_one_second_model_commit_every_batch_and_miss_no_frame(
    settings_factory,
):
    # A batch of 4 frames at 1 s each fits well inside the lowest poll
    # interval allowed (10 s); a worker that took more than a batch between
    # polls would leave the group and fail its commits (as it does at 3 s).
    settings = settings_factory(
        **RANDOM_DETECTOR,
        **{
            "topics.partitions": PARTITIONS,
            "consumer.max_poll_interval_ms": 10_000,
        },
    )
    cameras = [f"cam-{partition}" for partition in range(PARTITIONS)]
    frames = write_frames(settings, cameras, frames_per_camera=15)

    stop = threading.Event()
    workers = [
        InferenceWorker(
            settings,
            detector=SlowDetector(build_detector(settings.consumer.detector, CPU), 1.0),
            idle_timeout_s=30.0,
            stop=stop,
        )
        for _ in range(2)
    ]
    threads = [start_worker(worker) for worker in workers]
    # Once every frame is taken, stop: each worker ends its batch and leaves.
    # A frame taken twice leaves another untaken, and the assertions say so.
    deadline = time.monotonic() + 150
    while (
        sum(worker.stats.frames_in for worker in workers) < len(frames)
        and any(thread.is_alive() for thread in threads)
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    results = read_results(settings)

    assert not any(thread.is_alive() for thread in threads)
    assert [worker.stats.commit_failures for worker in workers] == [0, 0]
    # Both shared the load: with one worker idle this test proves nothing.
    assert all(worker.stats.results_out >= 8 for worker in workers)
    assert unique_frames(results) == frames
    assert sum(worker.stats.dead_letters for worker in workers) == 0


def test_a_worker_stopped_mid_stream_leaves_the_rest_to_the_next_one(
    settings_factory,
):
    settings = settings_factory(**RANDOM_DETECTOR)
    frames = write_frames(settings, ["cam-x", "cam-y"], frames_per_camera=20)
    stop = threading.Event()

    first = InferenceWorker(settings, stop=stop, idle_timeout_s=30.0)
    thread = start_worker(first)
    deadline = time.monotonic() + 120
    while first.stats.results_out < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=60)
    # No frame count here: the second worker reads until the topic runs dry,
    # so a frame it read again would show in its count.
    second = InferenceWorker(settings, idle_timeout_s=6.0)
    second.run()
    results = read_results(settings)

    assert 20 <= first.stats.results_out < len(frames)
    # Nothing committed was read again, nothing uncommitted was skipped.
    assert first.stats.frames_in + second.stats.frames_in == len(frames)
    assert unique_frames(results) == frames
    assert first.stats.dead_letters == second.stats.dead_letters == 0
    assert read_to_end(settings, settings.topics.dead_letters) == []
