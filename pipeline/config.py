"""Settings of a framestream deployment, validated at load.

Values come from three layers, each overriding the one before:

1. a YAML file (``configs/default.yaml`` documents every field);
2. environment variables ``FRAMESTREAM_<SECTION>__<FIELD>``, for example
   ``FRAMESTREAM_TOPICS__PARTITIONS=12``; ``FRAMESTREAM_BOOTSTRAP_SERVERS`` is
   short for ``FRAMESTREAM_KAFKA__BOOTSTRAP_SERVERS``;
3. command-line flags.

An invalid value raises :class:`~pipeline.errors.ConfigError` naming the field,
what was expected and what arrived.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from pipeline.errors import ConfigError

ENV_PREFIX = "FRAMESTREAM_"
LIVE_URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
_CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_state_dir() -> Path:
    """Folder for the local broker's jars, data and logs, and sample data."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "framestream"


class _Section(BaseModel):
    # A misspelt field is an error rather than a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    """How clients reach Kafka. Without bootstrap servers, the local broker."""

    bootstrap_servers: str | None = None
    client_id: str = "framestream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None


class BrokerSettings(_Section):
    """The local single-node broker that ``framestream broker start`` runs."""

    data_dir: Path = Field(default_factory=lambda: default_state_dir() / "broker")
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    # A few hundred MiB holds a test or demo load; raise it for many cameras.
    heap_mb: int = Field(512, ge=128)
    start_timeout_s: float = Field(60.0, gt=0)


class TopicSettings(_Section):
    """Topic names and the settings they are created with."""

    frames: str = "framestream.frames"
    results: str = "framestream.results"
    dead_letters: str = "framestream.dead-letters"
    # Several partitions so that consumers in one group can share the cameras.
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Frames are bulky and short-lived: one hour keeps replays possible
    # without filling the disk. Results are kept by the broker's default.
    frames_retention_ms: int = Field(3_600_000, ge=60_000)
    # Largest message, in bytes, on every topic and in every client. A 4K JPEG
    # at quality 90 is 1-3 MB; bigger frames are re-encoded to fit.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)


DepthScaling = Literal["error", "shift", "minmax"]


class ProducerSettings(_Section):
    """Defaults for every camera; a camera entry may override each of them."""

    jpeg_quality: int = Field(90, ge=1, le=100)
    # Longest side in pixels; larger frames are scaled down. None keeps size.
    max_side: int | None = Field(None, ge=16)
    # Frames per second to sample from the source. None sends every frame.
    fps_limit: float | None = Field(None, gt=0)
    # Replay pace of files: 1 is real time, "max" as fast as Kafka takes them.
    speed: float | Literal["max"] = 1.0
    # Image folders carry no timing: their images are paced at this rate.
    image_folder_fps: float = Field(10.0, gt=0)
    # How 16-bit and float frames become 8-bit: "error" refuses them, "shift"
    # keeps the top 8 bits (uint16) or scales [0, 1] (float), "minmax"
    # stretches each frame's own range to 0..255.
    depth_scaling: DepthScaling = "error"
    # Live sources: bounded waits so a dead camera is noticed, not waited on.
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    # Reconnect backoff doubles from initial to max after each failed attempt.
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    # Frames a live camera may have waiting for Kafka; older ones are dropped
    # (and counted) so lag stays bounded. Raising it trades lag for fewer drops.
    live_buffer_frames: int = Field(2, ge=1)
    # Kafka producer batching: a short linger fills requests without adding
    # visible latency at camera frame rates.
    linger_ms: int = Field(5, ge=0)
    # How long a frame may wait for the broker, retries included, before it
    # counts as failed. Raise it to ride out longer broker outages.
    delivery_timeout_ms: int = Field(120_000, ge=1_000)
    # Frames per camera handed to Kafka and not yet acknowledged. At the limit
    # a camera waits: a file replay slows down, a live camera drops its oldest
    # frames. Raising it rides out longer broker stalls with more memory.
    max_pending_frames: int = Field(256, ge=1)


