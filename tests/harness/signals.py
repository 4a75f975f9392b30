"""SIGTERM ends a test run the way Ctrl-C does: fixtures torn down, every server stopped.

Registered through ``pytest_plugins`` in ``tests/conftest.py``. The harness starts PostgreSQL,
Kafka, etcd and the API server in sessions of their own, which a signal to pytest does not
reach. Under Python's default a SIGTERM (a CI job's timeout) ends pytest at once and leaves
them all running; with :func:`service.adapters.children.terminate_as_interrupt` it raises a
``KeyboardInterrupt``, pytest stops the session and the fixtures' teardowns stop the servers.
"""

from __future__ import annotations

import pytest

from service.adapters import children


def pytest_configure(config: pytest.Config) -> None:
    children.terminate_as_interrupt()
