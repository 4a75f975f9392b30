"""Nothing started for a run outlives it: no PostgreSQL, Kafka, etcd or API server is left behind
when a benchmark, a test session or ``ipledger run --embedded`` fails half way or gets SIGTERM.

Each case runs the real entry point under ``tests/e2e/subreaper.py``, which becomes a child
subreaper, so every process the entry point started is re-parented to it when its parent goes:
whatever still runs below it afterwards was left behind, found by ancestry and process group,
never by name (parallel runs on the machine cannot confuse it). The cases also check that the
servers were there to leave behind: the failure or the signal came half way, not before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.adapters import children
from tests import waiting
from tests.e2e.embedded_data import remove_data
from tests.harness import kafka, kube

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="child subreapers are Linux's")

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240.0


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the servers' unprivileged account can reach (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="ipledger-leftovers-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def needs_services() -> None:
    """Skip without Kafka or the API server's binaries, except under CI=true: fail then."""
    reasons = [kafka.unavailable_reason()]
    if kube.missing_binaries():
        reasons.append("Kubernetes API server binaries not built: make services")
    if not kube.crd_path().is_file():
        reasons.append(f"CiliumNode CRD missing at {kube.crd_path()}")
    reason = "; ".join(r for r in reasons if r)
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def watched(
    command: list[str],
    env: dict[str, str],
    term_at_groups: int | None = None,
    unset: tuple[str, ...] = (),
) -> tuple[dict[str, Any], str]:
    """Run ``command`` under the subreaper (``env`` added to ours, ``unset`` taken out); its
    report and the command's output."""
    args = [sys.executable, "-m", "tests.e2e.subreaper", "--timeout", str(TIMEOUT_S)]
    if term_at_groups is not None:
        args += ["--term-at-groups", str(term_at_groups)]
    result = subprocess.run(
        [*args, "--", *command],
        cwd=REPO,
        env={name: value for name, value in {**os.environ, **env}.items() if name not in unset},
        capture_output=True,
        timeout=TIMEOUT_S + 60,
        check=False,
    )
    output = result.stderr.decode(errors="replace")
    assert result.returncode == 0, output[-5000:]
    report: dict[str, Any] = json.loads(result.stdout)
    assert not report["timed_out"], output[-5000:]
    return report, output


def assert_nothing_left(report: dict[str, Any], output: str) -> None:
    assert report["survivors"] == [], (
        "left running after the command exited (killed now):\n"
        + "\n".join(
            f"  pid {p['pid']} group {p['pgid']}: {p['cmdline']}" for p in report["survivors"]
        )
        + "\n--- command output (tail):\n"
        + output[-4000:]
    )


@pytest.mark.parametrize(
    ("benchmark", "missing"),
    [("sync", "KubeHarnessError"), ("allocator", "KafkaBrokerError")],
    ids=["sync-without-an-api-server", "allocator-without-kafka"],
)
def test_a_benchmark_that_fails_half_way_stops_its_postgres(
    scratch: Path, benchmark: str, missing: str
) -> None:
    # An empty cache: PostgreSQL starts (the wheel's), then the second server cannot.
    (scratch / "cache").mkdir()
    env = {"IPLEDGER_CACHE": str(scratch / "cache"), "TMPDIR": str(scratch)}
    report, output = watched([sys.executable, "-m", "bench", "--only", benchmark, "--quick"], env)
    assert report["returncode"] != 0, output[-4000:]
    # It failed where meant to: at the second server, after PostgreSQL was up.
    assert missing in output, output[-4000:]
    assert_nothing_left(report, output)


def test_a_benchmark_terminated_while_its_servers_run_stops_them(scratch: Path) -> None:
    needs_services()
    env = {"TMPDIR": str(scratch)}
    # SIGTERM once PostgreSQL and etcd run, while the API server is being started.
    report, output = watched(
        [sys.executable, "-m", "bench", "--only", "sync", "--quick"], env, term_at_groups=2
    )
    assert report["terminated"], output[-4000:]
    assert report["returncode"] == children.Terminated.exit_code, output[-4000:]
    assert_nothing_left(report, output)


