"""One camera's way onto Kafka: read, sample, pace, encode, send, account.

Every frame read ends in exactly one counter of :class:`CameraStats`:
``skipped`` (left out by ``fps_limit``), ``dropped`` (too large even after
re-encoding, unreadable, or stale under the live latest-frame policy),
``failed`` (the broker did not take it; the reason is logged) or ``sent``
(acknowledged by the broker).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from pipeline.config import CameraSettings, ProducerSettings
from pipeline.errors import FrameFormatError, FramestreamError
from pipeline.frames import encode_to_fit, limit_side, to_bgr8
from pipeline.messages import FrameHeaders, end_of_stream_headers
from producers.sources import FrameSource, SourceFrame, open_source

log = logging.getLogger(__name__)


@dataclass
class CameraStats:
    camera_id: str
    read: int = 0
    skipped: int = 0
    dropped: int = 0
    failed: int = 0
    sent: int = 0
    bytes_sent: int = 0
    reencoded: int = 0
    reconnects: int = 0
    end_of_stream_sent: bool = False
    # Why the camera stopped early, if it did.
    error: str | None = None
    started_s: float = field(default_factory=time.monotonic)
    finished_s: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished_s or time.monotonic()) - self.started_s

    @property
    def unaccounted(self) -> int:
        """Frames handed to Kafka whose outcome is not known (yet)."""
        return self.read - self.skipped - self.dropped - self.failed - self.sent


class CameraPublisher:
    """Publishes one camera's frames; :meth:`run` returns when it is done."""

    def __init__(
        self,
        camera: CameraSettings,
        settings: ProducerSettings,
        producer: KafkaProducer,
        topic: str,
        max_frame_bytes: int,
        stop: threading.Event,
        progress_position: int | None = None,
    ) -> None:
        self.camera = camera
        self.settings = settings
        self.producer = producer
        self.topic = topic
        self.max_frame_bytes = max_frame_bytes
        self.stop = stop
        self.stats = CameraStats(camera.id)
        self._progress_position = progress_position
        self._lock = threading.Lock()
        self._failure_reasons: set[str] = set()
        # Sequence number of the next frame; at the end, frames handed to Kafka.
        self._seq = 0
        # kafka-python queues without bound; this caps the frames of this
        # camera in its queue, so an outage slows the camera instead of
        # filling memory.
        self._pending = threading.Semaphore(settings.max_pending_frames)

        self.speed = camera.speed if camera.speed is not None else settings.speed
        self.fps_limit = camera.fps_limit or settings.fps_limit
        self.max_side = camera.max_side or settings.max_side

    def run(self) -> CameraStats:
        try:
            source = open_source(self.camera, self.settings)
        except FramestreamError as err:
            self._stop_with(str(err))
            return self.stats
        try:
            self._publish(source)
        except FramestreamError as err:
            self._stop_with(str(err))
        except Exception as err:  # one camera's bug must not stop the others
            log.exception("camera %s: stopped by an unexpected error", self.camera.id)
            self._stop_with(f"unexpected error: {err!r}")
        finally:
            source.close()
            self.stats.dropped += source.dropped
            self.stats.reconnects = getattr(source, "reconnects", 0)
            self.stats.read += source.dropped
            self._send_end_of_stream()
            self.stats.finished_s = time.monotonic()
        return self.stats

    # --- the frame loop ------------------------------------------------------

    def _publish(self, source: FrameSource) -> None:
        stats = self.stats
        wall_start_ms = time.time() * 1000.0
        pace_start_s = time.monotonic()
        first_ms: float | None = None
        next_due_ms: float | None = None
        interval_ms = 1000.0 / self.fps_limit if self.fps_limit else 0.0
        progress = tqdm(
            total=source.expected_frames,
            desc=self.camera.id,
            unit="frame",
            position=self._progress_position,
            disable=None,  # only on a terminal
            leave=False,
        )
        try:
            for frame in source.frames(self.stop):
                stats.read += 1
                progress.update()
                if first_ms is None:
                    first_ms = frame.timestamp_ms

                if interval_ms:
                    if next_due_ms is not None and frame.timestamp_ms < next_due_ms:
                        stats.skipped += 1
                        continue
                    # Stay on the sampling grid unless the source skipped ahead.
                    due = (next_due_ms or frame.timestamp_ms) + interval_ms
                    next_due_ms = max(due, frame.timestamp_ms)

                if not source.live and self.speed != "max":
                    due_s = pace_start_s + (frame.timestamp_ms - first_ms) / (
                        1000.0 * self.speed
                    )
                    if self.stop.wait(max(0.0, due_s - time.monotonic())):
                        stats.read -= 1  # the stop came before this frame was used
                        return

                capture_ts_ms = frame.timestamp_ms
                if not source.live:
                    capture_ts_ms += wall_start_ms
                self._send_frame(frame, self._seq, int(capture_ts_ms))
                self._seq += 1
                if self.camera.max_frames and self._seq >= self.camera.max_frames:
                    return
        finally:
            progress.close()

    def _send_frame(self, frame: SourceFrame, seq: int, capture_ts_ms: int) -> None:
        try:
            image = to_bgr8(frame.image, self.settings.depth_scaling)
        except FrameFormatError as err:
            self.stats.dropped += 1
            raise FrameFormatError(f"camera {self.camera.id}: {err}") from None
        image = limit_side(image, self.max_side)
        encoded = encode_to_fit(image, self.settings.jpeg_quality, self.max_frame_bytes)
        if encoded is None:
            self.stats.dropped += 1
            log.warning(
                "camera %s: frame %d does not fit in %d bytes, even scaled; dropped",
                self.camera.id,
                seq,
                self.max_frame_bytes,
            )
            return
        if (
            encoded.width != image.shape[1]
            or encoded.quality != self.settings.jpeg_quality
        ):
            self.stats.reencoded += 1
            log.debug(
                "camera %s: frame %d re-encoded to %dx%d at quality %d to fit",
                self.camera.id,
                seq,
                encoded.width,
                encoded.height,
                encoded.quality,
            )

        headers = FrameHeaders(
            camera_id=self.camera.id,
            seq=seq,
            capture_ts_ms=capture_ts_ms,
            width=encoded.width,
            height=encoded.height,
        )
        size = len(encoded.jpeg)
        while not self._pending.acquire(timeout=0.2):
            if self.stop.is_set():
                self.stats.failed += 1
                log.warning(
                    "camera %s: stopped while Kafka was not acknowledging; frame %d "
                    "counted as failed",
                    self.camera.id,
                    seq,
                )
                return
        try:
            future = self.producer.send(
                self.topic,
                key=self.camera.id,
                value=encoded.jpeg,
                headers=headers.to_kafka(),
            )
        except KafkaError as err:
            self._count_failure(err)
            return
        future.add_callback(self._on_sent, size)
        future.add_errback(self._count_failure)

    # --- outcomes (called on kafka-python's sender thread) --------------------

    def _on_sent(self, size: int, _metadata) -> None:
        self._pending.release()
        with self._lock:
            self.stats.sent += 1
            self.stats.bytes_sent += size

    def _count_failure(self, err: BaseException) -> None:
        self._pending.release()
        reason = type(err).__name__
        with self._lock:
            self.stats.failed += 1
            first_of_kind = reason not in self._failure_reasons
            self._failure_reasons.add(reason)
        # Once per kind of failure: an outage would otherwise log every frame.
        if first_of_kind:
            log.warning(
                "camera %s: a frame failed to reach %s: %s (further failures of "
                "this kind are counted, not logged)",
                self.camera.id,
                self.topic,
                err,
            )

    def _send_end_of_stream(self) -> None:
        try:
            future = self.producer.send(
                self.topic,
                key=self.camera.id,
                value=b"",
                headers=end_of_stream_headers(self.camera.id, self._seq),
            )
        except KafkaError as err:
            log.warning("camera %s: end-of-stream not sent: %s", self.camera.id, err)
            return

        def sent(_metadata) -> None:
            self.stats.end_of_stream_sent = True

        future.add_callback(sent)
        future.add_errback(
            lambda err: log.warning(
                "camera %s: end-of-stream not sent: %s", self.camera.id, err
            )
        )

    def _stop_with(self, message: str) -> None:
        self.stats.error = message
        log.error("%s", message)
