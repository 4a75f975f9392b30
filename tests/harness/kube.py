"""A real Kubernetes control plane for tests: kube-apiserver v1.36 backed by etcd.

`KubeAPIServer` starts etcd and kube-apiserver (built by `compose/kube/build.sh` into
`$IPLEDGER_CACHE/kube/bin/`) on free 127.0.0.1 ports and installs Cilium's CiliumNode CRD, taken
unmodified from Cilium's Go module by the same script (`$IPLEDGER_CACHE/kube/crds/`, versions
and sha256 pinned in compose/kube/cilium-crds.txt). It is the API server a cluster runs, whole:
the core API (`/api`: Nodes, Namespaces, ServiceAccounts, Events...), discovery, OpenAPI,
admission, priority and fairness, and `Node,RBAC` authorization. What it is not is a cluster:
no kube-controller-manager runs, so nothing garbage-collects dependants of a deleted object or
empties a deleted namespace, and no kubelet registers Nodes (tests create them).

Security is set up as a cluster's is, with throw-away material made per server:
- TLS: a fresh CA signs the serving certificate (127.0.0.1, localhost) and client certificates;
- authentication: x509 client certificates (CN = user, O = groups) and ServiceAccount tokens,
  signed with a per-server key and minted through the TokenRequest API;
- authorization: RBAC (and the Node authorizer); `kubeconfig_path` is the admin's kubeconfig
  (`system:masters`) for setup, and `client_certificate_kubeconfig` /
  `service_account_kubeconfig` give credentials that have only what RBAC objects grant them
  (`apply` creates those objects, e.g. compose/kubernetes/rbac.yaml);
- audit: every request but health checks is logged at the Metadata level (user, verb, resource,
  response code) to `audit_log_path` in JSON lines; `audit_events()` reads them.

Users: the session fixture `kube_apiserver` (registered through `pytest_plugins` in
tests/conftest.py), tests that need their own server (one per Cilium CRD version), and
benchmarks, which use the class directly or as a context manager. Both processes are stopped by
`stop()`, by leaving the context, or at interpreter exit. The certificate authority and keys are
in tests/harness/kube_pki.py. Over 400 lines because starting the control plane, waiting for it
and handing out credentials on it are one job whose parts share the server's private state.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
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
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest
import yaml

from service.adapters import children
from tests.harness.kube_pki import (
    CLIENT_USER,
    Credentials,
    mint_client_pair,
    write_credentials,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_LIST = REPO_ROOT / "compose" / "kube" / "cilium-crds.txt"
BINARIES = ("etcd", "kube-apiserver")
# The field manager of everything the harness itself applies (RBAC objects, namespaces...).
HARNESS_FIELD_MANAGER = "ipledger-test-harness"
# Where ServiceAccount tokens say they come from; any URL works for a cluster nobody federates.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Cluster IPs are only allocated, never routed: nothing listens on them on this machine.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Probes (the harness polls /readyz) and the server's own loopback traffic are noise.
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "None", "users": ["system:apiserver"]},
        {"level": "Metadata"},
    ],
}
_POLL_INTERVAL = 0.05
_STOP_TIMEOUT = 15.0
_LOG_TAIL_BYTES = 4000
_TOKEN_SECONDS = 24 * 3600


class KubeHarnessError(RuntimeError):
    """The test Kubernetes API server could not be started, did not become ready, or refused."""


class KubeRequestError(KubeHarnessError):
    """A request the harness made was answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def cache_dir() -> Path:
    """Where `make services` puts built artefacts: `$IPLEDGER_CACHE`, else `<repo>/.cache`."""
    return Path(os.environ.get("IPLEDGER_CACHE") or REPO_ROOT / ".cache")


def binary_dir() -> Path:
    """The directory `compose/kube/build.sh` builds etcd and kube-apiserver into."""
    return cache_dir() / "kube" / "bin"


def missing_binaries(directory: Path | None = None) -> list[Path]:
    """The binaries the harness needs that are not (yet) built; empty when it can run."""
    directory = directory or binary_dir()
    return [directory / name for name in BINARIES if not os.access(directory / name, os.X_OK)]


def cilium_crd_versions() -> list[str]:
    """The Cilium versions of compose/kube/cilium-crds.txt, the default (tested against) first."""
    versions = []
    for line in CRD_LIST.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            versions.append(fields[0])
    return versions


