"""What runs as a process: each ``ipledger`` command's composition, one module per process.

``service.cli`` parses the arguments, builds the ``Settings`` and calls one function here per
command; these functions turn the settings into adapters through ``service.bootstrap``, start the
loops, serve metrics (``service.metrics``), stop on a signal, and close what they opened. Above
``service.bootstrap`` and below ``service.cli`` in ``.importlinter``; like ``cli``, they import no
adapter directly.

- ``allocator``: ``run``, the allocator (``ipledger run``, ``run --embedded``);
- ``sync``: ``run``, the Kubernetes sync worker (``ipledger sync``);
- ``jobs``: the one-shot commands ``init``, ``append`` and ``adopt``;
- ``up``: ``run``, the whole product on the embedded PostgreSQL, the allocator, the sync worker
  and the query API as supervised children (``ipledger up``, ``make run``);
- ``watch_nodes``: ``run``, the node-lifecycle producer (``ipledger watch-nodes``), and
  ``find_leaks``, the leak check of ``ipledger check --kubernetes``;
- ``signals``: ``stop_on_signal``, how the long-running ones are told to stop.

A new process (the query API, audit replay) is a new module here with its own async ``run``.
"""
