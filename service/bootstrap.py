"""The composition root's adapters: turns ``Settings`` into the adapter of each port.

The only module that knows which adapter implements which port (and where the embedded
PostgreSQL of ``make run`` keeps its port). Called by ``service.processes``, which wires what it
builds here into the processes, and by ``service.cli``'s ``state``; nothing here runs at import
time, and nothing is opened until a function is called.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service import allocator, errors, ports, sync
from service.adapters import children
from service.adapters.kafka import log as kafka_log
from service.adapters.kafka import membership as kafka_membership
from service.adapters.kafka import sink as kafka_sink
from service.adapters.kubernetes import client as kube_client
from service.adapters.kubernetes import files as kube_files
from service.adapters.postgres import audit as audit_reader
from service.adapters.postgres import (
    embedded,
    members,
    migrate,
    projection,
    reader,
    roles,
    sync_store,
    table_log,
)
from service.audit import signing
from service.settings import Settings, redacted_url

log = logging.getLogger("ipledger")
EMBEDDED_STATE_FILE = "postgres.json"


def holder_id() -> str:
    """A name for this process in the writer lease: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class Embedded:
    """The embedded PostgreSQL of ``make run``: data and port kept under the data dir."""

    server: embedded.EmbeddedPostgres
    state_file: Path

    @classmethod
    def for_settings(cls, settings: Settings, *, end_with_parent: bool = False) -> Embedded:
        root = settings.data_dir.resolve()
        # The user's directory keeps its permissions: as root the cluster lives elsewhere, with
        # data_dir/postgres pointing there (embedded.place_cluster says why and where).
        root.mkdir(parents=True, exist_ok=True)
        state_file = root / EMBEDDED_STATE_FILE
        port = None
        if state_file.exists():
            port = int(json.loads(state_file.read_text())["port"])
        cluster = embedded.place_cluster(root / "postgres", settings.system_data_dir)
        # As root the binaries may need a copy the server's account can reach: beside the
        # cluster, which place_cluster made reachable (the temporary directory may be private).
        system = settings.system_data_dir.absolute()
        copies = system if cluster.parent == system else None
        server = embedded.EmbeddedPostgres(
            cluster, port=port, binaries_copy_dir=copies, end_with_parent=end_with_parent
        )
        return cls(server=server, state_file=state_file)

    @property
    def where(self) -> str:
        """Where the data lives, for the banner: the cluster, and the link to it when root."""
        pointer = self.state_file.parent / "postgres"
        if pointer.is_symlink():
            return f"{self.server.data_dir} (linked from {pointer})"
        return str(self.server.data_dir)

    def start(self) -> str:
        self.server.start()
        self.state_file.write_text(json.dumps({"port": self.server.port, "dsn": self.server.dsn}))
        return self.server.dsn

    def stop(self) -> None:
        # The event loop that turned SIGTERM into a clean stop is gone by now, and Python's
        # default would end the process at a second SIGTERM with the server still running:
        # make it an interrupt again, which the server's stop answers by killing it.
        children.terminate_as_interrupt()
        self.server.stop()


def database_url(settings: Settings) -> str:
    """The configured URL, or the DSN of the running embedded server."""
    if settings.database_url:
        return settings.database_url
    state_file = settings.data_dir.resolve() / EMBEDDED_STATE_FILE
    if not state_file.exists():
        raise errors.ConfigurationError(
            "no database: set IPLEDGER_DATABASE_URL, or start the embedded one with `make run`"
        )
    dsn: str = json.loads(state_file.read_text())["dsn"]
    return dsn


async def migrate_database(settings: Settings) -> None:
    url = database_url(settings)
    log.info("migrating %s", redacted_url(url))
    await migrate.upgrade(url)


async def open_log(settings: Settings) -> ports.EventLog:
    if settings.log == "kafka":
        assert settings.kafka_bootstrap is not None
        return await kafka_log.KafkaEventLog.open(
            settings.kafka_bootstrap, settings.events_topic, group_id="ipledger-allocator"
        )
    return table_log.PostgresTableLog.from_dsn(
        database_url(settings), partitions=settings.partitions
    )


async def ensure_topics(settings: Settings) -> None:
    """``ipledger init`` for Kafka: the events topic kept forever, and the decisions topic."""
    if settings.log != "kafka":
        return
    assert settings.kafka_bootstrap is not None
    await kafka_log.ensure_topics(
        settings.kafka_bootstrap, settings.events_topic, settings.partitions
    )
    await kafka_log.ensure_decisions_topic(
        settings.kafka_bootstrap, settings.decisions_topic, settings.partitions
    )


async def open_sink(settings: Settings) -> ports.DecisionSink | None:
    if settings.log != "kafka":
        return None
    assert settings.kafka_bootstrap is not None
    return await kafka_sink.KafkaDecisionSink.open(
        settings.kafka_bootstrap, settings.decisions_topic
    )


def open_projection(settings: Settings) -> projection.PostgresProjection:
    return projection.PostgresProjection.from_dsn(
        database_url(settings),
        log_name=settings.log_name,
        holder=holder_id(),
        lease_ttl_s=settings.lease_ttl_s,
    )


def open_membership(
    settings: Settings, member: str, partitions: Sequence[int]
) -> ports.PartitionMembership:
    """How ``ipledger run`` processes share the partitions (docs/scaling.md): Kafka's consumer
    group for the Kafka log, member rows in PostgreSQL for the table log. ``member`` is the
    projection's lease holder."""
    if settings.log == "kafka":
        assert settings.kafka_bootstrap is not None
        return kafka_membership.KafkaMembership(
            settings.kafka_bootstrap, settings.events_topic, instance_id=settings.instance_id
        )
    return members.PostgresMembership.from_dsn(
        database_url(settings), partitions, member, ttl_s=settings.lease_ttl_s
    )


