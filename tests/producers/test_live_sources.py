"""Live cameras: an HTTP MJPEG stream that goes away and comes back is reconnected,
while another camera in the same process keeps flowing."""

from __future__ import annotations

import http.server
import threading
import time

import cv2
import numpy as np
import pytest
from topic_reader import read_topic

from pipeline.config import CameraSettings
from pipeline.frames import decode_jpeg, encode_jpeg
from pipeline.messages import header_dict, is_end_of_stream
from producers.runner import produce

STREAM_FPS = 15
# How long the first camera's server stays away; the producer's read and open
# timeouts (1 s) and backoff ceiling (1 s) are well inside it.
OUTAGE_S = 4.5
# Longest silence tolerated from the camera that never stopped.
MAX_GAP_MS = 1500
BOUNDARY = b"frame"


def numbered_frame(index: int) -> np.ndarray:
    """A 320x240 frame showing its number."""
    image = np.full((240, 320, 3), (40, 90, 160), np.uint8)
    cv2.putText(
        image, str(index), (60, 160), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 3
    )
    return image


class _StreamHandler(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace: one JPEG part per frame, as IP cameras send."""

    protocol_version = "HTTP/1.0"
    server: _MjpegHttpServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header(
            "Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
        )
        self.end_headers()
        try:
            while not self.server.stopping.is_set():
                jpeg = encode_jpeg(numbered_frame(self.server.next_index()), 80)
                self.wfile.write(
                    b"--"
                    + BOUNDARY
                    + b"\r\nContent-Type: image/jpeg\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(jpeg)
                    + jpeg
                    + b"\r\n"
                )
                self.wfile.flush()
                time.sleep(1 / STREAM_FPS)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the camera hung up; it reconnects with a new request

    def log_message(self, *_args) -> None:
        pass


class _MjpegHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # the restarted server takes the same port

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _StreamHandler)
        self.stopping = threading.Event()
        self.frames_served = 0
        self._lock = threading.Lock()

    def next_index(self) -> int:
        with self._lock:
            self.frames_served += 1
            return self.frames_served - 1


class MjpegCamera:
    """An HTTP MJPEG camera on a fixed port that can be switched off and on."""

    def __init__(self) -> None:
        self._server: _MjpegHttpServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    @property
    def frames_served(self) -> int:
        return self._server.frames_served if self._server else 0

    def start(self) -> None:
        self._server = _MjpegHttpServer(self.port)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Gone: open streams are closed and the port refuses connections."""
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def wait_for_frames(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.frames_served < count:
            assert time.monotonic() < deadline, f"{self.url}: no client reads frames"
            time.sleep(0.05)


@pytest.fixture
def camera_factory():
    cameras: list[MjpegCamera] = []

    def make() -> MjpegCamera:
        camera = MjpegCamera()
        camera.start()
        cameras.append(camera)
        return camera

    yield make
    for camera in cameras:
        camera.stop()


def now_ms() -> float:
    return time.time() * 1000.0


def test_opencv_reads_an_http_multipart_mjpeg_stream(camera_factory):
    camera = camera_factory()
    capture = cv2.VideoCapture(
        camera.url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000],
    )
    try:
        assert capture.isOpened()
        images = [capture.read() for _ in range(5)]
    finally:
        capture.release()

    assert all(ok for ok, _ in images)
    assert {image.shape for _, image in images} == {(240, 320, 3)}


def test_a_live_camera_reconnects_after_its_stream_returns_while_another_flows_on(
    settings_factory, camera_factory
):
    settings = settings_factory(
        **{
            "producer.open_timeout_s": 1.0,
            "producer.read_timeout_s": 1.0,
            "producer.reconnect_initial_s": 0.2,
            "producer.reconnect_max_s": 1.0,
        }
    )
    flaky, steady = camera_factory(), camera_factory()
    cameras = [
        CameraSettings(id="flaky", source=flaky.url),
        CameraSettings(id="steady", source=steady.url),
    ]
    stop = threading.Event()
    outcome = {}
    producer = threading.Thread(
        target=lambda: outcome.update(summary=produce(settings, cameras, stop))
    )

    producer.start()
    try:
        flaky.wait_for_frames(STREAM_FPS)
        steady.wait_for_frames(STREAM_FPS)
        time.sleep(0.5)
        stopped_ms = now_ms()
        flaky.stop()
        time.sleep(OUTAGE_S)
        restarted_ms = now_ms()
        flaky.start()
        flaky.wait_for_frames(2 * STREAM_FPS)
        time.sleep(1.0)
    finally:
        stop.set()
        producer.join(timeout=30)
    assert not producer.is_alive(), "produce() did not return after stop"

    summary = outcome["summary"]
    records = read_topic(
        settings, settings.topics.frames, expect=summary.total("sent") + 2
    )
    stamps = {"flaky": [], "steady": []}
    for record in sorted(records, key=lambda record: record.offset):
        if is_end_of_stream(record.headers):
            continue
        headers = header_dict(record.headers)
        stamps[headers["camera_id"]].append(
            (int(headers["seq"]), int(headers["capture_ts_ms"]))
        )
        assert decode_jpeg(record.value).shape == (240, 320, 3)

    for stats in summary.cameras:
        assert stats.error is None
        assert stats.read == stats.sent + stats.dropped + stats.failed + stats.skipped
        assert len(stamps[stats.camera_id]) == stats.sent
        # One run, one numbering: a reconnect does not start seq again.
        assert [seq for seq, _ in stamps[stats.camera_id]] == list(range(stats.sent))
    flaky_stats, steady_stats = summary.cameras
    assert flaky_stats.reconnects >= 1
    assert steady_stats.reconnects == 0

    flaky_ms = [stamp for _, stamp in stamps["flaky"]]
    # Nothing captured while the server was away (a few buffered frames may
    # still be read just after it went), and frames again once it is back.
    assert not [t for t in flaky_ms if stopped_ms + 1000 < t < restarted_ms]
    assert len([t for t in flaky_ms if t > restarted_ms]) >= STREAM_FPS

    steady_ms = [stamp for _, stamp in stamps["steady"]]
    window = [t for t in steady_ms if stopped_ms - 1000 <= t <= restarted_ms + 1000]
    assert window[0] <= stopped_ms and window[-1] >= restarted_ms
    gaps = [later - earlier for earlier, later in zip(window, window[1:])]
    assert max(gaps) <= MAX_GAP_MS, gaps
