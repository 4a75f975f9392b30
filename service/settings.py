"""Settings: one frozen object built once by the CLI and passed down; nothing reads it globally.

``Settings.from_env`` reads ``IPLEDGER_*`` variables; ``service.configuration.load`` (what the
CLI calls, never at import time) layers them over the TOML configuration file and the
command-line flags over them: flag > environment > file > default. The database URL may carry
a password, so ``redacted_url`` is what logs and messages show.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service import errors

LogKind = Literal["table", "kafka"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process needs to build its adapters (see docs/configuration.md)."""

    database_url: str | None = None  # None: the embedded PostgreSQL under data_dir
    data_dir: Path = Path(".data")
    # As root, where the embedded PostgreSQL's cluster lives (its account cannot enter a
    # private checkout); data_dir/postgres then points there. docs/configuration.md.
    system_data_dir: Path = Path("/var/lib/ipledger")
    log: LogKind = "table"
    kafka_bootstrap: str | None = None
    events_topic: str = "ipledger.events"
    decisions_topic: str = "ipledger.decisions"
    partitions: int = 1
    batch_max_records: int = 5000
    batch_max_wait_ms: int = 50
    lease_ttl_s: float = 6.0
    # Kafka static group membership (docs/scaling.md): a stable name per `run` process (a
    # StatefulSet's pod name), so that a restart gets its partitions back without a rebalance.
    instance_id: str | None = None
    metrics_port: int | None = None
    # The address /metrics and /healthz of `run` and `sync` bind to; 0.0.0.0 in a container,
    # where Prometheus scrapes from another network namespace (compose/, the Helm chart).
    metrics_host: str = "127.0.0.1"
    # --- the Merkle tree of the decisions and its heads (docs/audits.md) ---
    tree: bool = True
    tree_head_every: int = 10_000
    tree_digest_every: int = 1_000_000
    signing_key: Path | None = None  # an Ed25519 private key (PEM), to sign the tree heads
    # --- the Kubernetes sync worker (`ipledger sync`, `ipledger adopt`; docs/sync.md) ---
    # With no per-cluster mapping, `sync_cluster` is mirrored into the cluster `kubeconfig` and
    # `kube_context` point at (None: in-cluster config, else $KUBECONFIG or ~/.kube/config).
    kubeconfig: Path | None = None
    kube_context: str | None = None
    kube_clusters: Mapping[str, KubeTarget] = field(default_factory=dict)
    sync_cluster: str = "default"
    # Set: CiliumNodes are written as YAML files into this directory instead of a cluster
    # (what `make run` does without a kubeconfig; adapters/kubernetes/files.py).
    ciliumnode_dir: Path | None = None
    sync_qps: float = 20.0  # 0: no limit
    sync_burst: int = 40
    sync_concurrency: int = 8
    resync_interval_s: float = 300.0
    create_missing: bool = True
    delete_orphans: bool = False
    mirror_pod_ips: bool = False
    owner_references: bool = False  # reads v1 Nodes: an optional ClusterRole
    sync_metrics_port: int | None = None  # like metrics_port, for `ipledger sync`
    # --- the read-only query API (`ipledger api`; docs/api.md) ---
    api_address: str = "127.0.0.1:8080"
    # The API's own connection, as a role that may only read (`ipledger init` creates it).
    # None: the database URL with the user ipledger_api.
    api_database_url: str | None = None
    api_max_lag: int = 1000  # records behind the log at most, for /readyz
    api_forecast_window_s: float = 86_400.0
    api_statement_timeout_ms: int = 2000
    # --- `ipledger watch-nodes` (docs/operations.md); patches v1 Nodes: an optional ClusterRole
    mirror_node_pod_cidrs: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, check: bool = True) -> Settings:
        """The settings the ``IPLEDGER_*`` variables give; ``check=False`` leaves ``validate``
        to the caller (``service.configuration`` layers a file and flags on top first)."""
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
            system_data_dir=Path(
                env.get("IPLEDGER_SYSTEM_DATA_DIR") or str(defaults.system_data_dir)
            ),
            log=log,  # type: ignore[arg-type]
            kafka_bootstrap=env.get("IPLEDGER_KAFKA_BOOTSTRAP") or None,
            events_topic=env.get("IPLEDGER_EVENTS_TOPIC", defaults.events_topic),
            decisions_topic=env.get("IPLEDGER_DECISIONS_TOPIC", defaults.decisions_topic),
            partitions=integer("IPLEDGER_PARTITIONS", defaults.partitions),
            batch_max_records=integer("IPLEDGER_BATCH_MAX_RECORDS", defaults.batch_max_records),
            batch_max_wait_ms=integer("IPLEDGER_BATCH_MAX_WAIT_MS", defaults.batch_max_wait_ms),
            lease_ttl_s=float(integer("IPLEDGER_LEASE_TTL_S", int(defaults.lease_ttl_s))),
            instance_id=env.get("IPLEDGER_INSTANCE_ID") or None,
            metrics_port=integer("IPLEDGER_METRICS_PORT", 0) if metrics else None,
            metrics_host=env.get("IPLEDGER_METRICS_HOST") or defaults.metrics_host,
            tree=_flag(env, "IPLEDGER_TREE", default=True),
            tree_head_every=integer("IPLEDGER_TREE_HEAD_EVERY", defaults.tree_head_every),
            tree_digest_every=integer("IPLEDGER_TREE_DIGEST_EVERY", defaults.tree_digest_every),
            signing_key=Path(key) if (key := env.get("IPLEDGER_SIGNING_KEY")) else None,
            **_sync_settings(env),
            **_api_settings(env),
        )
        if check:
            settings.validate()
        return settings

    def validate(self) -> None:
        _check_database_url("IPLEDGER_DATABASE_URL", self.database_url)
        _check_database_url("IPLEDGER_API_DATABASE_URL", self.api_database_url)
        if self.log == "kafka" and not self.kafka_bootstrap:
            raise errors.ConfigurationError("IPLEDGER_LOG=kafka needs IPLEDGER_KAFKA_BOOTSTRAP")
        if self.partitions < 1:
            raise errors.ConfigurationError("IPLEDGER_PARTITIONS must be at least 1")
        for name, port in (
            ("IPLEDGER_METRICS_PORT", self.metrics_port),
            ("IPLEDGER_SYNC_METRICS_PORT", self.sync_metrics_port),
        ):
            if port is not None and not 0 <= port <= 65535:
                raise errors.ConfigurationError(f"{name} must be a port, 0..65535")
        if not 1 <= self.batch_max_records <= 100_000:
            raise errors.ConfigurationError("IPLEDGER_BATCH_MAX_RECORDS must be 1..100000")
        if self.lease_ttl_s < 1:
            raise errors.ConfigurationError("IPLEDGER_LEASE_TTL_S must be at least 1")
        if self.tree_head_every < 1 or self.tree_digest_every < 1:
            raise errors.ConfigurationError(
                "IPLEDGER_TREE_HEAD_EVERY and IPLEDGER_TREE_DIGEST_EVERY must be at least 1"
            )
        self._validate_sync()
        self._validate_api()

    def _validate_sync(self) -> None:
        if not self.sync_qps >= 0:  # written so that NaN fails too
            raise errors.ConfigurationError("IPLEDGER_SYNC_QPS must be 0 (no limit) or more")
        if self.sync_burst < 1:
            raise errors.ConfigurationError("IPLEDGER_SYNC_BURST must be at least 1")
        if not 1 <= self.sync_concurrency <= 256:
            raise errors.ConfigurationError("IPLEDGER_SYNC_CONCURRENCY must be 1..256")
        if not self.resync_interval_s > 0:
            raise errors.ConfigurationError("IPLEDGER_RESYNC_INTERVAL_S must be positive")

    def _validate_api(self) -> None:
        host, sep, port = self.api_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise errors.ConfigurationError(
                f"IPLEDGER_API_ADDRESS must be host:port, not {self.api_address!r}"
            )
        if self.api_max_lag < 0:
            raise errors.ConfigurationError("IPLEDGER_API_MAX_LAG must be 0 or more")
        # A window is a timedelta: infinity has none.
        if not 0 < self.api_forecast_window_s < math.inf:
            raise errors.ConfigurationError(
                "IPLEDGER_API_FORECAST_WINDOW_S must be a positive number of seconds"
            )
        if self.api_statement_timeout_ms < 1:
            raise errors.ConfigurationError("IPLEDGER_API_STATEMENT_TIMEOUT_MS must be at least 1")

    def kube_targets(self) -> dict[str, KubeTarget]:
        """ipledger cluster name -> the Kubernetes cluster its CiliumNodes live in."""
        if self.kube_clusters:
            return dict(self.kube_clusters)
        return {
            self.sync_cluster: KubeTarget(kubeconfig=self.kubeconfig, context=self.kube_context)
        }

    @property
    def log_name(self) -> str:
        """Identifies the log a database was fed from, so two logs are never mixed."""
        if self.log == "kafka":
            return f"kafka:{self.events_topic}"
        return "table"


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """Where one Kubernetes cluster is reached: a kubeconfig file and a context in it.

    None means the default: in-cluster config, else ``$KUBECONFIG`` or ``~/.kube/config``; and
    that file's current context.
    """

    kubeconfig: Path | None = None
    context: str | None = None