def tree_settings(settings: Settings) -> allocator.TreeSettings | None:
    """The allocator's Merkle tree settings (None: the tree off), with the head signer."""
    if not settings.tree:
        return None
    sign = None
    if settings.signing_key is not None:
        sign = signing.Signer.from_file(settings.signing_key)
    return allocator.TreeSettings(
        head_every=settings.tree_head_every,
        digest_every=settings.tree_digest_every,
        sign=sign,
    )


async def open_replay_log(settings: Settings) -> ports.EventLog:
    """The log for a replay or an audit: read from offset 0, in no consumer group."""
    if settings.log == "kafka":
        assert settings.kafka_bootstrap is not None
        return await kafka_log.KafkaEventLog.open(
            settings.kafka_bootstrap, settings.events_topic, client_id="ipledger-replay"
        )
    return await open_log(settings)


def open_projection_at(settings: Settings, url: str) -> ports.Projection:
    """A writer's projection on the database at ``url`` (``ipledger replay --into``)."""
    return projection.PostgresProjection.from_dsn(
        url, log_name=settings.log_name, holder=holder_id(), lease_ttl_s=settings.lease_ttl_s
    )


async def migrate_url(url: str) -> None:
    log.info("migrating %s", redacted_url(url))
    await migrate.upgrade(url)


def open_audit_reader(url: str) -> ports.AuditReader:
    """Read-only access to the tree heads, leaves and rows of the database at ``url``."""
    return audit_reader.PostgresAuditReader.from_dsn(url)


def open_reader(settings: Settings) -> ports.ProjectionReader:
    """The read side: read-only queries over the projection and the sync worker's progress."""
    return reader.PostgresProjectionReader.from_dsn(database_url(settings))


# --- the Kubernetes sync worker (`ipledger sync`, `ipledger adopt`) -----------------------------


def open_cluster_clients(settings: Settings) -> dict[str, ports.ClusterClient]:
    """One CiliumNode client per ipledger cluster, for the Kubernetes cluster it maps to.

    ``IPLEDGER_KUBECONFIGS`` maps clusters to kubeconfig files and contexts; without it, the one
    cluster ``sync_cluster`` uses ``kubeconfig``/``kube_context``, else in-cluster config or the
    current context. No connection is opened until the first request. With ``ciliumnode_dir``
    there is no cluster: ``sync_cluster``'s CiliumNodes are written as files there.
    """
    if settings.ciliumnode_dir is not None:
        files = kube_files.FileClusterClient(settings.ciliumnode_dir.absolute())
        log.info("cluster %s: CiliumNodes as %s", settings.sync_cluster, files.description)
        return {settings.sync_cluster: files}
    clients: dict[str, ports.ClusterClient] = {}
    for cluster, target in settings.kube_targets().items():
        client = kube_client.KubernetesClusterClient.connect(target.kubeconfig, target.context)
        log.info("cluster %s: CiliumNodes of %s", cluster, client.description)
        clients[cluster] = client
    return clients


def open_sync_store(settings: Settings) -> sync_store.PostgresSyncStore:
    return sync_store.PostgresSyncStore.from_dsn(database_url(settings))


def sync_settings(settings: Settings) -> sync.SyncSettings:
    return sync.SyncSettings(
        qps=settings.sync_qps,
        burst=settings.sync_burst,
        concurrency=settings.sync_concurrency,
        resync_interval_s=settings.resync_interval_s,
        create_missing=settings.create_missing,
        delete_orphans=settings.delete_orphans,
        mirror_pod_ips=settings.mirror_pod_ips,
        owner_references=settings.owner_references,
    )


# --- the read-only query API (`ipledger api`; docs/api.md) ---------------------------------------

API_ROLE = "ipledger_api"


def api_database_url(settings: Settings) -> str:
    """The API's own connection: ``api_database_url``, else the database URL as ``ipledger_api``."""
    if settings.api_database_url:
        return settings.api_database_url
    return roles.with_user(database_url(settings), API_ROLE)


async def ensure_api_role(settings: Settings) -> str:
    """``ipledger init``: the API's read-only role, created or brought back to reading only."""
    role, password = roles.role_of(api_database_url(settings))
    await roles.ensure_read_only_role(database_url(settings), role, password)
    return role


async def check_api_role(settings: Settings) -> None:
    """Refuse (``ConfigurationError``) an API role that may write any table."""
    url = api_database_url(settings)
    writable = await roles.writable_tables(url)
    if writable:
        role, _ = roles.role_of(url)
        shown = ", ".join(writable[:5]) + (" ..." if len(writable) > 5 else "")
        raise errors.ConfigurationError(
            f"the API's database role {role} can write ({shown}): the API connects only as a "
            "role that may read; run `ipledger init` to create one (ipledger_api), or set "
            "IPLEDGER_API_DATABASE_URL to a read-only role"
        )


def open_api_reader(settings: Settings) -> ports.ProjectionReader:
    """The API's read side: read-only sessions as the API's role, every statement time-bound."""
    return reader.PostgresProjectionReader.from_dsn(
        api_database_url(settings),
        pool_size=8,
        statement_timeout_ms=settings.api_statement_timeout_ms,
        keep_connections=True,
    )


async def open_log_end(settings: Settings) -> ports.EventLog:
    """The log, for its end offsets only (readiness): as the API's role for the table log."""
    if settings.log == "kafka":
        assert settings.kafka_bootstrap is not None
        return await kafka_log.KafkaEventLog.open(settings.kafka_bootstrap, settings.events_topic)
    return table_log.PostgresTableLog.from_dsn(
        api_database_url(settings), partitions=settings.partitions, pool_size=1
    )
