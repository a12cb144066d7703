"""A local single-node Apache Kafka broker (KRaft, broker and controller in one
process) on 127.0.0.1, run with the machine's JDK.

The jars come from Maven Central through ``pom.xml`` beside this file, or from
the distribution that ``KAFKA_HOME`` names. Everything the broker writes, its
config, data, logs and pid, lives in one data folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.config import BrokerSettings, default_state_dir
from pipeline.errors import BrokerError

log = logging.getLogger(__name__)

_JVM_OPTIONS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]

_LOG4J_PROPERTIES = """\
status = warn
appender.server.type = File
appender.server.name = server
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
"""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap_servers: str
    data_dir: Path

    def describe(self) -> str:
        if self.running:
            return (
                f"broker running (pid {self.pid}) at {self.bootstrap_servers}, "
                f"data in {self.data_dir}"
            )
        return f"broker not running; data folder {self.data_dir}"


class LocalBroker:
    """Installs, starts, stops and reports on one local broker."""

    def __init__(
        self,
        settings: BrokerSettings,
        max_message_bytes: int,
        kafka_home: Path | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.max_message_bytes = max_message_bytes
        home = kafka_home or os.environ.get("KAFKA_HOME")
        self.kafka_home = Path(home) if home else None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def _state_file(self) -> Path:
        # pid and ports of the running broker, so that status and stop find
        # it from the data folder alone.
        return self.data_dir / "broker.json"

    @property
    def _log_dir(self) -> Path:
        return self.data_dir / "logs"

    # --- installation -------------------------------------------------------

    def classpath(self) -> str:
        """The broker's classpath, gathering jars with Maven the first time."""
        if self.kafka_home is not None:
            libs = self.kafka_home / "libs"
            if not any(libs.glob("kafka_*.jar")):
                raise BrokerError(
                    f"KAFKA_HOME={self.kafka_home}: expected a Kafka distribution "
                    f"with jars in {libs}, found none"
                )
            return f"{libs}/*"
        return f"{install_jars()}/*"

    # --- lifecycle ----------------------------------------------------------

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        port = self._recorded().get("port", self.settings.port) if pid else None
        return BrokerStatus(
            running=pid is not None and _port_open(port),
            pid=pid,
            bootstrap_servers=f"127.0.0.1:{port}" if pid else self.bootstrap_servers,
            data_dir=self.data_dir,
        )

    def start(self) -> BrokerStatus:
        """Start the broker unless it runs; returns once it answers clients."""
        current = self.status()
        if current.running:
            return current
        if current.pid is None and _port_open(self.settings.port):
            raise BrokerError(
                f"port {self.settings.port} is taken by another program; choose "
                "another with --port or stop that program"
            )

        java = _java()
        classpath = self.classpath()
        properties = self._write_config()
        self._format_storage(java, classpath, properties)

        self._log_dir.mkdir(parents=True, exist_ok=True)
        output = open(self._log_dir / "broker.out", "ab")
        command = [
            java,
            f"-Xmx{self.settings.heap_mb}m",
            f"-Xms{min(self.settings.heap_mb, 256)}m",
            *_JVM_OPTIONS,
            f"-Dkafka.logs.dir={self._log_dir}",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(properties),
        ]
        # A session of its own: the broker outlives the command that started it
        # and does not receive the terminal's Ctrl-C.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
        self._state_file.write_text(
            json.dumps(
                {
                    "pid": process.pid,
                    "port": self.settings.port,
                    "controller_port": self.settings.controller_port,
                }
            )
        )
        log.info("starting broker (pid %d) at %s", process.pid, self.bootstrap_servers)

        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._state_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"broker exited with code {process.returncode} while starting; "
                    f"last lines of its log:\n{self._log_tail()}"
                )
            if _answers(self.bootstrap_servers):
                return self.status()
            time.sleep(0.25)
        self.stop()
        raise BrokerError(
            f"broker did not answer at {self.bootstrap_servers} within "
            f"{self.settings.start_timeout_s:.0f} s; last lines of its log:\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL); False if none ran."""
        pid = self._running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            log.warning(
                "broker pid %d ignored SIGTERM for %.0f s; killing", pid, timeout_s
            )
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self._state_file.unlink(missing_ok=True)
        log.info("broker stopped (pid %d)", pid)
        return True

    # --- internals ----------------------------------------------------------

    def _recorded(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _running_pid(self) -> int | None:
        pid = self._recorded().get("pid")
        if not isinstance(pid, int):
            return None
        return pid if _alive(pid) and _is_kafka(pid) else None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port, controller = self.settings.port, self.settings.controller_port
        limit = self.max_message_bytes
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "offsets.topic.replication.factor": "1",
            # Fewer offset partitions than the default 50: a faster first start
            # and plenty for one machine's consumer groups.
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created by framestream with frame-sized limits; an
            # auto-created topic would have the 1 MiB default and drop frames.
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(limit),
            "replica.fetch.max.bytes": str(limit),
            "socket.request.max.bytes": str(max(limit * 2, 100 * 1024 * 1024)),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J_PROPERTIES)
        return path

    def _format_storage(self, java: str, classpath: str, properties: Path) -> None:
        cluster_file = self.data_dir / "cluster.id"
        if not cluster_file.exists():
            # URL-safe base64 of 16 bytes: the form StorageTool accepts.
            raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cluster_file.write_text(raw)
        result = subprocess.run(
            [
                java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self._log_dir}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-c",
                str(properties),
                "-t",
                cluster_file.read_text().strip(),
                "--standalone",
                "-g",  # a folder formatted before is kept as it is
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"formatting broker storage in {self.data_dir} failed "
                f"(exit {result.returncode}): {result.stdout}{result.stderr}".strip()
            )

    def _log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("broker.out", "server.log"):
            path = self._log_dir / name
            if path.exists():
                text += "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]
                )
        return text or "(no log written)"


def install_jars(state_dir: Path | None = None) -> Path:
    """Gather the broker's jars with Maven into the cache; idempotent.

    The folder is named after the POM's digest, so a changed POM (a new Kafka
    version) gets fresh jars and an unchanged one costs nothing.
    """
    pom = resources.files("pipeline.broker").joinpath("pom.xml")
    pom_bytes = pom.read_bytes()
    digest = hashlib.sha256(pom_bytes).hexdigest()[:12]
    libs = (state_dir or default_state_dir()) / f"kafka-libs-{digest}"
    if (libs / ".complete").exists():
        return libs

    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is needed to fetch the Kafka broker's jars and was not "
            "found on PATH; install Maven, or set KAFKA_HOME to a Kafka distribution"
        )
    log.info("fetching Kafka broker jars with Maven into %s", libs)
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pom_copy = staging / "pom.xml"
    pom_copy.write_bytes(pom_bytes)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom_copy),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BrokerError(
            f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    pom_copy.unlink()
    (staging / ".complete").write_text(digest)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(
            "a Java runtime (17 or newer) is needed for the Kafka broker; none found "
            "on PATH or in JAVA_HOME"
        )
    return java


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not a running broker.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_kafka(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"kafka.Kafka" in cmdline


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(bootstrap_servers: str) -> bool:
    """True once the broker serves metadata, not merely accepts connections."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if not _port_open(int(bootstrap_servers.rsplit(":", 1)[1])):
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=5000
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
