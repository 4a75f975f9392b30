"""A real single-node Apache Kafka broker for integration tests and benchmarks.

``KafkaBroker`` runs the Kafka 4.x jars that ``compose/kafka/fetch.sh`` resolved from Maven Central
(classpath in ``$IPLEDGER_CACHE/kafka/classpath.txt``) as one KRaft node that is both broker and
controller, on free loopback ports, in its own JVM. Tests get it through the session-scoped
``kafka_broker`` fixture (registered in ``tests/conftest.py``); benchmarks import the class.

Nothing starts at import time: the broker starts when a test first asks for the fixture or when
``start()`` is called, and every JVM this module starts is stopped again, also when a test fails or
the interpreter exits early.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters import children

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG4J2_CONFIG = REPO_ROOT / "compose" / "kafka" / "log4j2.properties"
NODE_ID = 1
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 60.0

# One node is the whole cluster, so every replication factor and min ISR is 1; internal topics get
# one partition because creating 50 of them makes the first consumer-group commit take seconds.
_TEST_SPEED_PROPERTIES = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # After a kill() the controller refuses the restarted broker's registration
    # (DUPLICATE_BROKER_REGISTRATION) until the old session expires: 9 s by default.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    # Topics are created on purpose (ensure_topics); a typo must not create an empty topic.
    "auto.create.topics.enable": "false",
    # Two cores: the defaults (3 network, 8 I/O, 10 background threads) only add contention.
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    # The cleaner only serves compacted topics; its default 128 MiB buffer would dwarf the heap.
    "log.cleaner.dedupe.buffer.size": "1048577",
}


class KafkaBrokerError(RuntimeError):
    """The test Kafka broker could not be started or stopped."""


def cache_dir() -> Path:
    """Where ``make services`` caches downloads: ``$IPLEDGER_CACHE``, else ``<repo>/.cache``."""
    return Path(os.environ.get("IPLEDGER_CACHE") or REPO_ROOT / ".cache")


def classpath_file() -> Path:
    """The file ``compose/kafka/fetch.sh`` writes the broker's classpath to."""
    return cache_dir() / "kafka" / "classpath.txt"


