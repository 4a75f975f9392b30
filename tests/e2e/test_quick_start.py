"""README.md's quick start, exactly as written, on a fresh clone under a private directory.

The commands are read from the file (the fenced blocks of its "Quick start" section), so the
README cannot drift from what works. The repository is cloned into a ``mktemp -d``-style 0700
directory, and then, as a newcomer would: the first block (``make run``, which creates the venv)
is started and left running; once it says it runs, each line of the second block is run in
another shell, in order; Ctrl-C goes to ``make run``'s process group, as a terminal sends it; the
blocks after it (no service needed) are run; ``make run`` is started again, and the state must
be what it was (it continued, nothing was configured again), then stopped again. After each stop
nothing it started may be left running.

Run as root (the server's account cannot enter the clone: the cluster goes to
/var/lib/ipledger, linked from .data) and as an unprivileged account (``nobody``, with a home of
its own under the private directory; when the tests are not run as root, as the current user).

The one liberty taken with the commands: a read command that fails is run again until it
succeeds or a deadline passes, as a person would, since the sync worker writes its files a
moment after the allocator has applied the events. Commands that append are run exactly once.
If 127.0.0.1:8080 is taken on this machine, the API is moved to a free port through
``IPLEDGER_API_ADDRESS`` and the commands' URLs with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import waiting
from tests.e2e.embedded_data import remove_data

REPO = Path(__file__).resolve().parents[2]
API = "127.0.0.1:8080"
# `make run` on a fresh clone creates the venv first: pip downloads and installs everything.
START_TIMEOUT_S = 900
READ_RETRY_S = 60


def quick_start_blocks(readme: str) -> list[list[str]]:
    """The command lines of each fenced block of the "Quick start" section, in order."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def test_the_readme_has_a_quick_start_of_the_expected_shape() -> None:
    blocks = quick_start_blocks((REPO / "README.md").read_text())
    assert blocks[0] == ["make run"]
    assert any("append" in line for line in blocks[1])
    assert any("state --wait-caught-up" in line for line in blocks[1])


def port_taken(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                parents.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@dataclass
class Newcomer:
    """Someone with a fresh clone in a private directory, and the shells they type into."""

    clone: Path
    account: pwd.struct_passwd | None  # None: this process's own
    env: dict[str, str]
    substitutions: dict[str, str] = field(default_factory=dict)

    def _as_account(self) -> dict[str, object]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def line(self, text: str) -> str:
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def shell(self, command: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.line(command)],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self._as_account(),  # type: ignore[arg-type]
        )

    def start(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-c", self.line(command)],
                cwd=self.clone,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A terminal's foreground process group: Ctrl-C is sent to all of it.
                start_new_session=True,
                **self._as_account(),  # type: ignore[arg-type]
            )


def wait_running(process: subprocess.Popen[bytes], log: Path) -> str:
    def running() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")[-6000:]
        return "Ctrl-C stops everything" in log.read_text(errors="replace")

    waiting.until_blocking(
        running,
        timeout=START_TIMEOUT_S,
        what=lambda: "make run to say it runs\n" + log.read_text(errors="replace")[-4000:],
        interval=0.5,
    )
    return log.read_text(errors="replace")


def ctrl_c(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGINT to the process group, as a terminal's Ctrl-C; then nothing it started may live."""
    tree = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)
    waiting.until_blocking(
        lambda: not [pid for pid in tree if alive(pid)],
        timeout=60,
        what=lambda: "every process make run started to stop\n" + log.read_text()[-4000:],
        interval=0.1,
    )
    text = log.read_text(errors="replace")
    assert "stopped: " in text, text[-4000:]
    assert "Traceback" not in text, text[-6000:]


def run_read(newcomer: Newcomer, command: str) -> subprocess.CompletedProcess[str]:
    """Run a read command until it succeeds (a person would run it again)."""
    results: list[subprocess.CompletedProcess[str]] = []

    def succeeded() -> bool:
        results.append(newcomer.shell(command))
        return results[-1].returncode == 0

    waiting.until_blocking(
        succeeded,
        timeout=READ_RETRY_S,
        what=lambda: f"{command!r} to succeed; last: {results[-1].stdout}{results[-1].stderr}",
        interval=0.5,
    )
    return results[-1]


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        for pid in descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(params=["root", "unprivileged"])
def newcomer(request: pytest.FixtureRequest) -> Iterator[Newcomer]:
    as_root = request.param == "root"
    if as_root and os.geteuid() != 0:
        pytest.skip("the quick start as root needs root")
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 and not as_root else None
    system = Path("/var/lib/ipledger")
    before = set(system.iterdir()) if system.is_dir() else set()
    private = Path(tempfile.mkdtemp(prefix="ipledger-newcomer-"))  # 0700, as mktemp -d
    clone = private / "ipledger"
    home = private / "home"
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
        home.mkdir()
        if account is not None:
            for path in (private, *private.rglob("*")):
                os.lchown(path, account.pw_uid, account.pw_gid)
        path = os.environ.get("PATH", "/usr/bin:/bin") if account is None else "/usr/bin:/bin"
        env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(private)}
        found = Newcomer(clone, account, env)
        if port_taken(API):
            moved = f"127.0.0.1:{free_port()}"
            env["IPLEDGER_API_ADDRESS"] = moved
            found.substitutions[API] = moved
        yield found
    finally:
        remove_data(clone / ".data")
        shutil.rmtree(private, ignore_errors=True)
        # As root, the copy of the clone venv's PostgreSQL binaries went there too.
        for left in set(system.iterdir()) - before if system.is_dir() else ():
            if left.name.startswith("ipledger-pginstall-"):
                shutil.rmtree(left, ignore_errors=True)


def test_the_quick_start_works_on_a_fresh_clone_as_written(newcomer: Newcomer) -> None:
    blocks = quick_start_blocks((newcomer.clone / "README.md").read_text())
    server, in_another_shell, *without_services = blocks
    (start,) = server
    log = newcomer.clone.parent / "make-run-1.log"
    first = newcomer.start(start, log)
    try:
        banner = wait_running(first, log)
        if os.geteuid() == 0 and newcomer.account is None:
            assert "/var/lib/ipledger/" in banner and "(linked from " in banner
        outputs: dict[str, str] = {}
        for command in in_another_shell:
            if " append " in command:
                result = newcomer.shell(command)
            else:
                result = run_read(newcomer, command)
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
            assert result.stdout.strip(), command
            outputs[command] = result.stdout
        ctrl_c(first, log)
    finally:
        kill_tree(first)
    (state_command,) = [c for c in in_another_shell if "state --wait-caught-up" in c]
    state = json.loads(outputs[state_command])
    assert state["clusters"]["default"]["nodes"], state
    # The private directories kept their modes.
    assert newcomer.clone.parent.stat().st_mode & 0o777 == 0o700

    for block in without_services:
        for command in block:
            result = newcomer.shell(command)
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"

    # make run again: it continues where it stopped.
    log = newcomer.clone.parent / "make-run-2.log"
    second = newcomer.start(start, log)
    try:
        banner = wait_running(second, log)
        assert "configured Cilium's Helm default pool" not in banner
        again = newcomer.shell(state_command)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == state
        ctrl_c(second, log)
    finally:
        kill_tree(second)
