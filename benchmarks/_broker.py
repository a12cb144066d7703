"""A throwaway local broker on free ports for a benchmark run."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path

from pipeline.broker import LocalBroker
from pipeline.config import BrokerSettings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def temporary_broker(max_message_bytes: int):
    with tempfile.TemporaryDirectory(prefix="framestream-bench-") as folder:
        settings = BrokerSettings(
            data_dir=Path(folder), port=_free_port(), controller_port=_free_port()
        )
        broker = LocalBroker(settings, max_message_bytes)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
