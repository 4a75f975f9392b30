"""Shared pytest configuration: registers the real-service harness fixtures."""

pytest_plugins = [
    "tests.harness.signals",
    "tests.harness.postgres",
    "tests.harness.kafka",
    "tests.harness.kube",
]
