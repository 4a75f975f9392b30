"""The configuration file, the precedence flag > environment > file > default, and its docs.

``service.configuration.load`` against files written by each test: every setting reaches the
same ``Settings`` field from its file key and from its variable; each layer beats the ones
below it; a bad file (unknown section or key, wrong type, invalid TOML, missing) is an error
naming the file and the key; secrets are redacted by ``ipledger config``. The settings tables of
docs/configuration.md and examples/ipledger.toml are checked against ``OPTIONS`` and the
``Settings`` defaults, so that neither can fall behind the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service import cli, configuration, errors
from service.settings import KubeTarget, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "ipledger.toml"


def write(tmp_path: Path, text: str, name: str = "ipledger.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path: Path | None = None, env: dict[str, str] | None = None, **flags: Any) -> Settings:
    return configuration.load(env=env or {}, flags=flags, path=path).settings


# --- every setting, from the file and from the environment ----------------------------------


def test_every_settings_field_has_one_option_with_a_file_key_and_a_variable() -> None:
    fields = [field.name for field in dataclasses.fields(Settings)]
    assert sorted(configuration.BY_FIELD) == sorted(fields)
    assert len(configuration.BY_KEY) == len(configuration.OPTIONS)
    assert len({o.env for o in configuration.OPTIONS}) == len(configuration.OPTIONS)
    assert all(o.env.startswith("IPLEDGER_") for o in configuration.OPTIONS)
    assert all(re.fullmatch(r"[a-z_]+\.[a-z_0-9]+", o.key) for o in configuration.OPTIONS)


def _sample(option: configuration.Option) -> tuple[Any, Any]:
    """A value other than the default for ``option``: as TOML writes it, and as ``Settings``
    then holds it (for a file at /cfg/ipledger.toml)."""
    default = getattr(Settings(), option.field)
    if option.kind == "bool":
        return (not default), (not default)
    if option.kind == "int":
        value = 9100 if default is None else int(default) + 3
        return value, value
    if option.kind == "float":
        return 2.5, 2.5
    if option.kind == "choice":
        (other,) = [c for c in option.choices if c != default]
        return other, other
    if option.kind == "path":
        return f"/srv/{option.field}", Path(f"/srv/{option.field}")
    if option.kind == "clusters":
        return {"east": {"kubeconfig": "/k/east", "context": "e"}}, {
            "east": KubeTarget(kubeconfig=Path("/k/east"), context="e")
        }
    text = _VALID_TEXT.get(option.field, f"{option.field}-value")
    return text, text


def _toml(key: str, value: Any) -> str:
    section, _, name = key.partition(".")
    if isinstance(value, dict):
        return "\n".join(
            f"[{key}.{cluster}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in target.items())
            for cluster, target in value.items()
        )
    return f"[{section}]\n{name} = {json.dumps(value)}"


# Texts with a form of their own.
_VALID_TEXT = {
    "api_address": "0.0.0.0:9000",
    "database_url": "postgresql://ipledger@db.example:5432/ipledger",
    "api_database_url": "postgresql://reader@db.example:5432/ipledger",
}
# Settings that cannot stand alone: kafka needs its bootstrap.
_NEEDS = {"log": {"IPLEDGER_KAFKA_BOOTSTRAP": "k:9092"}}


@pytest.mark.parametrize("option", configuration.OPTIONS, ids=lambda o: o.key)
def test_each_setting_reaches_its_field_from_the_file_and_from_its_variable(
    tmp_path: Path, option: configuration.Option
) -> None:
    written, held = _sample(option)
    needs = _NEEDS.get(option.field, {})
    from_file = configuration.load(env=needs, path=write(tmp_path, _toml(option.key, written)))
    assert getattr(from_file.settings, option.field) == held
    assert from_file.sources[option.field] == "file"
    if option.kind == "clusters":
        text = "east=/k/east#e"
    elif option.kind == "bool":
        text = "true" if written else "false"
    else:
        text = str(written)
    from_env = configuration.load(env={**needs, option.env: text})
    assert getattr(from_env.settings, option.field) == held
    assert from_env.sources[option.field] == "env"
    assert configuration.load(env=needs).sources.get(option.field, "default") == "default"


# --- precedence ----------------------------------------------------------------------------


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[event_log]\npartitions = 3\n[sync]\nburst = 9\nqps = 1.5\n")
    effective = configuration.load(
        env={"IPLEDGER_PARTITIONS": "5", "IPLEDGER_SYNC_BURST": "11"},
        flags={"partitions": 7, "sync_qps": None},
        path=path,
    )
    settings = effective.settings
    assert (settings.partitions, settings.sync_burst, settings.sync_qps) == (7, 11, 1.5)
    assert settings.sync_concurrency == Settings().sync_concurrency
    sources = effective.sources
    assert (sources["partitions"], sources["sync_burst"], sources["sync_qps"]) == (
        "flag",
        "env",
        "file",
    )
    assert "sync_concurrency" not in sources
    # The environment alone beats the file; an empty variable counts as unset.
    assert load(path, {"IPLEDGER_PARTITIONS": "5"}).partitions == 5
    assert load(path, {"IPLEDGER_PARTITIONS": ""}).partitions == 3


def test_the_file_comes_from_the_flag_else_from_ipledger_config(tmp_path: Path) -> None:
    by_env = write(tmp_path, "[event_log]\npartitions = 2\n", "env.toml")
    by_flag = write(tmp_path, "[event_log]\npartitions = 4\n", "flag.toml")
    assert load(None, {"IPLEDGER_CONFIG": str(by_env)}).partitions == 2
    assert load(by_flag, {"IPLEDGER_CONFIG": str(by_env)}).partitions == 4
    assert configuration.load(env={}).path is None


def test_a_layer_can_complete_what_another_one_gives(tmp_path: Path) -> None:
    """Validation runs on the layered result: the file's kafka, the flag's bootstrap."""
    path = write(tmp_path, '[event_log]\nkind = "kafka"\n')
    settings = load(path, kafka_bootstrap="broker:9092")
    assert (settings.log, settings.kafka_bootstrap) == ("kafka", "broker:9092")
    with pytest.raises(errors.ConfigurationError) as raised:
        load(path)
    assert str(raised.value) == (
        f"IPLEDGER_LOG=kafka needs IPLEDGER_KAFKA_BOOTSTRAP (set as event_log.kind in {path})"
    )


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\ndata_dir = "state"\n[kubernetes]\nkubeconfig = "~/kube.yaml"\n'
        '[kubernetes.clusters.west]\nkubeconfig = "kube/west.yaml"\n',
    )
    settings = load(path)
    assert settings.data_dir == tmp_path / "state"
    assert settings.kubeconfig == Path("~/kube.yaml").expanduser()
    assert settings.kube_clusters == {"west": KubeTarget(tmp_path / "kube/west.yaml", None)}
    # In the environment, relative to the working directory as before.
    assert load(path, {"IPLEDGER_DATA_DIR": "here"}).data_dir == Path("here")


# --- errors: each names the file and the key ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[databse]\nurl = 'x'\n", "unknown section 'databse' (did you mean 'database'?)"),
        ("partitions = 3\n", "unknown key 'partitions'"),
        ("[sync]\nbrust = 3\n", "unknown key 'sync.brust' (did you mean 'sync.burst'?)"),
        ("[sync]\nqps = 'fast'\n", "sync.qps must be a number, not the string 'fast'"),
        ("[sync]\nburst = 2.5\n", "sync.burst must be an integer, not the number 2.5"),
        ("[sync]\nburst = true\n", "sync.burst must be an integer, not the boolean true"),
        ("[sync]\ncreate_missing = 'yes'\n", "sync.create_missing must be true or false"),
        ("[event_log]\nkind = 'nats'\n", "event_log.kind must be one of 'table', 'kafka'"),
        ("[database]\nurl = ''\n", "database.url is empty: leave the key out"),
        ("[database]\nurl = 5\n", "database.url must be a string, not the number 5"),
        ("sync = 3\n", "sync must be a table ([sync]), not the number 3"),
        ("[kubernetes]\nclusters = 'east=/a'\n", "kubernetes.clusters must be a table"),
        (
            "[kubernetes.clusters.east]\nkubecfg = '/a'\n",
            "kubernetes.clusters.east: unknown key 'kubecfg' (did you mean 'kubeconfig'?)",
        ),
        ("[sync\nqps = 1\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(errors.ConfigurationError) as raised:
        load(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)


def test_a_missing_file_says_which_and_how_it_was_named(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="does not exist: fix --config or "):
        load(tmp_path / "nowhere.toml")


def test_a_bad_value_from_the_file_says_where_it_was_set(tmp_path: Path) -> None:
    path = write(tmp_path, "[event_log]\npartitions = 0\n")
    with pytest.raises(errors.ConfigurationError) as raised:
        load(path)
    assert str(raised.value) == (
        f"IPLEDGER_PARTITIONS must be at least 1 (set as event_log.partitions in {path})"
    )


# --- ipledger config: the effective settings, sources, redaction -----------------------------


def test_config_redacts_database_passwords_and_anything_named_like_a_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\nurl = "postgresql://ipledger:hunter2@db:5432/ipledger"\n'
        '[audit]\nsigning_key = "/etc/ipledger/heads.pem"\n',
    )
    rows = {row["key"]: row for row in configuration.load(env={}, path=path).describe()}
    assert rows["database.url"]["value"] == "postgresql://ipledger:***@db:5432/ipledger"
    assert rows["audit.signing_key"]["value"] == "***"
    assert rows["database.url"]["source"] == "file"
    text = configuration.as_toml(configuration.load(env={}, path=path))
    assert "hunter2" not in text and "heads.pem" not in text
    for field in ("api_token", "admin_password", "tls_key", "client_secret"):
        option = configuration.Option(field, f"x.{field}", "IPLEDGER_X", "str")
        assert configuration.shown(option, "s3cr3t") == configuration.REDACTED
    plain = configuration.Option("kubeconfig", "k.k", "IPLEDGER_K", "path")
    assert configuration.shown(plain, Path("/a")) == "/a"


def test_config_prints_a_toml_file_that_reads_back_as_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "[sync]\nqps = 3.5\n[kubernetes.clusters.east]\nkubeconfig = '/k/east'\n",
    )
    for name in [name for name in os.environ if name.startswith("IPLEDGER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IPLEDGER_SYNC_BURST", "7")
    assert cli.main(["config", "--config", str(path), "--partitions", "3"]) == 0
    text = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["qps"].endswith("# file, IPLEDGER_SYNC_QPS")
    assert lines["burst"].endswith("# env, IPLEDGER_SYNC_BURST")
    assert lines["partitions"].endswith("# flag, IPLEDGER_PARTITIONS")
    assert lines["concurrency"].endswith("# default, IPLEDGER_SYNC_CONCURRENCY")
    assert "# kafka_bootstrap is unset" in text
    # The output is a configuration file: read back, it gives the same settings (the data
    # dir, relative to the working directory, then relative to the file: the same one here).
    monkeypatch.chdir(tmp_path)
    again = load(write(tmp_path, text, "again.toml"))
    expected = load(path, {"IPLEDGER_SYNC_BURST": "7"}, partitions=3)
    assert again.data_dir == tmp_path / expected.data_dir
    assert dataclasses.replace(again, data_dir=expected.data_dir) == expected
    assert cli.main(["config", "--config", str(path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["file"] == str(path)
    rows = {row["key"]: row for row in document["settings"]}
    assert rows["sync.qps"] == {
        "key": "sync.qps",
        "env": "IPLEDGER_SYNC_QPS",
        "value": 3.5,
        "source": "file",
    }
    assert rows["kubernetes.clusters"]["value"] == {
        "east": {"kubeconfig": "/k/east", "context": None}
    }
    assert [row["key"] for row in document["settings"]] == [o.key for o in configuration.OPTIONS]


def test_config_errors_exit_1_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[sync]\nbrust = 3\n")
    assert cli.main(["config", "--config", str(path)]) == 1
    assert "did you mean 'sync.burst'?" in capsys.readouterr().err


# --- the docs and the example agree with the code ---------------------------------------------


def _doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z_]+\.[a-z_0-9]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def _documented_default(option: configuration.Option) -> str | None:
    value = configuration.shown(option, getattr(Settings(), option.field))
    if value is None or value == {}:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _flags() -> dict[str, set[str]]:
    """Every option string of every sub-command, by the Settings field it sets through
    ``configuration.load`` (the flags the CLI layers over the environment)."""
    found: dict[str, set[str]] = {}
    fields = {*cli._SERVICE_FLAGS, *cli._KUBE_FLAGS, *cli._API_FLAGS}
    commands = next(
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for parser in commands.choices.values():
        for action in parser._actions:
            if action.dest in fields and action.option_strings:
                found.setdefault(action.dest, set()).update(
                    s for s in action.option_strings if not s.startswith("--no-")
                )
    return found


def test_the_settings_tables_of_the_docs_are_the_code() -> None:
    rows = _doc_rows()
    assert sorted(rows) == sorted(configuration.BY_KEY), "docs/configuration.md lists other keys"
    flags = _flags()
    for option in configuration.OPTIONS:
        _, env, flag, default, meaning = rows[option.key]
        assert env == f"`{option.env}`", option.key
        expected = _documented_default(option)
        if expected is None:
            assert default.startswith("—"), (option.key, default)
        else:
            assert default == f"`{expected}`", (option.key, default)
        documented = set(re.findall(r"`(--[a-z-]+)`", flag))
        assert documented == flags.get(option.field, set()), (option.key, flag)
        assert meaning


def test_the_example_file_loads_and_names_every_setting() -> None:
    effective = configuration.load(env={}, path=EXAMPLE)
    assert effective.settings.partitions == 4
    # Keys commented out (they would change what a copy of the example does) count too.
    uncommented = re.sub(r"^# ([a-z_]+ = .*)$", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    document = tomllib.loads(uncommented)
    keys = {
        f"{section}.{name}"
        for section, table in document.items()
        for name in table
        if not (section == "kubernetes" and name == "clusters")
    }
    assert keys | {"kubernetes.clusters"} == set(configuration.BY_KEY)
    assert set(effective.settings.kube_clusters) == {"east", "west"}
