"""Throw-away PKI of the test Kubernetes API server (tests/harness/kube.py).

One CA per server signs the serving certificate and every client certificate; x509
authentication maps a certificate's CN to the user name and each O to a group. The
ServiceAccount signing key pair lives here too. P-256 keys keep generation to milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The admin of every test server: `system:masters` is allowed by the apiserver's privileged-group
# authorizer before RBAC is consulted.
CLIENT_USER = "ipledger-test"
CLIENT_GROUP = "system:masters"


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """PEM files of the throw-away CA, the serving pair, the admin pair and the SA key pair."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    client_cert: Path
    client_key: Path
    service_account_key: Path
    service_account_public_key: Path


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_encipherment=False,
    content_commitment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CERT_LIFETIME = datetime.timedelta(days=2)


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _client_subject(user: str, groups: Sequence[str]) -> x509.Name:
    # x509 authentication maps CN to the user name and each O to a group.
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mint_client_pair(
    credentials: Credentials, user: str, groups: Sequence[str]
) -> tuple[bytes, bytes]:
    ca_cert = x509.load_pem_x509_certificate(credentials.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(credentials.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert, key = _leaf(
        ca_cert, ca_key, _client_subject(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH, None
    )
    return _pem_cert(cert), _pem_key(key)


def write_credentials(directory: Path) -> Credentials:
    """A fresh CA, the serving certificate, the admin client pair and the SA signing key pair.

    The admin is in `system:masters`, which the apiserver's privileged-group authorizer allows
    before RBAC is consulted. P-256 keys keep generation to milliseconds; the apiserver signs
    ServiceAccount tokens with ES256 from the EC key.
    """
    directory.mkdir(mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipledger-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    serving_cert, serving_key = _leaf(
        ca_cert,
        ca_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(
            [
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes.default.svc"),
            ]
        ),
    )
    client_cert, client_key = _leaf(
        ca_cert,
        ca_key,
        _client_subject(CLIENT_USER, [CLIENT_GROUP]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())

    def write(name: str, data: bytes, *, secret: bool = False) -> Path:
        path = directory / name
        path.write_bytes(data)
        if secret:
            path.chmod(0o600)
        return path

    return Credentials(
        ca_cert=write("ca.crt", _pem_cert(ca_cert)),
        ca_key=write("ca.key", _pem_key(ca_key), secret=True),
        serving_cert=write("apiserver.crt", _pem_cert(serving_cert)),
        serving_key=write("apiserver.key", _pem_key(serving_key), secret=True),
        client_cert=write("client.crt", _pem_cert(client_cert)),
        client_key=write("client.key", _pem_key(client_key), secret=True),
        service_account_key=write("sa.key", _pem_key(sa_key), secret=True),
        service_account_public_key=write(
            "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
    )
