"""A real Kubernetes API server for tests: standalone apiextensions-apiserver backed by etcd.

`KubeAPIServer` starts etcd and apiextensions-apiserver (built by `compose/kube/build.sh` into
`$IPLEDGER_CACHE/kube/bin/`) on free 127.0.0.1 ports, authenticates clients with a throw-away CA
and a `system:masters` client certificate, writes a real kubeconfig, and installs Cilium's
CiliumNode CRD unmodified from `<repo>/../shared/reference/` (or `$IPLEDGER_SHARED_DIR`).
Clients then talk to it as to any cluster through `kubeconfig_path`.

What it serves: CRDs, custom resources (with SSA, status subresource, watch) and per-group
discovery (`/apis/cilium.io/v2`), `/version`, `/healthz`, `/livez`. What it does not: the legacy
`/api` (no namespaces, events, leases), the `/apis` root discovery list, `/openapi/v2`, CRD schemas
in `/openapi/v3`, admission webhooks, priority-and-fairness; and `/readyz` never passes (the core
informers point at a port that refuses), so readiness here is `/healthz` plus the CRD showing up
in its group's discovery. Clients that need the `/apis` root list for discovery (kubectl does)
should be expected to fail; that was not tried.

Users: the session fixture `kube_apiserver` (registered through `pytest_plugins` in
tests/conftest.py) and benchmarks, which use the class directly or as a context manager. Both
processes are stopped by `stop()`, by leaving the context, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.adapters import children

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_USER = "ipledger-test"
CLIENT_GROUP = "system:masters"
CRD_FILE_NAME = "ciliumnodes.crd.yaml"

# The apiserver needs a kubeconfig for its core-API informers and delegated authn/authz even though
# the client-certificate path never consults them; port 1 on loopback refuses at once, so the
# informers fail fast instead of hanging, and nothing real is ever contacted.
_REFUSING_URL = "http://127.0.0.1:1"
# These plugins need informers from the core API, which this server does not have.
_DISABLED_ADMISSION_PLUGINS = (
    "NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
    "ValidatingAdmissionPolicy,MutatingAdmissionPolicy"
)
_POLL_INTERVAL = 0.05
_STOP_TIMEOUT = 15.0
_LOG_TAIL_BYTES = 4000


class KubeHarnessError(RuntimeError):
    """The test Kubernetes API server could not be started or did not become ready."""


def cache_dir() -> Path:
    """Where `make services` puts built artefacts: `$IPLEDGER_CACHE`, else `<repo>/.cache`."""
    return Path(os.environ.get("IPLEDGER_CACHE") or REPO_ROOT / ".cache")


def binary_dir() -> Path:
    """The directory `compose/kube/build.sh` builds etcd and apiextensions-apiserver into."""
    return cache_dir() / "kube" / "bin"


def missing_binaries(directory: Path | None = None) -> list[Path]:
    """The binaries the harness needs that are not (yet) built; empty when it can run."""
    directory = directory or binary_dir()
    wanted = (directory / "etcd", directory / "apiextensions-apiserver")
    return [path for path in wanted if not os.access(path, os.X_OK)]


def crd_path() -> Path:
    """Cilium's CiliumNode CRD: `$IPLEDGER_SHARED_DIR/reference/`, else `<repo>/../shared/`."""
    shared = Path(os.environ.get("IPLEDGER_SHARED_DIR") or REPO_ROOT.parent / "shared")
    return shared / "reference" / CRD_FILE_NAME


