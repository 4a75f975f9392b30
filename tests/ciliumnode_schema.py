"""Checks a CiliumNode object against the ``openAPIV3Schema`` of Cilium's CiliumNode CRD.

The CRD is the file the Kubernetes harness installs (``tests.harness.kube.crd_path``), taken
from Cilium's Go module by ``make services``, or that of another Cilium release it lists. Valid
means: the schema validates it, and it has no field the schema does not declare (an API server
would prune such a field silently, so a file holding one would not be what the cluster
stores). Used by tests/unit/test_ciliumnode_files.py and tests/e2e/test_make_run.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.harness import kube


def crd_schema(version: str | None = None) -> dict[str, Any]:
    """The v2 schema of Cilium ``version``'s CRD (default: the one the harness installs); skips
    the test when ``make services`` has not fetched it."""
    path = kube.crd_path(version)
    if not path.is_file():
        pytest.skip(f"Cilium's CiliumNode CRD is not at {path}")
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2"]
    found: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return found


def undeclared(obj: object, schema: Mapping[str, Any], where: str = "") -> Iterator[str]:
    """Paths in ``obj`` the structural schema does not declare (what a server would prune)."""
    if isinstance(obj, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            path = f"{where}.{key}"
            if where == "" and key == "metadata":
                continue  # ObjectMeta: validated by the server itself, not the CRD schema
            if properties is not None and key in properties:
                yield from undeclared(value, properties[key], path)
            elif isinstance(extra, dict):
                yield from undeclared(value, extra, path)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield path
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            yield from undeclared(item, schema["items"], f"{where}[{index}]")


def assert_valid(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    """The CiliumNode in the YAML file ``path``, asserted valid; named after its file."""
    obj: dict[str, Any] = yaml.safe_load(path.read_text())
    jsonschema.Draft7Validator(schema).validate(obj)
    assert list(undeclared(obj, schema)) == [], path.read_text()
    assert obj["apiVersion"] == "cilium.io/v2" and obj["kind"] == "CiliumNode"
    assert obj["metadata"]["name"] == path.stem
    return obj
