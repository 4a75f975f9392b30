"""Removing what a ``make run`` (``ipledger up``, ``run --embedded``) left in a data dir.

As root the embedded cluster lives under /var/lib/ipledger, where the data dir's ``postgres``
link points (``embedded.place_cluster``): removing the data dir alone would leave it there, and
the next run from the same path would find it again. Used by the e2e tests that run ``make run``,
``ipledger up`` and ``make demo``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path


def remove_data(data: Path) -> None:
    """Stop a server a killed run left behind, then remove the data and, as root, the cluster
    its ``postgres`` link points to."""
    pointer = data / "postgres"
    pid_file = pointer / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    if pointer.is_symlink():
        shutil.rmtree(pointer.resolve(), ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
