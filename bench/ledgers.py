"""Built ledgers for the replay benchmark, kept between runs.

A ledger is a table log and the projection the allocator committed from it (decisions, tree
heads, every row): what ``replay --verify`` reads and checks. Building one of 1 M events means
running the allocator over it, minutes on a quiet machine and far more on a loaded one, while
the replays it is built for take a fraction of that. So a built ledger is kept under
``$IPLEDGER_CACHE/bench-replay`` (ignored by git), in a PostgreSQL server of its own, keyed by
what decides its content: the records, the partitions, and the source of the code that made the
decisions (``service/domain``, ``service/allocator``). A change to the core finds no old ledger
(whose decisions the new replay would rightly refuse); a change to the schema is brought in by
the migrations when the ledger is opened, as ``bench/api.py`` does with its database.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import asyncpg

from service.adapters.postgres import embedded, migrate

# Part of the key: a change to how a ledger is built must not find an old one.
BUILD_VERSION = "1"
_REPOSITORY = Path(__file__).resolve().parents[1]
# The code whose decisions a ledger holds.
_DECIDING = ("service/domain", "service/allocator")
# fsync off: a ledger lost with the machine is built again; a clean stop writes everything out.
_SERVER_SETTINGS = {"shared_buffers": "256MB", "max_connections": "50"}


def cache_dir() -> Path:
    """``$IPLEDGER_CACHE/bench-replay`` (default: the repository's ``.cache``)."""
    root = Path(os.environ.get("IPLEDGER_CACHE") or _REPOSITORY / ".cache")
    return root / "bench-replay"


def _system_dir() -> Path:
    """Where, as root, the ledgers' data directories live (``embedded.place_cluster``)."""
    return Path(os.environ.get("IPLEDGER_SYSTEM_DATA_DIR") or "/var/lib/ipledger") / "bench-replay"


def _remove(home: Path) -> None:
    """A kept ledger gone: its data directory too where ``home/pg`` only links to it."""
    pointer = home / "pg"
    if pointer.is_symlink():
        shutil.rmtree(pointer.resolve(), ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def ledger_key(per_partition: Mapping[int, Sequence[tuple[bytes, bytes]]], partitions: int) -> str:
    digest = hashlib.sha256(f"{BUILD_VERSION}\0{partitions}\0".encode())
    for top in _DECIDING:
        for path in sorted((_REPOSITORY / top).rglob("*.py")):
            digest.update(str(path.relative_to(_REPOSITORY)).encode() + b"\0")
            digest.update(path.read_bytes())
    for partition in sorted(per_partition):
        records = per_partition[partition]
        digest.update(b"%d\0%d\0" % (partition, len(records)))
        for key, value in records:
            digest.update(b"%d\0%s%d\0%s" % (len(key), key, len(value), value))
    count = sum(len(r) for r in per_partition.values())
    return f"{count}x{partitions}-{digest.hexdigest()[:16]}"


class Ledger:
    """A server over one built ledger (database ``ledger``), built by ``build`` the first time
    (or every time with ``rebuild``). ``start()`` returns the DSN and the build's events/s
    (None when it came from the cache); ``stop()`` stops the server."""

    def __init__(
        self,
        per_partition: Mapping[int, Sequence[tuple[bytes, bytes]]],
        partitions: int,
        build: Callable[[str], Awaitable[float]],
        *,
        rebuild: bool = False,
    ) -> None:
        self.home = cache_dir() / ledger_key(per_partition, partitions)
        self._shape = self.home.name.split("-")[0]
        self._build = build
        self._rebuild = rebuild
        self.server: embedded.EmbeddedPostgres | None = None

    def _start_server(self) -> str:
        # As root the server runs as an account of its own, which cannot enter a cache under a
        # private home (``$HOME/.cache`` with /root 0700): its data directory then lives in a
        # directory of that account's, ``home/pg`` a link to it (``embedded.place_cluster``).
        data = embedded.place_cluster(self.home / "pg", _system_dir())
        self.server = embedded.EmbeddedPostgres(
            data, fsync=False, settings=_SERVER_SETTINGS, end_with_parent=True
        )
        self.server.start()
        return self.server.dsn_for("ledger")

    async def start(self) -> tuple[str, float | None]:
        ready = self.home / "ready"
        if not self._rebuild and ready.exists():
            dsn = self._start_server()
            await migrate.upgrade(dsn)
            return dsn, None
        # One ledger of a size is kept: those of the same size built by older code go (a 1 M-event
        # ledger is about a gigabyte, and every change to the core keys a new one).
        for old in cache_dir().glob(f"{self._shape}-*"):
            _remove(old)
        self.home.mkdir(parents=True)
        self.home.chmod(0o755)  # readable by the account the server runs as, under root
        self._start_server()
        assert self.server is not None
        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute('CREATE DATABASE "ledger"')
        finally:
            await db.close()
        dsn = self.server.dsn_for("ledger")
        await migrate.upgrade(dsn)
        rate = await self._build(dsn)
        # Written last: a build stopped half way is not taken for a ledger.
        ready.write_text(f"built at {rate:.0f} events/s\n")
        return dsn, rate

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
