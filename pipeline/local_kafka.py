"""A real single-node Apache Kafka broker (KRaft, broker + controller) without Docker.

The broker jars come from Maven Central through Maven (``org.apache.kafka:kafka_2.13`` at one pinned
release plus a log4j2 SLF4J binding) into a cache outside any clone; the broker runs from them with a
small heap on free loopback ports, is ready when it logs ``Kafka Server started`` and stops on SIGTERM.

Used by the test fixture (``tests/conftest.py``), by ``driftline kafka up|down|status`` for demos, and
by the benchmarks.

>>> libs = fetch_kafka_jars(Path("~/.cache/driftline").expanduser())    # doctest: +SKIP
>>> with LocalKafkaBroker(libs, Path("/tmp/broker")) as broker:          # doctest: +SKIP
...     print(broker.bootstrap_servers)
127.0.0.1:40123
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.5"
SLF4J_VERSION = "2.0.17"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
READY_LINE = "Kafka Server started"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.driftline</groupId>
  <artifactId>local-kafka-broker</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- the broker logs through SLF4J; this binds it to log4j2 so the ready line can be read -->
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{SLF4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_PROPERTIES = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says what to do."""


def kafka_jars_dir(cache_dir: Path) -> Path:
    """Where the jars of the pinned release live inside ``cache_dir``."""
    return cache_dir / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}" / "libs"


def fetch_kafka_jars(cache_dir: Path, maven: str = "mvn") -> Path:
    """Download the pinned broker jars into ``cache_dir`` (once) and return the folder holding them.

    Idempotent and atomic: jars are copied into a temporary folder that is renamed into place only
    when Maven succeeded, so an interrupted download is never mistaken for a complete one.
    """
    libs = kafka_jars_dir(cache_dir)
    if (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").is_file():
        return libs
    if shutil.which(maven) is None:
        raise LocalKafkaError(
            f"'{maven}' not found: install Maven (and Java 17+) to fetch the Kafka broker jars, "
            "or point KAFKA_BOOTSTRAP_SERVERS / kafka.bootstrap_servers at an existing broker"
        )
    release_dir = libs.parent
    release_dir.mkdir(parents=True, exist_ok=True)
    pom = release_dir / "pom.xml"
    pom.write_text(_POM)
    staging = release_dir / f"libs.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        maven,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    log.info("fetching Apache Kafka %s broker jars with Maven into %s", KAFKA_VERSION, libs)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalKafkaError(
            f"Maven could not fetch the Kafka jars (exit {result.returncode}); is Maven Central "
            f"reachable?\n{(result.stdout + result.stderr)[-2000:]}"
        )
    if libs.exists():  # another process won the race; keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(libs)
    return libs


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def broker_properties(work_dir: Path, host: str, port: int, controller_port: int) -> str:
    """server.properties of a combined broker+controller tuned for tests: RF 1, no rebalance delay."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller_port}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={work_dir / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.segment.bytes=67108864",
            # the log cleaner allocates this at startup (default 128 MB): in a 256 MB heap it ran out of memory
            # now and then (CI, test_local_kafka); a test broker compacts only __consumer_offsets
            "log.cleaner.dedupe.buffer.size=16777216",
            "",
        ]
    )


@dataclass(frozen=True)
class BrokerState:
    """What `driftline kafka up` leaves behind so that `down` and `status` find the broker."""

    pid: int
    bootstrap_servers: str
    version: str
    work_dir: str
    log_file: str

    @classmethod
    def read(cls, path: Path) -> BrokerState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalKafkaBroker:
    """Start and stop one KRaft broker from the jars in ``libs_dir``; state and logs under ``work_dir``."""

    version = KAFKA_VERSION

    def __init__(
        self,
        libs_dir: Path,
        work_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        heap: str = "512m",
        java: str = "java",
    ) -> None:
        self.libs_dir = libs_dir
        self.work_dir = work_dir
        self.host = host
        self.port = port or free_port(host)
        self.heap = heap
        self.java = java
        self.log_file = work_dir / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            f"{self.libs_dir}/*",
            main_class,
            *args,
        ]

    def has_storage(self) -> bool:
        """True if ``work_dir`` holds formatted KRaft storage from an earlier start."""
        return (self.work_dir / "data" / "meta.properties").is_file() and (
            self.work_dir / "server.properties"
        ).is_file()

    def start(self, timeout_s: float = 90.0, *, detach: bool = False, fresh: bool = True) -> str:
        """Launch the broker and wait for its ready line; return the bootstrap address.

        ``fresh`` formats new storage (every topic and committed offset gone). With ``fresh=False`` an
        existing storage in ``work_dir`` is kept and the broker comes back with its topics and offsets
        (the same controller port; the client port is ``port``).
        """
        if shutil.which(self.java) is None:
            raise LocalKafkaError(f"'{self.java}' not found: the local Kafka broker needs Java 17 or newer")
        properties = self.work_dir / "server.properties"
        if not fresh and self.has_storage():
            stored = properties.read_text()
            controller = re.search(r"CONTROLLER://[^:,]+:(\d+)", stored)
            controller_port = int(controller.group(1)) if controller else free_port(self.host)
            properties.write_text(broker_properties(self.work_dir, self.host, self.port, controller_port))
            log.info("keeping the KRaft storage in %s (topics and committed offsets)", self.work_dir / "data")
        else:
            if self.work_dir.exists():
                shutil.rmtree(self.work_dir)
            self.work_dir.mkdir(parents=True)
            properties.write_text(broker_properties(self.work_dir, self.host, self.port, free_port(self.host)))
            fmt = subprocess.run(
                self._java_command(
                    # attached to its option: a base64url id starting with '-' (1 in 64) is not read as a flag
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(properties),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting KRaft storage failed:\n{(fmt.stdout + fmt.stderr)[-2000:]}")
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)

        started = time.monotonic()
        with self.log_file.open("wb") as log_handle:
            self.process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(properties)),
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        self._wait_until_ready(timeout_s)
        log.info(
            "Apache Kafka %s (KRaft) ready at %s after %.1fs",
            self.version,
            self.bootstrap_servers,
            time.monotonic() - started,
        )
        return self.bootstrap_servers

    def _wait_until_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if READY_LINE in self.log_file.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise LocalKafkaError(
                    f"Kafka broker exited with code {self.process.returncode} before it was ready; "
                    f"last log lines:\n{self._log_tail()}"
                )
            time.sleep(0.1)
        self.stop()
        raise LocalKafkaError(f"Kafka broker not ready after {timeout_s:.0f}s; last log lines:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker and wait for a clean shutdown; SIGKILL only if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("Kafka broker did not stop within %.0fs of SIGTERM; killing it", timeout_s)
            self.process.kill()
            self.process.wait()

    def state(self) -> BrokerState:
        assert self.process is not None, "start() first"
        return BrokerState(
            pid=self.process.pid,
            bootstrap_servers=self.bootstrap_servers,
            version=self.version,
            work_dir=str(self.work_dir),
            log_file=str(self.log_file),
        )

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_detached(state: BrokerState, timeout_s: float = 30.0) -> bool:
    """Stop a broker started with ``detach=True`` by another process; True if it was running."""
    if not process_alive(state.pid):
        return False
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(state.pid):
            return True
        time.sleep(0.2)
    os.kill(state.pid, signal.SIGKILL)
    return True