PROBE = """
import os
import threading
from pathlib import Path

import pytest


def test_with_every_server(pg_server, kafka_broker, kube_apiserver):
    Path(os.environ["IPLEDGER_PROBE_READY"]).write_text("up")
    if os.environ["IPLEDGER_PROBE"] == "fail":
        raise RuntimeError("failing half way, with every server up")
    threading.Event().wait(120)
    pytest.fail("SIGTERM did not arrive")
"""


@pytest.mark.parametrize("how", ["fail", "sigterm"])
def test_a_test_session_that_fails_or_is_terminated_stops_every_server(
    scratch: Path, how: str
) -> None:
    needs_services()
    probe = scratch / "probe"
    probe.mkdir()
    (probe / "pytest.ini").write_text("[pytest]\n")
    (probe / "test_probe.py").write_text(PROBE)
    ready = probe / "ready"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for plugin in ("signals", "postgres", "kafka", "kube"):
        command += ["-p", f"tests.harness.{plugin}"]
    command += ["-c", str(probe / "pytest.ini"), "--rootdir", str(probe)]
    command += ["--basetemp", str(probe / "tmp"), str(probe / "test_probe.py")]
    env = {"IPLEDGER_PROBE": how, "IPLEDGER_PROBE_READY": str(ready), "TMPDIR": str(scratch)}
    # SIGTERM once PostgreSQL, the Kafka JVM, etcd and the API server run (each in a group of
    # its own), while the API server is being waited for.
    report, output = watched(command, env, term_at_groups=4 if how == "sigterm" else None)
    if how == "sigterm":
        assert report["terminated"], output[-4000:]
        assert report["returncode"] == pytest.ExitCode.INTERRUPTED, output[-4000:]
    else:
        assert ready.exists(), output[-4000:]
        assert "failing half way" in output, output[-4000:]
        assert report["returncode"] == pytest.ExitCode.TESTS_FAILED, output[-4000:]
    assert_nothing_left(report, output)


def test_ipledger_run_embedded_terminated_while_its_server_starts_stops_it(scratch: Path) -> None:
    data = scratch / "data"
    try:
        report, output = watched(
            [sys.executable, "-m", "service.cli", "run", "--embedded"],
            {"IPLEDGER_DATA_DIR": str(data)},
            # SIGTERM once the server runs (initdb's helpers stay in ipledger's own group).
            term_at_groups=1,
            unset=("IPLEDGER_DATABASE_URL", "IPLEDGER_LOG", "IPLEDGER_METRICS_PORT"),
        )
    finally:
        # As root the cluster went to /var/lib/ipledger, where data/postgres points.
        remove_data(data)
    assert report["terminated"], output[-4000:]
    # Still starting: Terminated unwound it. Already running: its own handler stopped it.
    assert report["returncode"] in (children.Terminated.exit_code, 0), output[-4000:]
    assert_nothing_left(report, output)


def test_sigterm_raises_terminated_only_where_the_default_was() -> None:
    script = (
        "import signal, os\n"
        "from service.adapters import children\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "assert not children.terminate_as_interrupt()\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "assert children.terminate_as_interrupt() and children.terminate_as_interrupt()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
        "except children.Terminated:\n"
        "    print('unwound')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.strip() == b"unwound"


def test_kill_group_takes_what_the_child_started_in_sessions_of_its_own_too() -> None:
    # As PostgreSQL does: the server's own children each lead a process group of their own.
    script = (
        "import subprocess, sys, threading\n"
        "helper = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(helper.pid, flush=True)\n"
        "threading.Event().wait(300)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert server.stdout is not None
    helper = int(server.stdout.readline())
    try:
        children.kill_group(server)
        waiting.until_blocking(
            lambda: not _alive(helper),
            timeout=10,
            what=f"the server's helper {helper} to be killed with its group",
            interval=0.02,
        )
        assert server.returncode == -9
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, 9)
        server.stdout.close()


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever inherited it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
