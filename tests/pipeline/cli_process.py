"""Running the ``framestream`` command as users do: a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import Settings

FRAMESTREAM = Path(sys.executable).parent / "framestream"


def run_framestream(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess:
    """``framestream ARGS`` with only the given FRAMESTREAM_* variables set."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FRAMESTREAM_")
    }
    environ.update(env or {})
    return subprocess.run(
        [str(FRAMESTREAM), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def cli_env(settings: Settings) -> dict[str, str]:
    """FRAMESTREAM_* variables that point the command at ``settings``' topics."""
    topics = settings.topics
    return {
        "FRAMESTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "FRAMESTREAM_TOPICS__FRAMES": topics.frames,
        "FRAMESTREAM_TOPICS__RESULTS": topics.results,
        "FRAMESTREAM_TOPICS__DEAD_LETTERS": topics.dead_letters,
        "FRAMESTREAM_TOPICS__PARTITIONS": str(topics.partitions),
        "FRAMESTREAM_TOPICS__MAX_MESSAGE_BYTES": str(topics.max_message_bytes),
    }
