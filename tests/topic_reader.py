"""Reading a whole topic back, for assertions against what was produced."""

from __future__ import annotations

import time

from kafka import TopicPartition

from pipeline.config import Settings
from pipeline.kafka import make_consumer


def read_topic(
    settings: Settings,
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 60.0,
) -> list:
    """Every record of ``topic`` from the beginning, in partition order.

    Returns once ``expect`` records arrived (if given) or after ``idle_s``
    seconds without a new one; ``timeout_s`` bounds the whole wait.
    """
    consumer = make_consumer(settings, consumer_timeout_ms=200)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            before = len(records)
            records.extend(consumer)
            if len(records) > before:
                last_new = time.monotonic()
            if expect is not None and len(records) >= expect:
                break
            if time.monotonic() - last_new > idle_s:
                break
        return records
    finally:
        consumer.close()
