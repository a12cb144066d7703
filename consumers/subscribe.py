"""Follow a framestream topic and print each message as one JSON line.

Frames print as their headers and size, results as their JSON, dead letters
as their headers and size. No consumer group is joined: a subscriber reads
every partition and never moves a group's committed offsets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from kafka import TopicPartition

from pipeline.config import Settings
from pipeline.errors import ConfigError, FramestreamError
from pipeline.kafka import make_consumer
from pipeline.messages import RESULT_SCHEMA, header_dict

log = logging.getLogger(__name__)


def parse_start_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 (naive means UTC) or epoch ms digits."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--from-time: expected ISO 8601 (2026-12-03T18:00:00Z) or epoch "
            f"milliseconds, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def describe(message) -> dict:
    """A message as a JSON-ready dict."""
    headers = header_dict(message.headers)
    place = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp_ms": message.timestamp,
    }
    if headers.get("schema") == RESULT_SCHEMA or (
        not headers and message.value[:1] == b"{"
    ):
        try:
            return json.loads(message.value)
        except ValueError:
            pass  # not a result after all: shown as raw below
    key = message.key.decode("utf-8", "backslashreplace") if message.key else None
    return place | {
        "key": key,
        "headers": headers,
        "size_bytes": len(message.value or b""),
    }


def follow(
    settings: Settings,
    topic: str,
    *,
    start: str = "now",
    from_time_ms: int | None = None,
    camera: str | None = None,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[dict]:
    """Messages of ``topic`` as dicts; ends after ``max_messages``, once no
    message has come for ``timeout_s`` seconds, or when ``stop`` is set."""
    consumer = make_consumer(settings, consumer_timeout_ms=200)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise FramestreamError(
                f"topic {topic!r} does not exist on {settings.bootstrap_servers}"
            )
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        _seek(consumer, assigned, start, from_time_ms)

        count = 0
        last_message_s = time.monotonic()
        wanted_key = camera.encode() if camera else None
        while max_messages is None or count < max_messages:
            # Checked between polls too: a quiet topic must not keep Ctrl-C
            # or SIGTERM waiting for a message that may never come.
            if stop is not None and stop.is_set():
                return
            got_any = False
            for message in consumer:
                if stop is not None and stop.is_set():
                    return
                got_any = True
                if wanted_key is not None and message.key != wanted_key:
                    continue
                yield describe(message)
                count += 1
                if max_messages is not None and count >= max_messages:
                    return
            if got_any:
                last_message_s = time.monotonic()
            elif (
                timeout_s is not None and time.monotonic() - last_message_s > timeout_s
            ):
                return
    finally:
        consumer.close()


def _seek(consumer, partitions, start: str, from_time_ms: int | None) -> None:
    if from_time_ms is not None:
        found = consumer.offsets_for_times({tp: from_time_ms for tp in partitions})
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            # No message at or after the time: start at the end, i.e. wait.
            offset = found[tp].offset if found.get(tp) is not None else ends[tp]
            consumer.seek(tp, offset)
    elif start == "beginning":
        consumer.seek_to_beginning(*partitions)
    else:
        consumer.seek_to_end(*partitions)
    # Seeks are lazy in kafka-python; asking for positions pins "now" to the
    # moment the command started rather than its first poll.
    for tp in partitions:
        consumer.position(tp)
