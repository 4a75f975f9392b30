"""ipledger: an event-sourced IP address manager for Kubernetes (Cilium cluster-pool IPAM).

The package is layered: ``service.domain`` is the pure allocation core, ``service.ports`` the
protocols the core's callers depend on, ``service.adapters`` all I/O, and the process entry points
(``allocator``, ``sync``, ``api``, ``replay``, ``cli``) are wired by ``service.bootstrap``.
"""
