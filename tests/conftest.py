"""Shared fixtures: a real Kafka broker per test session, settings and clips.

The broker is the same local broker users run (``pipeline.broker``), started on
free ports with a temporary data folder. Tests that stop and restart a broker
get one of their own (``broker_factory``) so the others are not disturbed.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.broker import LocalBroker
from pipeline.config import BrokerSettings, Settings, load_settings

# Tests use small frames; 2 MiB keeps the broker's memory small too.
TEST_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def broker_factory(tmp_path_factory) -> Iterator[Callable[..., LocalBroker]]:
    """Starts brokers on free ports; every one is stopped at session end."""
    started: list[LocalBroker] = []

    def start(max_message_bytes: int = TEST_MAX_MESSAGE_BYTES) -> LocalBroker:
        settings = BrokerSettings(
            data_dir=tmp_path_factory.mktemp("broker"),
            port=free_port(),
            controller_port=free_port(),
            heap_mb=384,
            start_timeout_s=90,
        )
        broker = LocalBroker(settings, max_message_bytes)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop(timeout_s=30)


@pytest.fixture(scope="session")
def broker(broker_factory) -> LocalBroker:
    return broker_factory()


@pytest.fixture
def settings_factory(broker) -> Callable[..., Settings]:
    """Settings for the session broker with topics unique to the test."""

    def make(target: LocalBroker | None = None, **overrides) -> Settings:
        suffix = uuid.uuid4().hex[:8]
        values = {
            "kafka.bootstrap_servers": (target or broker).bootstrap_servers,
            "topics.frames": f"frames-{suffix}",
            "topics.results": f"results-{suffix}",
            "topics.dead_letters": f"dead-{suffix}",
            "topics.partitions": 3,
            "topics.max_message_bytes": TEST_MAX_MESSAGE_BYTES,
            "consumer.group": f"group-{suffix}",
        }
        return load_settings(None, values | overrides, environ={})

    return make


@pytest.fixture
def settings(settings_factory) -> Settings:
    return settings_factory()


def numbered_frame(index: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A frame with its number drawn large, so order and identity are visible."""
    image = np.full((height, width, 3), (40, 90, 160), np.uint8)
    cv2.rectangle(image, (10 + index % 50, 10), (60 + index % 50, 60), (0, 255, 0), -1)
    cv2.putText(
        image,
        str(index),
        (width // 4, height * 2 // 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        height / 80,
        (255, 255, 255),
        3,
    )
    return image


@pytest.fixture
def clip_factory(tmp_path) -> Callable[..., Path]:
    """Writes an MJPG AVI of numbered frames; returns its path."""

    def make(
        frames: int = 60,
        width: int = 320,
        height: int = 240,
        fps: float = 25.0,
        name: str = "clip.avi",
    ) -> Path:
        path = tmp_path / name
        writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height)
        )
        assert writer.isOpened(), "OpenCV cannot write MJPG AVI files here"
        for index in range(frames):
            writer.write(numbered_frame(index, width, height))
        writer.release()
        return path

    return make
