"""Where frames come from: video files, image folders and live cameras.

Each source yields :class:`SourceFrame` objects with the source's own
timestamp: the presentation time for files, the frame's index over a nominal
rate for image folders, and the wall clock at capture for live cameras.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import CameraSettings, ProducerSettings, mask_url
from pipeline.errors import SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
}


@dataclass(frozen=True)
class SourceFrame:
    image: np.ndarray
    # Milliseconds: from the start of the file for recorded sources, since the
    # epoch for live ones (see ``FrameSource.live``).
    timestamp_ms: float


class FrameSource:
    """A stream of frames; iterate with :meth:`frames` until it ends or stops."""

    live = False
    # Frames the source itself had to let go of: unreadable images, or stale
    # live frames under the latest-frame policy.
    dropped = 0
    # Frames a full pass holds, where known (for progress bars).
    expected_frames: int | None = None

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_source(camera: CameraSettings, producer: ProducerSettings) -> FrameSource:
    """The source a camera entry names; SourceError when it cannot be opened."""
    source = camera.source
    if "://" in source:
        return LiveSource(source, producer)
    if source.isdigit():
        return LiveSource(int(source), producer)
    path = Path(source).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, producer.image_folder_fps, camera.loop)
    if path.is_file():
        return VideoFileSource(path, camera.loop)
    raise SourceError(
        f"camera {camera.id}: source {source!r} is not a video file, an image "
        "folder, a URL or a USB device index (no such file or folder)"
    )


class VideoFileSource(FrameSource):
    """A recorded video, decoded by OpenCV (FFmpeg), optionally looped."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = path
        self.loop = loop
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise SourceError(
                f"cannot open {path} as a video: expected a file OpenCV can decode"
            )
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.expected_frames = count if count > 0 and not loop else None

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        frame_ms = 1000.0 / self.fps
        # Each loop continues the timeline where the last one ended, so
        # timestamps keep increasing across loops.
        offset_ms = 0.0
        while not stop.is_set():
            index = 0
            last_ms = -frame_ms
            while not stop.is_set():
                ok, image = self._capture.read()
                if not ok:
                    break
                position = self._capture.get(cv2.CAP_PROP_POS_MSEC)
                # Some containers report no timestamps: fall back to the index.
                stamp = position if position > last_ms else index * frame_ms
                last_ms = stamp
                index += 1
                yield SourceFrame(image, offset_ms + stamp)
            if not self.loop or index == 0:
                return
            offset_ms += last_ms + frame_ms
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource(FrameSource):
    """Images in a folder, in name order, paced at a nominal frame rate."""

    def __init__(self, folder: Path, fps: float, loop: bool = False) -> None:
        self.paths = sorted(
            path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise SourceError(
                f"image folder {folder} holds no images; expected files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        self.fps = fps
        self.loop = loop
        self.expected_frames = None if loop else len(self.paths)

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        index = 0
        while not stop.is_set():
            for path in self.paths:
                if stop.is_set():
                    return
                # UNCHANGED keeps 16-bit and alpha images as they are, so that
                # depth handling is explicit rather than OpenCV's silent cast.
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if image is None:
                    self.dropped += 1
                    log.warning("cannot read image %s; counted as dropped", path)
                    continue
                yield SourceFrame(image, index * 1000.0 / self.fps)
                index += 1
            if not self.loop:
                return


class LiveSource(FrameSource):
    """An RTSP/HTTP stream or a USB camera, read on a thread of its own.

    Reads have bounded timeouts; after an outage the camera is reopened with
    a backoff doubling up to ``reconnect_max_s``. Only the newest
    ``live_buffer_frames`` frames wait for Kafka: when the producer falls
    behind, older frames are dropped and counted, so lag stays bounded.
    """

    live = True

    def __init__(self, address: str | int, settings: ProducerSettings) -> None:
        self.address = address
        self.name = mask_url(address) if isinstance(address, str) else f"USB {address}"
        self.settings = settings
        self.reconnects = 0
        self._buffer: deque[SourceFrame] = deque()
        self._ready = threading.Condition()
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        self._reader = threading.Thread(
            target=self._read_forever, name=f"camera-{self.name}", daemon=True
        )
        self._reader.start()
        while not stop.is_set() and not self._closed.is_set():
            with self._ready:
                if not self._buffer:
                    # Short waits so that a stop request is seen promptly.
                    self._ready.wait(timeout=0.2)
                if not self._buffer:
                    continue
                frame = self._buffer.popleft()
            yield frame

    def close(self) -> None:
        self._closed.set()
        with self._ready:
            self._ready.notify_all()
        if self._reader is not None:
            self._reader.join(timeout=self.settings.open_timeout_s + 5)

    def _open(self) -> cv2.VideoCapture:
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.settings.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.settings.read_timeout_s * 1000),
        ]
        backend = cv2.CAP_FFMPEG if isinstance(self.address, str) else cv2.CAP_ANY
        return cv2.VideoCapture(self.address, backend, timeouts)

    def _read_forever(self) -> None:
        backoff_s = self.settings.reconnect_initial_s
        first = True
        while not self._closed.is_set():
            capture = self._open()
            if not capture.isOpened():
                capture.release()
                problem = "cannot connect"
            else:
                if not first:
                    self.reconnects += 1
                    log.warning("camera %s: reconnected", self.name)
                first = False
                got_frame = self._read_until_failure(capture)
                capture.release()
                if got_frame:
                    # A stream that delivered frames earns a prompt retry.
                    backoff_s = self.settings.reconnect_initial_s
                problem = "stream lost"
            if self._closed.is_set():
                return
            log.warning(
                "camera %s: %s; retrying in %.1f s", self.name, problem, backoff_s
            )
            self._closed.wait(backoff_s)
            backoff_s = min(backoff_s * 2, self.settings.reconnect_max_s)

    def _read_until_failure(self, capture: cv2.VideoCapture) -> bool:
        got_frame = False
        limit = self.settings.live_buffer_frames
        while not self._closed.is_set():
            ok, image = capture.read()
            if not ok or image is None:
                return got_frame
            got_frame = True
            frame = SourceFrame(image, time.time() * 1000.0)
            with self._ready:
                if len(self._buffer) >= limit:
                    self._buffer.popleft()
                    self.dropped += 1
                self._buffer.append(frame)
                self._ready.notify()
        return got_frame
