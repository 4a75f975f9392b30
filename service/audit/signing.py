"""Ed25519 signatures of tree heads, so that a head an auditor kept cannot be forged later.

The allocator signs each head's ``signed_bytes`` with the private key named by
``IPLEDGER_SIGNING_KEY`` (a PEM file, PKCS#8, as ``openssl genpkey -algorithm ed25519`` writes
it); a head carries the signature and the key's id (the first 8 bytes of SHA-256 of the raw
public key, hex). Anyone with the public key checks it (``verify``); ``ipledger audit`` prints
the public key (``public_pem``) for auditors to keep.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from service import errors
from service.domain import merkle


class Signer:
    """Signs tree heads with one Ed25519 private key."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise errors.ConfigurationError(
                f"IPLEDGER_SIGNING_KEY: cannot read an Ed25519 private key from {path}: {exc}"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise errors.ConfigurationError(f"IPLEDGER_SIGNING_KEY: {path} is not an Ed25519 key")
        return cls(key)

    def __call__(self, signed: bytes) -> tuple[str, str]:
        return self._key.sign(signed).hex(), self.key_id


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8].hex()


def public_pem(public: ed25519.Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """A public key from a PEM file (a private key's file gives its public half)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise errors.ConfigurationError(f"{path} holds no Ed25519 key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise errors.ConfigurationError(f"{path} is not an Ed25519 key")
    return key


def verify(head: merkle.TreeHead, public: ed25519.Ed25519PublicKey) -> None:
    """Raise ``AuditError`` unless ``head`` carries a valid signature by ``public``."""
    where = f"tree head of partition {head.partition} at size {head.size}"
    if head.signature is None:
        raise errors.AuditError(f"{where}: not signed")
    if head.key_id != key_id(public):
        raise errors.AuditError(f"{where}: signed by key {head.key_id}, not {key_id(public)}")
    try:
        public.verify(bytes.fromhex(head.signature), head.signed_bytes())
    except (InvalidSignature, ValueError):
        raise errors.AuditError(f"{where}: the signature does not match the head") from None
