"""Shared pytest configuration: the real-service harness, the leak check, the async backend.

The plugins: ``tests.leaks`` fails any test that leaves an asyncio task or a child process
running; ``tests.harness.*`` start the real services; ``pytester`` runs pytest sessions of
their own for the tests of the leak check.

Every async test (``pytest.mark.anyio``) runs on asyncio, which is what the service runs on
(aiokafka and asyncpg are asyncio libraries). The fixture is function-scoped, unlike anyio's
own module-scoped default, so each test gets an event loop of its own and nothing a test
leaves on its loop can reach the next one.
"""

import pytest

pytest_plugins = [
    "pytester",
    "tests.leaks",
    "tests.harness.signals",
    "tests.harness.postgres",
    "tests.harness.kafka",
    "tests.harness.kube",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
