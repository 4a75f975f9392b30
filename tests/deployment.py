"""Shared by the deployment tests (tests/unit/test_deployment.py, tests/integration/
test_helm_chart.py): which ``IPLEDGER_*`` variables the code reads and the settings reference
documents, what a deployment file sets, and where the cached tools are.

A variable "the code reads" is one spelt as a string literal somewhere under ``service/``:
every reader (``Settings.from_env``, ``service.configuration.OPTIONS``) names its variables that
way, so a misspelt or retired name in a compose file or a chart is caught without a list kept
by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LITERAL = re.compile(r"""["'](IPLEDGER_[A-Z0-9_]+)["']""")
_DOCUMENTED = re.compile(r"`(IPLEDGER_[A-Z0-9_]+)`")


def code_variables() -> set[str]:
    """Every ``IPLEDGER_*`` name a module under service/ spells as a string literal."""
    names: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        names.update(_LITERAL.findall(path.read_text(encoding="utf-8")))
    return names


def documented_variables() -> set[str]:
    """Every ``IPLEDGER_*`` name docs/configuration.md shows in backticks."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    return set(_DOCUMENTED.findall(text))


def environment_names(env: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The variable names of a compose ``environment`` mapping or a Kubernetes ``env`` list."""
    if isinstance(env, Mapping):
        yield from env
    else:
        for item in env:
            yield item["name"]


def cached_tool(*parts: str, build: str, executable: bool = True) -> Path:
    """A binary (or, not ``executable``, a file) `make services` puts under ``$IPLEDGER_CACHE``;
    skipped (failed under CI=true) when it is missing, naming the script that makes it."""
    cache = Path(os.environ.get("IPLEDGER_CACHE") or ROOT / ".cache")
    path = cache.joinpath(*parts)
    if not os.access(path, os.X_OK if executable else os.R_OK):
        reason = f"{path} is not built: make services (bash {build})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def debian_tool(name: str) -> Path:
    """A tool `make services` installs from Debian's archive (compose/debian-tools.sh, as root);
    skipped when it is missing, failed under CI=true, where a missing tool must not pass."""
    path = installed_tool(name)
    if path is None:
        reason = f"{name} is not installed: make services (bash compose/debian-tools.sh, as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def installed_tool(*names: str) -> Path | None:
    """The first of ``names`` on PATH or in the venv running the tests, or None."""
    venv_bin = Path(sys.executable).parent
    for name in names:
        for candidate in (venv_bin / name, shutil.which(name)):
            if candidate and os.access(candidate, os.X_OK):
                return Path(candidate)
    return None