def find_java() -> str | None:
    """The ``java`` executable: ``$JAVA_HOME/bin/java`` if set, else the one on ``PATH``."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def read_classpath() -> str | None:
    """The cached broker classpath, or None when it is missing or a jar on it has gone."""
    path = classpath_file()
    try:
        classpath = path.read_text().strip()
    except OSError:
        return None
    if not classpath or not all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
        return None
    return classpath


def unavailable_reason() -> str | None:
    """Why a broker cannot be started on this machine (one line), or None if it can."""
    if find_java() is None:
        return "Kafka broker needs Java 17+: no java on PATH or in $JAVA_HOME"
    if read_classpath() is None:
        return f"Kafka jars not fetched ({classpath_file()}): run `make services`"
    return None


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the kernel cannot hand out one twice.
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString(): 16 random bytes, URL-safe base64 without padding. Making it here
    # saves starting a JVM for `kafka-storage random-uuid`. Like Kafka's Uuid.randomUuid(), never
    # one that starts with "-": the storage tool's argument parser would read it as an option
    # (one start in 64 failed with "argument --cluster-id/-t: expected one argument").
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    # Finaliser for a broker object that was never stopped (a crashed test run, Ctrl-C, SIGTERM
    # made an exception by tests/harness/signals.py, ...): the JVM's whole process group.
    children.kill_group(process)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def _cluster_answers(bootstrap: str, timeout_s: float) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="ipledger-harness-probe",
        request_timeout_ms=max(1, int(timeout_s * 1000)),
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except Exception:
        return False
    finally:
        await admin.close()
    # The broker lists itself only once it is registered and unfenced, i.e. serving clients.
    return any(broker["node_id"] == NODE_ID for broker in cluster["brokers"])


def _accepts_connections(port: int) -> bool:
    # The broker opens its client port only once it serves requests; checking this first keeps
    # aiokafka from logging a "connection refused" error for every probe during start-up.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _probe(bootstrap: str, timeout_s: float) -> bool:
    # In a thread of its own, with its own event loop, so start() works the same from plain code,
    # from a synchronous fixture and from inside a running event loop (benchmarks).
    result: list[bool] = [False]

    def run() -> None:
        result[0] = asyncio.run(_cluster_answers(bootstrap, timeout_s))

    thread = threading.Thread(target=run, name="kafka-broker-probe", daemon=True)
    thread.start()
    thread.join()
    return result[0]


class KafkaBroker:
    """One Apache Kafka node (KRaft broker + controller) in a child JVM on 127.0.0.1.

    ``workdir`` holds ``server.properties``, the log data and ``broker.log`` (the JVM's output);
    without one a temporary directory is made and removed again by ``close()``. Ports are picked
    on the first ``start()`` and kept, so ``restart()`` brings back the same broker, same data.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        heap: str = "512m",
        ready_timeout_s: float = READY_TIMEOUT_S,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self._workdir = (
            Path(tempfile.mkdtemp(prefix="ipledger-kafka-")) if workdir is None else workdir
        )
        # Also runs at interpreter exit, after the JVM's finaliser (finalisers run newest first).
        self._remove_workdir = (
            weakref.finalize(self, _remove_tree, self._workdir) if workdir is None else None
        )
        self._heap = heap
        self._ready_timeout_s = ready_timeout_s
        self._extra_properties = dict(properties or {})
        self._ports: tuple[int, int] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], KafkaBroker] | None = None
        self.last_start_s: float | None = None
        """Seconds the last ``start()`` took, from launching the JVM to the broker answering."""

    @property
    def workdir(self) -> Path:
        """The broker's directory: configuration, data and ``broker.log``."""
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The broker JVM's stdout and stderr, across restarts."""
        return self._workdir / "broker.log"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the client listener, for ``bootstrap_servers``."""
        if self._ports is None:
            raise KafkaBrokerError("the broker has no port before its first start()")
        return f"127.0.0.1:{self._ports[0]}"

    @property
    def running(self) -> bool:
        """Whether the broker's JVM is alive (it need not be ready)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pids(self) -> frozenset[int]:
        """The JVM's process id while it runs, for the tests' leak check (tests/leaks.py)."""
        return frozenset({self._process.pid}) if self._process is not None else frozenset()

    def start(self) -> None:
        """Start the broker and return once it serves clients; a no-op if it is running.

        Formats the storage on first use. Raises ``KafkaBrokerError`` with the tail of the
        broker's log if the JVM exits or the broker does not answer within the ready timeout;
        the JVM is stopped then. Blocks for seconds: from async code, run it in a worker thread
        (``anyio.to_thread.run_sync(broker.start)``) so the event loop keeps serving clients.
        """
        if self.running:
            return
        java = find_java()
        classpath = read_classpath()
        if java is None or classpath is None:
            raise KafkaBrokerError(unavailable_reason())
        if self._ports is None:
            broker_port, controller_port = _free_ports(2)
            self._ports = (broker_port, controller_port)
        properties = self._write_properties()
        if not (self._data_dir / "meta.properties").exists():
            self._format_storage(java, classpath, properties)
        began = time.monotonic()
        self._launch(java, classpath, properties)
        try:
            self._wait_until_ready()
        except BaseException:
            self.kill()
            raise
        self.last_start_s = time.monotonic() - began

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut the broker down cleanly (SIGTERM) and wait; SIGKILL if it takes over timeout_s."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                children.kill_group(process)
        self._forget_process()

    def kill(self) -> None:
        """Kill the broker's JVM at once (SIGKILL), as a crash would; data stays for restart()."""
        process = self._process
        if process is not None:
            children.kill_group(process)
        self._forget_process()

    def restart(self) -> None:
        """Stop the broker cleanly and start it again on the same ports with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its directory if this object created it."""
        self.stop()
        if self._remove_workdir is not None:
            self._remove_workdir()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of ``broker.log``, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _data_dir(self) -> Path:
        return self._workdir / "data"

    def _write_properties(self) -> Path:
        assert self._ports is not None
        broker_port, controller_port = self._ports
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            # A static voter set needs no --standalone/--initial-controllers at format time and
            # survives restarts unchanged, because the ports are kept.
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._data_dir),
            **_TEST_SPEED_PROPERTIES,
            **self._extra_properties,
        }
        self._workdir.mkdir(parents=True, exist_ok=True)
        path = self._workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        return path

    def _format_storage(self, java: str, classpath: str, properties: Path) -> None:
        # A short-lived JVM: C1 only and the serial collector start fastest.
        command = [
            java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _new_cluster_id(),
            "--config",
            str(properties),
            "--ignore-formatted",
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaBrokerError(
                f"kafka.tools.StorageTool format took over {FORMAT_TIMEOUT_S:.0f} s"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise KafkaBrokerError(
                f"kafka.tools.StorageTool format failed (exit {result.returncode}):\n{output}"
            )

    def _launch(self, java: str, classpath: str, properties: Path) -> None:
        command = [
            java,
            "-Xms256m",
            f"-Xmx{self._heap}",
            # The flags kafka-run-class.sh uses; short GC pauses keep benchmark latencies honest.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self._workdir / 'logs'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(properties),
        ]
        log = self.log_path.open("ab")
        log.write(f"--- harness: starting broker on {self.bootstrap} ---\n".encode())
        log.flush()
        try:
            # A session of its own: Ctrl-C on the test run reaches pytest only, which then stops
            # the broker in order instead of racing it.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self._process = process
        self._log = log
        self._finalizer = weakref.finalize(self, _kill_quietly, process)

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if process.poll() is not None:
                raise KafkaBrokerError(
                    f"Kafka broker exited with status {process.returncode} during start-up; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if remaining <= 0:
                raise KafkaBrokerError(
                    f"Kafka broker did not answer on {self.bootstrap} within "
                    f"{self._ready_timeout_s:.0f} s; last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            assert self._ports is not None
            if _accepts_connections(self._ports[0]) and _probe(
                self.bootstrap, timeout_s=min(5.0, remaining)
            ):
                return
            # Backs off between probes and notices at once if the JVM dies meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(0.25, max(0.0, deadline - time.monotonic())))

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The session's Kafka broker, started on first use and stopped at the end of the session.

    Skips (one-line reason) when Java or the fetched jars are missing, except under ``CI=true``,
    where a missing broker is a failure: CI must not pass by skipping the integration tests.
    """
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