class CameraSettings(_Section):
    """One camera feed: a video file, an image folder, a URL or a USB index."""

    id: str
    source: str
    topic: str | None = None
    loop: bool = False
    max_frames: int | None = Field(None, ge=1)
    speed: float | Literal["max"] | None = None
    fps_limit: float | None = Field(None, gt=0)
    max_side: int | None = Field(None, ge=16)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _CAMERA_ID.match(value):
            raise ValueError(
                "expected 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if "://" not in value:
            return value
        parts = urlsplit(value)
        if parts.scheme.lower() not in LIVE_URL_SCHEMES or not parts.hostname:
            raise ValueError(
                f"expected a URL of scheme {', '.join(LIVE_URL_SCHEMES)} "
                "with a host name"
            )
        try:
            parts.port
        except ValueError as err:
            raise ValueError("expected a URL with a port of 0-65535") from err
        return value


class DetectorSettings(_Section):
    """The per-frame CNN: a torchvision detection model or a TorchScript file."""

    # A name from consumers.detection.MODELS, or a path to a TorchScript file.
    model: str = "ssdlite320_mobilenet_v3_large"
    # "coco" (torchvision's published weights, downloaded and cached by
    # torchvision), a path to a state dict, or "random" (seeded; tests only).
    weights: str = "coco"
    seed: int = 0
    # Detections below this score are not published. Raising it keeps only
    # confident boxes; lowering it finds more objects and more false alarms.
    score_threshold: float = Field(0.4, ge=0, le=1)
    max_detections: int = Field(100, ge=1)
    # Frames are scaled so their longest side is at most this many pixels
    # before the model (boxes are mapped back to the original frame). None
    # hands frames over at their own size.
    input_max_side: int | None = Field(None, ge=32)


class SequenceSettings(_Section):
    """The per-camera RNN stepped once per frame."""

    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = Field(128, ge=1)
    # A checkpoint saved by consumers.sequence; None runs an untrained RNN
    # (seeded, so results are repeatable) and says so in every result.
    checkpoint: Path | None = None
    seed: int = 0
    # A camera silent for longer than this starts from a fresh state.
    reset_gap_ms: int = Field(10_000, ge=1)


class ConsumerSettings(_Section):
    """The inference consumer: batching, device, detector and RNN."""

    group: str = "framestream-inference"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Half precision on CUDA only; ignored (with a warning) on the CPU.
    fp16: bool = False
    # A batch closes at batch_size frames or max_wait_ms after its first frame,
    # whichever comes first. Larger batches keep a GPU busier at the cost of
    # latency; a shorter wait cuts latency and fills fewer batches.
    batch_size: int = Field(8, ge=1)
    max_wait_ms: int = Field(50, ge=0)
    # CPU threads for torch; None leaves torch's default (all cores).
    threads: int | None = Field(None, ge=1)
    # The consumer must poll again within this time or leave its group.
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    sequence: SequenceSettings = Field(default_factory=SequenceSettings)


class Settings(_Section):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    cameras: list[CameraSettings] = Field(default_factory=list)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)

    @property
    def uses_local_broker(self) -> bool:
        return not self.kafka.bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        if self.kafka.bootstrap_servers:
            return self.kafka.bootstrap_servers
        return f"127.0.0.1:{self.broker.port}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def load_settings(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from ``path`` < environment < ``overrides`` (dotted keys)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = _read_yaml(Path(path))
        source = str(path)

    env_values = _from_environment(os.environ if environ is None else environ)
    if env_values:
        source += " + environment"
    _deep_merge(data, env_values)

    flag_values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(flag_values, key, value)
    if flag_values:
        source += " + flags"
    _deep_merge(data, flag_values)

    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of sections at the top, "
            f"got {type(data).__name__}"
        )
    return data


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "bootstrap_servers":
            key = "kafka.bootstrap_servers"
        elif "__" in key:
            key = key.replace("__", ".")
        else:
            continue  # FRAMESTREAM_HOME and the like are not settings
        _set_dotted(values, key, value)
    return values


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    *sections, field = key.split(".")
    for section in sections:
        target = target.setdefault(section, {})
    target[field] = value


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            known = _known_fields(problem["loc"][:-1])
            expected = f"; expected one of {', '.join(known)}" if known else ""
            lines.append(f"  {field}: unknown field{expected}")
            continue
        arrived = "***" if "password" in field else _masked(problem.get("input"))
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}; got {arrived!r}")
    return "\n".join(lines)


def _masked(value: Any) -> Any:
    """``value`` fit for an error message: passwords, also nested, as ``***``.

    A whole section or camera entry arrives as the input of some errors (a
    camera without an id, cameras given as a mapping), so masking must reach
    into mappings and lists, not only the field that failed.
    """
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, Mapping):
        return {
            key: "***" if "password" in str(key) else _masked(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_masked(item) for item in value]
    return value


def _known_fields(loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (list indexes skipped)."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        # list[CameraSettings] and the like: the section is the item type.
        for inner in getattr(annotation, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                annotation = inner
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)
