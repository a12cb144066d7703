"""Settings: validation messages, layer precedence and secrets kept out of errors."""

from __future__ import annotations

import textwrap

import pytest

from pipeline.config import load_settings, mask_url
from pipeline.errors import ConfigError

SASL_PASSWORD = "hunter2-sasl"
CAMERA_PASSWORD = "camsecret-77"


def write_config(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "field", "expected", "got"),
    [
        pytest.param(
            "producer:\n  jpeg_qualty: 80\n",
            "producer.jpeg_qualty",
            "unknown field; expected one of",
            "jpeg_quality",
            id="misspelt field",
        ),
        pytest.param(
            "producers:\n  speed: 2\n",
            "producers",
            "unknown field; expected one of",
            "producer",
            id="unknown section",
        ),
        pytest.param(
            "topics:\n  partitions: many\n",
            "topics.partitions",
            "valid integer",
            "got 'many'",
            id="text for an integer",
        ),
        pytest.param(
            "producer:\n  jpeg_quality: 101\n",
            "producer.jpeg_quality",
            "less than or equal to 100",
            "got 101",
            id="quality out of range",
        ),
        pytest.param(
            "producer:\n  speed: fast\n",
            "producer.speed",
            "valid number",
            "got 'fast'",
            id="speed neither number nor max",
        ),
        pytest.param(
            "cameras:\n  - {id: gate, source: 'rtsp://host:99999/x'}\n",
            "cameras.0.source",
            "expected a URL with a port of 0-65535",
            "got 'rtsp://host:99999/x'",
            id="port out of range",
        ),
        pytest.param(
            "cameras:\n  - {id: gate, source: 'ftp://x'}\n",
            "cameras.0.source",
            "expected a URL of scheme rtsp, rtsps, rtmp, http, https",
            "got 'ftp://x'",
            id="unsupported scheme",
        ),
        pytest.param(
            "cameras:\n  - {id: 'gate 1', source: clip.avi}\n",
            "cameras.0.id",
            "expected 1-128 letters, digits",
            "got 'gate 1'",
            id="camera id with a space",
        ),
        pytest.param(
            "kafka:\n  security_protocol: TLS\n",
            "kafka.security_protocol",
            "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'",
            "got 'TLS'",
            id="unknown security protocol",
        ),
    ],
)
def test_an_invalid_config_names_the_field_what_was_expected_and_what_arrived(
    tmp_path, text, field, expected, got
):
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    message = str(caught.value)
    assert str(path) in message
    problem = next(line for line in message.splitlines() if f"  {field}" in line)
    assert expected in problem
    assert got in problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]\n", "expected a mapping of sections at the top, got list"),
        ("producer: {speed: [\n", "is not valid YAML"),
    ],
)
def test_a_config_file_that_is_not_a_mapping_of_sections_is_refused(
    tmp_path, text, problem
):
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    assert f"config file {path}" in str(caught.value)
    assert problem in str(caught.value)


def test_a_missing_config_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError, match=f"cannot read config file {path}"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(
            f"""\
            kafka:
              sasl_plain_password: {SASL_PASSWORD}
            cameras:
              - id: gate
                source: rtsp://admin:{CAMERA_PASSWORD}@cam.local:99999/live
            """,
            "cameras.0.source",
            id="camera URL with a bad port",
        ),
        pytest.param(
            f"""\
            kafka:
              sasl_plain_password: {SASL_PASSWORD}
            cameras:
              - source: rtsp://admin:{CAMERA_PASSWORD}@cam.local/live
            """,
            "cameras.0.id",
            id="camera without an id",
        ),
        pytest.param(
            f"""\
            kafka:
              sasl_plain_password: {SASL_PASSWORD}
            cameras:
              id: gate
              source: rtsp://admin:{CAMERA_PASSWORD}@cam.local/live
            """,
            "cameras",
            id="cameras as a mapping",
        ),
        pytest.param(
            f"""\
            kafka:
              sasl_plain_password: [{SASL_PASSWORD}]
            cameras:
              - id: gate
                source: rtsp://admin:{CAMERA_PASSWORD}@cam.local/live
            """,
            "kafka.sasl_plain_password",
            id="password of the wrong type",
        ),
        pytest.param(
            f"""\
            kafka:
              sasl_plain_password: {SASL_PASSWORD}
              sasl_mechanism: PLAIN
              bootstrap_servers: 7
            cameras:
              - id: gate
                source: rtsp://admin:{CAMERA_PASSWORD}@cam.local/live
                loop: maybe
            """,
            "cameras.0.loop",
            id="secrets beside other mistakes",
        ),
    ],
)
def test_config_errors_never_show_a_password(tmp_path, text, field):
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    message = str(caught.value)
    assert f"  {field}:" in message
    assert SASL_PASSWORD not in message
    assert CAMERA_PASSWORD not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:pw@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
        ("http://cam.local/stream.mjpg", "http://cam.local/stream.mjpg"),
        ("rtsp://admin@cam.local/live", "rtsp://admin@cam.local/live"),
    ],
)
def test_camera_urls_are_shown_with_their_password_masked(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("in_file", "in_env", "flag", "expected"),
    [
        (4, None, None, 4),
        (4, "7", None, 7),
        (4, "7", 9, 9),
        (None, "7", None, 7),
        (None, None, None, 6),
    ],
)
def test_environment_overrides_the_file_and_a_flag_overrides_both(
    tmp_path, in_file, in_env, flag, expected
):
    text = f"topics:\n  partitions: {in_file}\n" if in_file is not None else ""
    path = write_config(tmp_path, text)
    environ = {"FRAMESTREAM_TOPICS__PARTITIONS": in_env} if in_env else {}

    settings = load_settings(path, {"topics.partitions": flag}, environ=environ)

    assert settings.topics.partitions == expected


def test_an_invalid_environment_value_is_reported_as_coming_from_the_environment(
    tmp_path,
):
    path = write_config(tmp_path, "topics:\n  partitions: 4\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"FRAMESTREAM_TOPICS__PARTITIONS": "lots"})

    assert "+ environment" in str(caught.value)
    assert "topics.partitions" in str(caught.value)
    assert "got 'lots'" in str(caught.value)


def test_the_bootstrap_servers_variable_is_short_for_the_kafka_section():
    settings = load_settings(
        None,
        environ={
            "FRAMESTREAM_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
            "FRAMESTREAM_HOME": "/srv/framestream",
        },
    )

    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert not settings.uses_local_broker