@dataclass(frozen=True, kw_only=True)
class _Credentials:
    """PEM files of the throw-away CA, the apiserver's serving pair and the client pair."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    client_cert: Path
    client_key: Path


class KubeAPIServer:
    """etcd plus apiextensions-apiserver on loopback, with the CiliumNode CRD installed.

    `start()` blocks until the server answers `/healthz` and serves `cilium.io/v2` ciliumnodes;
    clients use `kubeconfig_path` (client-certificate auth as `system:masters`) or `url`.
    `restart_apiserver()` restarts only the apiserver, on the same port and the same etcd, so
    stored objects survive. Not thread-safe; one instance per test session is the intent.

    Upstream quirk worth knowing when timing things: for about two seconds after the CRD becomes
    Established, every POST (create) of a CiliumNode is held for 2 s by the apiserver on purpose
    (an HA safeguard in the CRD handler); server-side apply and other verbs are not delayed.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        crd_file: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._bin_dir = bin_dir or binary_dir()
        self._crd_file = crd_file or crd_path()
        self._startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._credentials: _Credentials | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._apiserver_args: list[str] = []
        self._etcd_url = ""
        self._url = ""
        self._kubeconfig_path: Path | None = None
        self._served_path = ""
        self._logs: dict[str, IO[bytes]] = {}

    @property
    def url(self) -> str:
        """The apiserver's base URL, e.g. `https://127.0.0.1:40123`."""
        if not self._url:
            raise KubeHarnessError("the API server has not been started")
        return self._url

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig with the server, its CA and the client certificate inlined as data."""
        if self._kubeconfig_path is None:
            raise KubeHarnessError("the API server has not been started")
        return self._kubeconfig_path

    @property
    def etcd_url(self) -> str:
        """The etcd client URL the apiserver stores into (plain HTTP on loopback)."""
        if not self._etcd_url:
            raise KubeHarnessError("the API server has not been started")
        return self._etcd_url

    @property
    def pids(self) -> frozenset[int]:
        """etcd's and the apiserver's process ids, for the tests' leak check (tests/leaks.py)."""
        return frozenset(p.pid for p in (self._etcd, self._apiserver) if p is not None)

    def start(self) -> None:
        """Start etcd and the apiserver, install the CRD and wait until it is served.

        Raises `KubeHarnessError` (after stopping whatever did start) if a binary or the CRD
        file is missing or a process does not become ready within `startup_timeout` seconds.
        """
        if self._workdir is not None:
            raise KubeHarnessError("the API server is already started")
        missing = missing_binaries(self._bin_dir)
        if missing:
            raise KubeHarnessError(
                f"not built: {', '.join(map(str, missing))}; run `bash compose/kube/build.sh`"
            )
        if not self._crd_file.is_file():
            raise KubeHarnessError(f"CiliumNode CRD not found at {self._crd_file}")
        self._workdir = Path(tempfile.mkdtemp(prefix="ipledger-kube-"))
        atexit.register(self.stop)
        try:
            deadline = time.monotonic() + self._startup_timeout
            self._credentials = _write_credentials(self._workdir / "pki")
            self._start_etcd(deadline)
            self._prepare_apiserver()
            self._start_apiserver(deadline)
            self._install_crd(deadline)
        except BaseException:
            self.stop()
            raise

    def restart_apiserver(self) -> None:
        """Stop the apiserver and start it again on the same port with the same etcd.

        Returns once `/healthz` is ok and the CRD is served again, so stored objects are
        readable; clients holding connections see them dropped, as in a real restart.
        """
        if self._apiserver is None:
            raise KubeHarnessError("the API server is not running")
        _terminate(self._apiserver)
        self._apiserver = None
        deadline = time.monotonic() + self._startup_timeout
        self._start_apiserver(deadline)
        self._wait_until_served(deadline)

    def stop(self) -> None:
        """Stop both processes and delete the data directory. Safe to call more than once."""
        atexit.unregister(self.stop)
        for process in (self._apiserver, self._etcd):
            if process is not None:
                _terminate(process)
        self._apiserver = self._etcd = None
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._credentials = None
        self._kubeconfig_path = None
        self._url = self._etcd_url = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_etcd(self, deadline: float) -> None:
        assert self._workdir is not None
        client_port, peer_port = _free_ports(2)
        self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = self._workdir / "etcd"
        data_dir.mkdir(mode=0o700)
        self._etcd = self._spawn(
            "etcd",
            [
                str(self._bin_dir / "etcd"),
                "--name=ipledger-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=ipledger-test={peer_url}",
                # A throw-away store: durability across power loss is worth nothing here, and
                # fsync dominates write latency on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        etcd = self._etcd

        def healthy() -> bool:
            body = _get(f"{self._etcd_url}/health", None)
            return body is not None and json.loads(body).get("health") == "true"

        self._poll("etcd /health", healthy, etcd, deadline)

    def _prepare_apiserver(self) -> None:
        assert self._workdir is not None and self._credentials is not None
        credentials = self._credentials
        (port,) = _free_ports(1)
        self._url = f"https://127.0.0.1:{port}"
        fake_kubeconfig = self._workdir / "unused.kubeconfig"
        fake_kubeconfig.write_text(json.dumps(_kubeconfig(server=_REFUSING_URL)))
        self._kubeconfig_path = self._workdir / "kubeconfig"
        self._kubeconfig_path.write_text(
            json.dumps(
                _kubeconfig(
                    server=self._url,
                    ca_data=credentials.ca_cert.read_bytes(),
                    cert_data=credentials.client_cert.read_bytes(),
                    key_data=credentials.client_key.read_bytes(),
                ),
                indent=2,
            )
        )
        self._apiserver_args = [
            str(self._bin_dir / "apiextensions-apiserver"),
            f"--etcd-servers={self._etcd_url}",
            f"--etcd-prefix=/registry/ipledger-{uuid.uuid4().hex}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self._workdir / 'apiserver-certs'}",
            f"--tls-cert-file={credentials.serving_cert}",
            f"--tls-private-key-file={credentials.serving_key}",
            f"--client-ca-file={credentials.ca_cert}",
            f"--kubeconfig={fake_kubeconfig}",
            f"--authentication-kubeconfig={fake_kubeconfig}",
            f"--authorization-kubeconfig={fake_kubeconfig}",
            # Otherwise it reads kube-system/extension-apiserver-authentication at startup.
            "--authentication-skip-lookup",
            # APF needs a core clientset and flowcontrol informers, which do not exist here.
            "--enable-priority-and-fairness=false",
            f"--disable-admission-plugins={_DISABLED_ADMISSION_PLUGINS}",
        ]

    def _start_apiserver(self, deadline: float) -> None:
        self._apiserver = self._spawn("apiserver", self._apiserver_args)
        context = self._ssl_context()
        self._poll(
            "apiserver /healthz",
            lambda: _get(f"{self._url}/healthz", context) == b"ok",
            self._apiserver,
            deadline,
        )

    def _install_crd(self, deadline: float) -> None:
        # Sent as YAML, byte for byte what Cilium ships: the server converts it, so the harness
        # needs no YAML parser and cannot alter the definition.
        created = _request(
            f"{self._url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            self._ssl_context(),
            method="POST",
            body=self._crd_file.read_bytes(),
            content_type="application/yaml",
        )
        spec = json.loads(created)["spec"]
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        self._served_path = f"/apis/{spec['group']}/{storage}/{spec['names']['plural']}"
        self._wait_until_served(deadline)

    def _wait_until_served(self, deadline: float) -> None:
        # Discovery listing the group/version is what client-go's fixtures wait on; a successful
        # list on top of it proves the storage for the resource is wired up after a restart too.
        group_version, plural = self._served_path.rsplit("/", 1)
        context = self._ssl_context()

        def served() -> bool:
            discovery = _get(f"{self._url}{group_version}", context)
            if discovery is None:
                return False
            names = {r["name"] for r in json.loads(discovery).get("resources", [])}
            return plural in names and _get(f"{self._url}{self._served_path}", context) is not None

        assert self._apiserver is not None
        self._poll(f"{self._served_path} to be served", served, self._apiserver, deadline)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._credentials is not None
        context = ssl.create_default_context(cafile=self._credentials.ca_cert)
        context.load_cert_chain(self._credentials.client_cert, self._credentials.client_key)
        return context

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self._workdir is not None
        if name not in self._logs:
            self._logs[name] = (self._workdir / f"{name}.log").open("ab")
        log = self._logs[name]
        # Own session: a Ctrl-C aimed at pytest must not kill the servers before the fixture's
        # teardown has had a chance to stop them in order.
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._workdir,
            start_new_session=True,
        )

    def _poll(
        self,
        what: str,
        ready: Callable[[], bool],
        process: subprocess.Popen[bytes],
        deadline: float,
    ) -> None:
        while True:
            if process.poll() is not None:
                raise KubeHarnessError(
                    f"exited with code {process.returncode} while waiting for {what}\n"
                    f"{self._log_tails()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise KubeHarnessError(
                    f"timed out after {self._startup_timeout}s waiting for {what}\n"
                    f"{self._log_tails()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_tails(self) -> str:
        tails = []
        for log in self._logs.values():
            log.flush()
            with open(log.name, "rb") as reader:
                reader.seek(max(0, os.fstat(reader.fileno()).st_size - _LOG_TAIL_BYTES))
                tail = reader.read().decode(errors="replace")
            tails.append(f"--- {log.name} (tail) ---\n{tail}")
        return "\n".join(tails)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """A started `KubeAPIServer` shared by the session, stopped at its end.

    Without built binaries the test is skipped locally, but fails under `CI=true` so a broken
    `make services` cannot turn into a green run of skipped tests.
    """
    missing = missing_binaries()
    if missing:
        reason = f"kube binaries not built ({', '.join(p.name for p in missing)}): make services"
        if os.environ.get("CI", "").lower() == "true":
            raise KubeHarnessError(reason)
        pytest.skip(reason)
    with KubeAPIServer() as server:
        yield server


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            children.kill_group(process)


def _free_ports(count: int) -> list[int]:
    # All bound at once so the kernel cannot hand out the same port twice; the servers bind them
    # a moment later, a race that is accepted for loopback test ports.
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _request(
    url: str,
    context: ssl.SSLContext | None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
) -> bytes:
    headers = {"Accept": "application/json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        exc.close()
        raise KubeHarnessError(f"{method} {url} -> {exc.code}: {detail}") from exc


def _get(url: str, context: ssl.SSLContext | None) -> bytes | None:
    """The body of a 200 response, or None while the server refuses, errors or is not ready."""
    try:
        return _request(url, context)
    except (KubeHarnessError, OSError):
        return None


def _kubeconfig(
    *,
    server: str,
    ca_data: bytes | None = None,
    cert_data: bytes | None = None,
    key_data: bytes | None = None,
) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cluster: dict[str, str] = {"server": server}
    user: dict[str, str] = {}
    if ca_data is not None:
        cluster["certificate-authority-data"] = b64(ca_data)
    if cert_data is not None and key_data is not None:
        user["client-certificate-data"] = b64(cert_data)
        user["client-key-data"] = b64(key_data)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ipledger-test", "cluster": cluster}],
        "users": [{"name": CLIENT_USER, "user": user}],
        "contexts": [
            {"name": "ipledger-test", "context": {"cluster": "ipledger-test", "user": CLIENT_USER}}
        ],
        "current-context": "ipledger-test",
        "preferences": {},
    }


def _write_credentials(directory: Path) -> _Credentials:
    """A fresh CA, a serving certificate for 127.0.0.1/localhost and a `system:masters` client.

    x509 authentication maps CN to the user and O to groups; `system:masters` is allowed by the
    apiserver's privileged-group authorizer, so authorization never reaches the refusing
    kubeconfig. P-256 keys keep generation to milliseconds.
    """
    directory.mkdir(mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    lifetime = datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipledger-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
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

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving_cert, serving_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
        ),
    )
    client_cert, client_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLIENT_GROUP),
                x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_USER),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
    )

    def write_cert(name: str, cert: x509.Certificate) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = directory / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    return _Credentials(
        ca_cert=write_cert("ca.crt", ca_cert),
        serving_cert=write_cert("apiserver.crt", serving_cert),
        serving_key=write_key("apiserver.key", serving_key),
        client_cert=write_cert("client.crt", client_cert),
        client_key=write_key("client.key", client_key),
    )
