"""The one exception tree of ipledger; each class's docstring is its default message.

Adapters translate driver exceptions (asyncpg, aiokafka, the Kubernetes client) into these at
the edge (``raise ... from exc``), so nothing above ``service.adapters`` sees a driver exception;
each adapter raises its own class here (``TableLogError``, ``KafkaSinkError``, ...), and callers
catch the family it belongs to (``LogError``, ``ProjectionError``). Adapters define no exception
classes of their own.
The pure core never raises on input: bad events become rejected decisions, not exceptions.
"""

from __future__ import annotations


class IpledgerError(Exception):
    """ipledger failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(IpledgerError):
    """The settings are invalid."""


class LogError(IpledgerError):
    """The event log could not be read or written."""


class TopicConfigError(LogError):
    """The events topic does not keep records forever (finite retention or compaction)."""


class KafkaLogError(LogError):
    """The Kafka event log could not be read or written."""


class KafkaSinkError(LogError):
    """The decisions could not be published to Kafka."""


class TableLogError(LogError):
    """The PostgreSQL table log could not be read or written."""


class MemoryLogError(LogError):
    """The in-memory event log could not be read or written."""


class MemorySinkError(LogError):
    """The in-memory decision sink could not publish."""


class ProjectionError(IpledgerError):
    """The PostgreSQL projection could not be read or written."""


class FencedError(ProjectionError):
    """Another allocator took over this cluster's log; this writer must stop committing."""


class ProjectionDataError(ProjectionError):
    """The PostgreSQL projection refused a value it was asked to store; retrying cannot help."""

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        #: The database's (or the driver's) reason, as text PostgreSQL can store: the allocator
        #: records it in the decision of the record it could not store.
        self.reason = reason or str(self)


class SyncStoreError(ProjectionError):
    """The sync worker's tables could not be read or written."""


class MigrationError(IpledgerError):
    """The database schema could not be migrated."""


class EmbeddedPostgresError(IpledgerError):
    """The embedded PostgreSQL server could not be started or stopped."""


class ClusterApiError(IpledgerError):
    """The Kubernetes API refused or failed a request."""

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status code, when the server answered at all.
        self.status = status
        #: Seconds the server asked the client to wait (``Retry-After``), when it did.
        self.retry_after = retry_after


class ClusterApiUnavailableError(ClusterApiError):
    """The Kubernetes API could not serve the request now (5xx, timeout, no connection)."""


class ClusterApiThrottledError(ClusterApiUnavailableError):
    """The Kubernetes API asked the client to slow down (429 Too Many Requests)."""


class ClusterApiNotFoundError(ClusterApiError):
    """The Kubernetes object does not exist."""


class ClusterApiGoneError(ClusterApiError):
    """A watch's resource version is too old for the API server (410 Gone): list again."""


class ClusterApiRejectedError(ClusterApiError):
    """The Kubernetes API refused the request (invalid, forbidden): retrying cannot help."""


class ClusterApiConflictError(ClusterApiRejectedError):
    """The Kubernetes API reported a conflict with another writer of the object."""


class AuditError(IpledgerError):
    """The evidence does not check out (a proof, a tree head, a signature, a replay)."""


class QueryError(IpledgerError):
    """The query API cannot answer the request as asked."""


class QueryInvalidError(QueryError):
    """A parameter of the request is not valid (HTTP 400)."""


class QueryNotFoundError(QueryError):
    """What the request names does not exist, or did not exist as of its basis (HTTP 404)."""


class SupervisionError(IpledgerError):
    """A part of ``ipledger up``'s process tree kept exiting as soon as it started."""
