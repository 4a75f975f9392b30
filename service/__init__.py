"""ipledger: an event-sourced IP address manager for Kubernetes (Cilium cluster-pool IPAM).

The package is layered (``.importlinter``, highest first): ``service.cli`` the ``ipledger``
command; ``service.processes`` what runs as a process, composed of adapters that
``service.bootstrap`` builds from the settings, with ``service.metrics`` their endpoint;
``service.allocator`` and ``service.sync`` the loops; ``service.adapters`` all I/O;
``service.ports`` the protocols the loops depend on; ``service.domain`` the pure allocation core.
"""