def parse_kube_clusters(text: str) -> dict[str, KubeTarget]:
    """``IPLEDGER_KUBECONFIGS``: ``east=/path/a,west=/path/b#context,north=#context``."""
    targets: dict[str, KubeTarget] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, where = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise errors.ConfigurationError(
                f"IPLEDGER_KUBECONFIGS: {item!r} is not cluster=kubeconfig[#context]"
            )
        if name in targets:
            raise errors.ConfigurationError(f"IPLEDGER_KUBECONFIGS names cluster {name!r} twice")
        path, _, context = where.strip().partition("#")
        targets[name] = KubeTarget(
            kubeconfig=Path(path).expanduser() if path else None, context=context or None
        )
    return targets


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A true-or-false variable; any other text is an error (``IPLEDGER_TREE=maybe`` was true)."""
    value = env.get(name)
    if not value:
        return default
    if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise errors.ConfigurationError(f"{name} must be true or false, not {value!r}")
    return value.lower() in ("1", "true", "yes")


def _sync_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The sync worker's fields of ``Settings.from_env``; absent variables keep the defaults."""
    values: dict[str, Any] = {}

    def number(name: str, field_name: str, kind: type[float] | type[int]) -> None:
        value = env.get(name)
        if value:
            try:
                values[field_name] = kind(value)
            except ValueError:
                raise errors.ConfigurationError(
                    f"{name} must be a {kind.__name__}, not {value!r}"
                ) from None

    def flag(name: str, field_name: str) -> None:
        if env.get(name):
            values[field_name] = _flag(env, name, default=False)

    if kubeconfig := env.get("IPLEDGER_KUBECONFIG"):
        values["kubeconfig"] = Path(kubeconfig).expanduser()
    if context := env.get("IPLEDGER_KUBE_CONTEXT"):
        values["kube_context"] = context
    if mapping := env.get("IPLEDGER_KUBECONFIGS"):
        values["kube_clusters"] = parse_kube_clusters(mapping)
    if cluster := env.get("IPLEDGER_SYNC_CLUSTER"):
        values["sync_cluster"] = cluster
    if files := env.get("IPLEDGER_CILIUMNODE_DIR"):
        values["ciliumnode_dir"] = Path(files)
    number("IPLEDGER_SYNC_QPS", "sync_qps", float)
    number("IPLEDGER_SYNC_BURST", "sync_burst", int)
    number("IPLEDGER_SYNC_CONCURRENCY", "sync_concurrency", int)
    number("IPLEDGER_RESYNC_INTERVAL_S", "resync_interval_s", float)
    number("IPLEDGER_SYNC_METRICS_PORT", "sync_metrics_port", int)
    flag("IPLEDGER_SYNC_CREATE_MISSING", "create_missing")
    flag("IPLEDGER_SYNC_DELETE_ORPHANS", "delete_orphans")
    flag("IPLEDGER_SYNC_MIRROR_POD_IPS", "mirror_pod_ips")
    flag("IPLEDGER_SYNC_OWNER_REFERENCES", "owner_references")
    flag("IPLEDGER_MIRROR_NODE_PODCIDRS", "mirror_node_pod_cidrs")
    return values


