"""Servers run as child processes must not outlive the process that started them.

``ipledger run --embedded``, the test harness (tests/harness/) and the benchmarks (bench/) start
PostgreSQL, Kafka, etcd and the Kubernetes API server as children, each in a session (and so a
process group) of its own: a Ctrl-C meant for the parent must not reach a server before the
parent has stopped using it. The price is that nothing stops them if the parent goes away
without doing it itself. Short of SIGKILL, which nothing survives to handle, it always can:

* :func:`terminate_as_interrupt` makes SIGTERM (a CI timeout, ``kill``, a service manager) raise
  :class:`Terminated`, a ``KeyboardInterrupt``, in the main thread. Python's default would end
  the process on the spot; this way the same ``finally`` blocks, context managers, pytest
  fixture teardowns and exit hooks run as after a Ctrl-C.
* :func:`kill_group` kills a child's whole process group and, on Linux, every process below it:
  what a server started itself goes with it, also where it made groups of their own
  (PostgreSQL's backends each call ``setsid``). Then it reaps the child.

Callers start their servers with ``start_new_session=True`` and register a ``weakref.finalize``
(or ``atexit``) hook that stops them at interpreter exit, as a net under their own ``stop()``.

Against SIGKILL of the parent there is only the kernel: :func:`signal_on_parent_death` (Linux's
``PR_SET_PDEATHSIG``) has a child signalled when the thread that started it dies. ``ipledger up``
uses it for its parts (each calls :func:`end_with_supervisor` when it starts, seeing
:data:`SUPERVISOR_VARIABLE`) and for its PostgreSQL, so that a supervisor killed outright does
not leave a tree holding the API's port and the database behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised like a Ctrl-C so that everything unwinds and cleans up."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def terminate_as_interrupt() -> bool:
    """From now on, SIGTERM raises :class:`Terminated` in the main thread.

    Only replaces Python's default disposition (a handler someone else installed stays), and
    only from the main thread, where signal handlers live. Returns whether SIGTERM now raises.
    Safe to call again, e.g. after an event loop restored the default on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _raise_terminated:
        return True
    if current != signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


# The pid of the `ipledger up` that started this process; set by it in each part's environment.
SUPERVISOR_VARIABLE = "IPLEDGER_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    """libc's prctl, or None where there is none (not Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def signal_on_parent_death(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when the parent's thread that started
    it dies (Linux only; False elsewhere): first thing in a child's main. The parent must start
    such children from a thread that lives as long as they should (its main thread)."""
    prctl = _prctl()
    return prctl is not None and int(prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0


def parent_death_hook(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` doing what :func:`signal_on_parent_death` does, for a child that is not
    Python. libc is looked up here, in the parent: the hook itself makes only the one call, as
    code between fork and exec must."""
    prctl = _prctl()
    if prctl is None:
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return hook


def end_with_supervisor(env: dict[str, str] | os._Environ[str]) -> bool:
    """In a part of ``ipledger up``: be sent SIGTERM (a clean stop, :class:`Terminated`) when the
    supervisor dies, however it dies. False when it is gone already (this process should end
    at once); True otherwise, also when no supervisor started this process."""
    supervisor = env.get(SUPERVISOR_VARIABLE)
    if not supervisor or not supervisor.isdigit():
        return True
    signal_on_parent_death(signal.SIGTERM)
    # It may have died between starting this process and the call above.
    return os.getppid() == int(supervisor)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``process`` leads (``start_new_session=True``) and every
    process below it, then reap it.

    Nothing is signalled once ``process`` is reaped: until then its pid, the group's id and its
    children's parent link cannot have been given to anyone else.
    """
    if process.returncode is None:
        below = _descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # Also a child that does not lead a group after all (no group of that id existed).
        process.kill()
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    process.wait()


def _descendants(root: int) -> list[int]:
    """Pids below ``root``, by the parent links in /proc (none where there is no /proc)."""
    below: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(entry.path, "stat").read_text()
                    # "pid (command) state ppid ...": the command may contain spaces and ")".
                    parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                    below.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        pids = below.get(todo.pop(), [])
        found += pids
        todo += pids
    return found
