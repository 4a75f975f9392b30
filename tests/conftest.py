"""Shared pytest configuration: the real-service harness fixtures and the async backend.

Every async test (``pytest.mark.anyio``) runs on asyncio, which is what the service runs on
(aiokafka and asyncpg are asyncio libraries). The fixture is function-scoped, unlike anyio's
own module-scoped default, so each test gets an event loop of its own and nothing a test
leaves on its loop can reach the next one.
"""

import pytest

pytest_plugins = [
    "tests.harness.signals",
    "tests.harness.postgres",
    "tests.harness.kafka",
    "tests.harness.kube",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
