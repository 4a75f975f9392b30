"""Run a command and report every process it leaves behind, found by ancestry, not by name.

    python -m tests.e2e.subreaper [--term-at-groups N] [--timeout S] -- COMMAND...

Linux only. This process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): every
process COMMAND starts, however deep and in whatever session or process group, is re-parented
to it instead of to init when its own parent goes. So once COMMAND has exited, whatever still
runs below this process was left behind by COMMAND, and nothing else on the machine (parallel
test runs, other people's servers) can be mistaken for it.

With ``--term-at-groups N``, COMMAND gets a SIGTERM (to its pid alone, as a CI runner or ``kill``
sends it) as soon as it has processes below it in N process groups other than its own: servers
are started in sessions of their own, so that is N servers started (not necessarily ready).

Prints one JSON object on stdout: COMMAND's exit status, whether the SIGTERM was sent, the
processes below COMMAND when it was, and the survivors (pid, process group, command line).
Survivors are killed afterwards, whole groups, so that a failed check leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
# Stopping servers is the command's job, which it must have finished when it exits; the grace
# only covers processes that were killed and have not been reaped yet.
GRACE_S = 3.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """``(parent pid, state, process group)`` of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


def descendants(root: int) -> list[dict[str, Any]]:
    """Every living (not zombie) process below ``root``, by parent links in /proc."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            info[int(entry)] = stat
            children.setdefault(stat[0], []).append(int(entry))
    found: list[dict[str, Any]] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        _, state, group = info[pid]
        if state != "Z":
            found.append({"pid": pid, "pgid": group, "cmdline": _cmdline(pid)})
    return sorted(found, key=lambda p: p["pid"])


def groups_apart(processes: list[dict[str, Any]], pid: int) -> set[int]:
    """The process groups among ``processes`` other than the one ``pid`` is in."""
    stat = _stat(pid)
    return {p["pgid"] for p in processes} - {stat[2] if stat else os.getpgrp()}


def reap() -> None:
    """Collect re-parented children that have exited, so they stop showing as processes."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.subreaper")
    parser.add_argument(
        "--term-at-groups", type=int, help="SIGTERM COMMAND once N groups of its own run below it"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds COMMAND may take")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    become_subreaper()
    me = os.getpid()
    # COMMAND's output goes to our stderr: stdout carries only the report.
    process = subprocess.Popen(command, stdout=sys.stderr)
    deadline = time.monotonic() + args.timeout
    terminated = False
    below_at_term: list[dict[str, Any]] = []
    timed_out = False
    while process.poll() is None:
        if time.monotonic() > deadline:
            timed_out = True
            process.kill()
            process.wait()
            break
        if args.term_at_groups and not terminated:
            below = descendants(process.pid)
            if len(groups_apart(below, process.pid)) >= args.term_at_groups:
                below_at_term = below
                process.send_signal(signal.SIGTERM)
                terminated = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)
    give_up = time.monotonic() + GRACE_S
    while True:
        reap()
        survivors = descendants(me)
        if not survivors or time.monotonic() > give_up:
            break
        time.sleep(0.05)
    for survivor in survivors:
        # Not the group this process shares with whoever started it (pytest).
        if survivor["pgid"] != os.getpgrp():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(survivor["pgid"], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(survivor["pid"], signal.SIGKILL)
    reap()
    report = {
        "returncode": process.returncode,
        "timed_out": timed_out,
        "terminated": terminated,
        "below_at_term": below_at_term,
        "survivors": survivors,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
