"""The one exception tree of ipledger; each class's docstring is its default message.

Adapters translate driver exceptions (asyncpg, aiokafka, the Kubernetes client) into these at
the edge (``raise ... from exc``), so nothing above ``service.adapters`` sees a driver exception.
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


class ProjectionError(IpledgerError):
    """The PostgreSQL projection could not be read or written."""


class FencedError(ProjectionError):
    """Another allocator took over this cluster's log; this writer must stop committing."""


class ClusterApiError(IpledgerError):
    """The Kubernetes API refused or failed a request."""