def _api_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The query API's fields of ``Settings.from_env``; absent variables keep the defaults."""
    values: dict[str, Any] = {}
    if address := env.get("IPLEDGER_API_ADDRESS"):
        values["api_address"] = address
    if url := env.get("IPLEDGER_API_DATABASE_URL"):
        values["api_database_url"] = url
    for name, field_name, kind in (
        ("IPLEDGER_API_MAX_LAG", "api_max_lag", int),
        ("IPLEDGER_API_FORECAST_WINDOW_S", "api_forecast_window_s", float),
        ("IPLEDGER_API_STATEMENT_TIMEOUT_MS", "api_statement_timeout_ms", int),
    ):
        if value := env.get(name):
            try:
                values[field_name] = kind(value)
            except ValueError:
                raise errors.ConfigurationError(
                    f"{name} must be a {kind.__name__}, not {value!r}"
                ) from None
    return values


# What the PostgreSQL adapters connect with: asyncpg's schemes, and SQLAlchemy's for asyncpg.
_DATABASE_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})


def _check_database_url(name: str, url: str | None) -> None:
    """Refuse a database URL no adapter can connect with, before anything tries.

    Without this, SQLAlchemy's parser raised its own ``ArgumentError`` for a text that is no URL
    and the socket an ``OverflowError`` for a port above 65535, each a traceback out of the
    command; and any scheme (``mysql://``) was taken for PostgreSQL's, failing later as a DNS or
    connection error that did not say the URL was wrong.
    """
    if url is None:
        return
    shown = redacted_url(url)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _DATABASE_SCHEMES:
        raise errors.ConfigurationError(
            f"{name} must be a PostgreSQL URL (postgresql://user@host:port/database), not {shown!r}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        if "," not in parts.netloc:  # several hosts (asyncpg's h1:5432,h2:5432): its parse
            parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
    except ValueError as exc:
        raise errors.ConfigurationError(f"{name} {shown!r} is not a valid URL: {exc}") from None


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
