"""Audits: the evidence the allocator records and how anyone checks it (docs/audits.md).

- ``signing``: Ed25519 signatures of tree heads (``IPLEDGER_SIGNING_KEY``), and their check;
- ``proofs``: inclusion and consistency proofs as JSON documents, built from the projection's
  leaves and heads and checked offline (``ipledger audit proof / verify-proof / consistency``);
- ``replay``: the whole log applied again in memory with the allocator's own batch code, the
  tree, the heads and the projection compared with what was committed (``ipledger replay``);
- ``story``: the history of one address, owner or node, each change with its decision.

Sits above the allocator (it replays with ``service.allocator.batch``) and under the processes
(``service.processes.replay`` and ``audit``) and the bootstrap, which builds the signer.
"""
