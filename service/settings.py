"""Settings: one frozen object built once by the CLI and passed down; nothing reads it globally.

``Settings.from_env`` reads ``IPLEDGER_*`` variables (the CLI calls it in ``main``, never at
import time); command-line flags override single fields with ``dataclasses.replace``. The
database URL may carry a password, so ``redacted_url`` is what logs and messages show.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service import errors

LogKind = Literal["table", "kafka"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process needs to build its adapters (see docs/configuration.md)."""

    database_url: str | None = None  # None: the embedded PostgreSQL under data_dir
    data_dir: Path = Path(".data")
    log: LogKind = "table"
    kafka_bootstrap: str | None = None
    events_topic: str = "ipledger.events"
    decisions_topic: str = "ipledger.decisions"
    partitions: int = 1
    batch_max_records: int = 5000
    batch_max_wait_ms: int = 50
    lease_ttl_s: float = 6.0
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def integer(name: str, default: int) -> int:
            value = env.get(name)
            if value is None or value == "":
                return default
            try:
                return int(value)
            except ValueError:
                raise errors.ConfigurationError(
                    f"{name} must be an integer, not {value!r}"
                ) from None

        log = env.get("IPLEDGER_LOG", defaults.log)
        if log not in ("table", "kafka"):
            raise errors.ConfigurationError(f"IPLEDGER_LOG must be 'table' or 'kafka', not {log!r}")
        metrics = env.get("IPLEDGER_METRICS_PORT")
        settings = cls(
            database_url=env.get("IPLEDGER_DATABASE_URL") or None,
            data_dir=Path(env.get("IPLEDGER_DATA_DIR", str(defaults.data_dir))),
            log=log,  # type: ignore[arg-type]
            kafka_bootstrap=env.get("IPLEDGER_KAFKA_BOOTSTRAP") or None,
            events_topic=env.get("IPLEDGER_EVENTS_TOPIC", defaults.events_topic),
            decisions_topic=env.get("IPLEDGER_DECISIONS_TOPIC", defaults.decisions_topic),
            partitions=integer("IPLEDGER_PARTITIONS", defaults.partitions),
            batch_max_records=integer("IPLEDGER_BATCH_MAX_RECORDS", defaults.batch_max_records),
            batch_max_wait_ms=integer("IPLEDGER_BATCH_MAX_WAIT_MS", defaults.batch_max_wait_ms),
            lease_ttl_s=float(integer("IPLEDGER_LEASE_TTL_S", int(defaults.lease_ttl_s))),
            metrics_port=int(metrics) if metrics else None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.log == "kafka" and not self.kafka_bootstrap:
            raise errors.ConfigurationError("IPLEDGER_LOG=kafka needs IPLEDGER_KAFKA_BOOTSTRAP")
        if self.partitions < 1:
            raise errors.ConfigurationError("IPLEDGER_PARTITIONS must be at least 1")
        if not 1 <= self.batch_max_records <= 100_000:
            raise errors.ConfigurationError("IPLEDGER_BATCH_MAX_RECORDS must be 1..100000")
        if self.lease_ttl_s < 1:
            raise errors.ConfigurationError("IPLEDGER_LEASE_TTL_S must be at least 1")

    @property
    def log_name(self) -> str:
        """Identifies the log a database was fed from, so two logs are never mixed."""
        if self.log == "kafka":
            return f"kafka:{self.events_topic}"
        return "table"


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
