"""The read-only query API (``ipledger api``): HTTP JSON over ``ports.ProjectionReader`` only.

``app.build_app`` makes the ASGI application; ``service.processes.api`` serves it. Modules:
``routes`` (the /v1 routes), ``reading`` (parameters, ``as_of``, cursors, ETags), ``models``
(the bodies, hence the OpenAPI document), ``problems`` (RFC 9457 errors). It imports no adapter:
what it reads comes through the port, so it cannot write (and connects, through
``service.bootstrap``, as a role that may only read). docs/api.md.
"""

from service.api.app import build_app
from service.api.routes import ApiConfig

__all__ = ["ApiConfig", "build_app"]