def crd_path(version: str | None = None) -> Path:
    """Cilium's CiliumNode CRD of `version` (default: the list's first) as build.sh stored it."""
    version = version or cilium_crd_versions()[0]
    return cache_dir() / "kube" / "crds" / f"cilium-{version}" / "ciliumnodes.yaml"


def missing_services() -> list[Path]:
    """What `make services` should have produced for the default server and has not."""
    missing = missing_binaries()
    if not crd_path().is_file():
        missing.append(crd_path())
    return missing


class KubeAPIServer:
    """etcd plus kube-apiserver on loopback, with Cilium's CiliumNode CRD installed.

    `start()` blocks until `/readyz` passes, the system namespaces exist and `cilium.io/v2`
    ciliumnodes are served; clients use `kubeconfig_path` (admin) or credentials minted by
    `client_certificate_kubeconfig` / `service_account_kubeconfig`. `restart_apiserver()`
    restarts only the apiserver, on the same port and the same etcd, so stored objects survive.
    Not thread-safe; one instance per test session (or per CRD version) is the intent.

    Upstream quirk worth knowing when timing things: for about two seconds after the CRD becomes
    Established, every POST (create) of a CiliumNode is held for 2 s by the apiserver on purpose
    (an HA safeguard in the CRD handler); server-side apply and other verbs are not delayed.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        crd_file: Path | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self._bin_dir = bin_dir or binary_dir()
        self._crd_file = crd_file or crd_path()
        self._startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._credentials: Credentials | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._apiserver_args: list[str] = []
        self._etcd_url = ""
        self._url = ""
        self._kubeconfig_path: Path | None = None
        self._audit_log_path: Path | None = None
        self._served_path = ""
        self._logs: dict[str, IO[bytes]] = {}
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    @property
    def url(self) -> str:
        """The apiserver's base URL, e.g. `https://127.0.0.1:40123`."""
        if not self._url:
            raise KubeHarnessError("the API server has not been started")
        return self._url

    @property
    def kubeconfig_path(self) -> Path:
        """The admin's kubeconfig (`system:masters`): server, CA and client pair inlined."""
        if self._kubeconfig_path is None:
            raise KubeHarnessError("the API server has not been started")
        return self._kubeconfig_path

    @property
    def audit_log_path(self) -> Path:
        """The audit log: one JSON `audit.k8s.io/v1` Event per line, written as requests end."""
        if self._audit_log_path is None:
            raise KubeHarnessError("the API server has not been started")
        return self._audit_log_path

    @property
    def crd_file(self) -> Path:
        """The CiliumNode CRD this server installed."""
        return self._crd_file

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
            raise KubeHarnessError(
                f"CiliumNode CRD not found at {self._crd_file}; run `bash compose/kube/build.sh`"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="ipledger-kube-"))
        atexit.register(self.stop)
        try:
            deadline = time.monotonic() + self._startup_timeout
            self._credentials = write_credentials(self._workdir / "pki")
            self._start_etcd(deadline)
            self._prepare_apiserver()
            self._start_apiserver(deadline)
            self._wait_for_namespace("kube-system", deadline)
            self._install_crd(deadline)
        except BaseException:
            self.stop()
            raise

    def restart_apiserver(self) -> None:
        """Stop the apiserver and start it again on the same port with the same etcd.

        Returns once `/readyz` passes and the CRD is served again, so stored objects are
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
        self._kubeconfig_path = self._audit_log_path = None
        self._url = self._etcd_url = ""
        self._resources.clear()

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

    # --- requests as the admin, and credentials for everyone else ------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """`method path` as the admin; the decoded JSON answer. Raises `KubeRequestError`."""
        data = None if body is None else json.dumps(body).encode()
        answer = _request(
            f"{self.url}{path}",
            self._ssl_context(),
            method=method,
            body=data,
            content_type=content_type if data is not None else None,
        )
        decoded: dict[str, Any] = json.loads(answer) if answer else {}
        return decoded

    def apply(self, objects: Sequence[Mapping[str, Any]] | str | Path) -> list[dict[str, Any]]:
        """Server-side apply `objects` as the admin (dicts, YAML text or a YAML file's path).

        Multi-document YAML is split as kubectl does; each object's URL comes from discovery.
        Returns the objects as stored.
        """
        if isinstance(objects, Path):
            objects = objects.read_text()
        if isinstance(objects, str):
            objects = [doc for doc in yaml.safe_load_all(objects) if doc]
        applied = []
        for obj in objects:
            path = self.object_path(obj)
            query = urllib.parse.urlencode({"fieldManager": HARNESS_FIELD_MANAGER, "force": "true"})
            applied.append(
                self.request(
                    "PATCH", f"{path}?{query}", obj, content_type="application/apply-patch+yaml"
                )
            )
        return applied

    def object_path(self, obj: Mapping[str, Any]) -> str:
        """The REST path of `obj` (from its apiVersion, kind, name and namespace)."""
        api_version: str = obj["apiVersion"]
        kind: str = obj["kind"]
        plural, namespaced = self._resource(api_version, kind)
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        metadata = obj.get("metadata", {})
        if namespaced:
            prefix += f"/namespaces/{metadata.get('namespace', 'default')}"
        return f"{prefix}/{plural}/{metadata['name']}"

    def client_certificate_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as `user` in `groups` with a client certificate.

        The user has exactly what RBAC grants that name or those groups (nothing by default,
        beyond what Kubernetes gives every authenticated user: discovery, self-reviews).
        """
        assert self._credentials is not None and self._workdir is not None
        cert, key = mint_client_pair(self._credentials, user, groups)
        path = self._workdir / f"user-{_safe(user)}.kubeconfig"
        path.write_text(
            json.dumps(
                _kubeconfig(
                    server=self.url,
                    user=user,
                    ca_data=self._credentials.ca_cert.read_bytes(),
                    cert_data=cert,
                    key_data=key,
                ),
                indent=2,
            )
        )
        path.chmod(0o600)
        return path

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig with a token of ServiceAccount `namespace/name` from the TokenRequest API.

        Creates the ServiceAccount (and namespace) when missing, as a pod's would exist; it has
        what RBAC binds to `system:serviceaccount:<namespace>:<name>` and nothing else.
        """
        assert self._credentials is not None and self._workdir is not None
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace},
                },
            ]
        )
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": _TOKEN_SECONDS},
            },
        )
        token: str = answer["status"]["token"]
        user = f"system:serviceaccount:{namespace}:{name}"
        path = self._workdir / f"sa-{_safe(namespace)}-{_safe(name)}.kubeconfig"
        path.write_text(
            json.dumps(
                _kubeconfig(
                    server=self.url,
                    user=user,
                    ca_data=self._credentials.ca_cert.read_bytes(),
                    token=token,
                ),
                indent=2,
            )
        )
        path.chmod(0o600)
        return path

    def audit_events(self, *, user: str | None = None) -> list[dict[str, Any]]:
        """The audit log's events so far, optionally only `user`'s.

        Stages: ResponseComplete (and Panic) for every request, ResponseStarted too for
        long-running ones such as watches. The log backend writes each event before the
        response is sent (blocking mode), so a request that has been answered is in the file.
        """
        events = []
        with self.audit_log_path.open() as log:
            for line in log:
                if not line.endswith("\n"):
                    break  # being written right now: an event of a request not yet answered
                if not line.strip():
                    continue
                event: dict[str, Any] = json.loads(line)
                if user is None or event.get("user", {}).get("username") == user:
                    events.append(event)
        return events

    # --- start-up --------------------------------------------------------------------------------

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
        self._kubeconfig_path = self._workdir / "kubeconfig"
        self._kubeconfig_path.write_text(
            json.dumps(
                _kubeconfig(
                    server=self._url,
                    user=CLIENT_USER,
                    ca_data=credentials.ca_cert.read_bytes(),
                    cert_data=credentials.client_cert.read_bytes(),
                    key_data=credentials.client_key.read_bytes(),
                ),
                indent=2,
            )
        )
        self._kubeconfig_path.chmod(0o600)
        policy = self._workdir / "audit-policy.json"
        policy.write_text(json.dumps(_AUDIT_POLICY, indent=2))
        self._audit_log_path = self._workdir / "audit.log"
        self._apiserver_args = [
            str(self._bin_dir / "kube-apiserver"),
            f"--etcd-servers={self._etcd_url}",
            f"--etcd-prefix=/registry/ipledger-{uuid.uuid4().hex}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self._workdir / 'apiserver-certs'}",
            f"--tls-cert-file={credentials.serving_cert}",
            f"--tls-private-key-file={credentials.serving_key}",
            f"--client-ca-file={credentials.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={credentials.service_account_public_key}",
            f"--service-account-signing-key-file={credentials.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self._audit_log_path}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
            # The `kubernetes` Service's endpoints would name 127.0.0.1, which Endpoints
            # validation refuses; nothing here reaches the apiserver through that Service.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _start_apiserver(self, deadline: float) -> None:
        self._apiserver = self._spawn("apiserver", self._apiserver_args)
        context = self._ssl_context()
        self._poll(
            "apiserver /readyz",
            lambda: _get(f"{self._url}/readyz", context) == b"ok",
            self._apiserver,
            deadline,
        )

    def _wait_for_namespace(self, name: str, deadline: float) -> None:
        # The apiserver creates the system namespaces from a controller that runs after /readyz.
        context = self._ssl_context()
        assert self._apiserver is not None
        self._poll(
            f"namespace {name}",
            lambda: _get(f"{self._url}/api/v1/namespaces/{name}", context) is not None,
            self._apiserver,
            deadline,
        )

    def _install_crd(self, deadline: float) -> None:
        # Sent as YAML, byte for byte what Cilium ships: the server converts it, so the harness
        # cannot alter the definition.
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

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of `kind` in `api_version`, from discovery, cached."""
        key = (api_version, kind)
        if key not in self._resources:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            for resource in self.request("GET", path)["resources"]:
                if "/" not in resource["name"]:
                    self._resources[(api_version, resource["kind"])] = (
                        resource["name"],
                        resource["namespaced"],
                    )
            if key not in self._resources:
                raise KubeHarnessError(f"{api_version} serves no kind {kind}")
        return self._resources[key]

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

    Without built binaries or fetched CRD the test is skipped locally, but fails under `CI=true`
    so a broken `make services` cannot turn into a green run of skipped tests.
    """
    require_services()
    with KubeAPIServer() as server:
        yield server


def require_services(crd_file: Path | None = None) -> None:
    """Skip the calling test (fail it under `CI=true`) unless `make services` built everything."""
    missing = missing_services()
    if crd_file is not None and not crd_file.is_file():
        missing.append(crd_file)
    if missing:
        reason = f"kube services not built ({', '.join(map(str, missing))}): make services"
        if os.environ.get("CI", "").lower() == "true":
            raise KubeHarnessError(reason)
        pytest.skip(reason)


def require_kubectl() -> str:
    """The machine's kubectl; skips the calling test without one (fails it under `CI=true`)."""
    found = shutil.which("kubectl")
    if found is None:
        reason = "kubectl is not on PATH"
        if os.environ.get("CI", "").lower() == "true":
            raise KubeHarnessError(reason)
        pytest.skip(reason)
    return found


def kubectl(
    kubeconfig: Path, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the machine's kubectl with `kubeconfig`, as an operator would; output captured.

    Its discovery cache goes beside the kubeconfig (the server's work directory), not into
    ~/.kube. The exit code is the caller's to check: refusals are part of what tests look at.
    """
    return subprocess.run(
        [
            require_kubectl(),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        exc.close()
        raise KubeRequestError(f"{method} {url} -> {exc.code}: {detail}", exc.code) from exc


def _get(url: str, context: ssl.SSLContext | None) -> bytes | None:
    """The body of a 200 response, or None while the server refuses, errors or is not ready."""
    try:
        return _request(url, context)
    except (KubeHarnessError, OSError):
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _kubeconfig(
    *,
    server: str,
    user: str,
    ca_data: bytes,
    cert_data: bytes | None = None,
    key_data: bytes | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cluster: dict[str, str] = {"server": server, "certificate-authority-data": b64(ca_data)}
    auth: dict[str, str] = {}
    if cert_data is not None and key_data is not None:
        auth["client-certificate-data"] = b64(cert_data)
        auth["client-key-data"] = b64(key_data)
    if token is not None:
        auth["token"] = token
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ipledger-test", "cluster": cluster}],
        "users": [{"name": user, "user": auth}],
        "contexts": [
            {"name": "ipledger-test", "context": {"cluster": "ipledger-test", "user": user}}
        ],
        "current-context": "ipledger-test",
        "preferences": {},
    }
