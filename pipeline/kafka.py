"""Kafka clients and topic admin, configured for video frames.

Every client gets the same message-size limit as the topics it is created
against (``topics.max_message_bytes``): a frame that one side accepts and
another refuses would otherwise vanish between them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.serializer import Serializer

from pipeline.config import Settings
from pipeline.errors import FramestreamError

log = logging.getLogger(__name__)

# Bytes a record adds to its value in a batch (key, headers, framing); frames
# are kept this far under the limit so the whole batch still fits.
RECORD_OVERHEAD_BYTES = 4096


class CameraKeySerializer(Serializer):
    """Message keys are camera ids: text goes out as UTF-8, bytes as they are."""

    def serialize(self, topic: str, value: str | bytes | None) -> bytes | None:
        return value.encode() if isinstance(value, str) else value


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by producers, consumers and the admin."""
    kafka = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        # kafka-python doubles its reconnect wait up to 30 s (the Java client
        # stops at 1 s): after a broker restart, frames would sit that long
        # before the first retry. 1 s notices a returning broker promptly and
        # costs one refused connection per second during an outage.
        "reconnect_backoff_max_ms": 1000,
    }
    if kafka.sasl_mechanism:
        config["sasl_mechanism"] = kafka.sasl_mechanism
        config["sasl_plain_username"] = kafka.sasl_plain_username
        if kafka.sasl_plain_password is not None:
            config["sasl_plain_password"] = kafka.sasl_plain_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(kafka, name)
        if value is not None:
            config[name] = str(value)
    if kafka.ssl_password is not None:
        config["ssl_password"] = kafka.ssl_password.get_secret_value()
    return config


def describe_connection(settings: Settings) -> str:
    """Where clients connect, for a log line: never a password."""
    kafka = settings.kafka
    text = f"{settings.bootstrap_servers} ({kafka.security_protocol}"
    if kafka.sasl_mechanism:
        text += f", SASL {kafka.sasl_mechanism} as {kafka.sasl_plain_username}"
    return text + ")"


def max_frame_bytes(settings: Settings) -> int:
    """Largest JPEG that still fits one message on the frames topic."""
    return settings.topics.max_message_bytes - RECORD_OVERHEAD_BYTES


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    producer = settings.producer
    config = client_config(settings) | {
        # acks=all with the idempotent producer: a retried send after a broker
        # outage is neither lost nor written twice.
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": producer.linger_ms,
        "max_request_size": settings.topics.max_message_bytes,
        "delivery_timeout_ms": producer.delivery_timeout_ms,
        # JPEG does not compress further; compression would only cost CPU.
        "compression_type": None,
        "key_serializer": CameraKeySerializer(),
    }
    return KafkaProducer(**(config | overrides))


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> KafkaConsumer:
    limit = settings.topics.max_message_bytes
    config = client_config(settings) | {
        "max_partition_fetch_bytes": limit,
        "fetch_max_bytes": max(limit, 50 * 1024 * 1024),
        "enable_auto_commit": False,
        "auto_offset_reset": "latest",
    }
    return KafkaConsumer(*topics, **(config | overrides))


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Per-topic settings; every topic carries the clients' message limit."""
    topics = settings.topics
    limit = str(topics.max_message_bytes)
    return {
        topics.frames: {
            "max.message.bytes": limit,
            "retention.ms": str(topics.frames_retention_ms),
        },
        topics.results: {"max.message.bytes": limit},
        topics.dead_letters: {"max.message.bytes": limit},
    }


def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Create the missing framestream topics; returns the names created.

    ``names`` limits the work to some topics; a name that is not one of the
    configured three (a ``--topic`` flag, say) gets the frames topic's settings.
    """
    configs = topic_configs(settings)
    wanted = list(configs) if names is None else list(dict.fromkeys(names))
    admin = KafkaAdminClient(**client_config(settings))
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name=name,
                num_partitions=settings.topics.partitions,
                replication_factor=settings.topics.replication_factor,
                topic_configs=configs.get(name, configs[settings.topics.frames]),
            )
            for name in wanted
            if name not in existing
        ]
        if not missing:
            return []
        try:
            admin.create_topics(missing, timeout_ms=30_000)
        except TopicAlreadyExistsError:
            pass  # another process created it between our look and our create
        except KafkaError as err:
            raise FramestreamError(
                f"cannot create topics {[t.name for t in missing]}: {err}"
            ) from err
        created = [topic.name for topic in missing]
        log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()
