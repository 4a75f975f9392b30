"""The configuration file and the one precedence: flag > environment > file > default.

``load`` is what the CLI calls once per command to build its frozen ``Settings``: the TOML file
named by ``--config`` or ``IPLEDGER_CONFIG`` (read with the standard library's ``tomllib``),
under the ``IPLEDGER_*`` environment, under the command's flags. ``OPTIONS`` is the one list of
every setting with its file key and its variable; the environment is still parsed by
``Settings.from_env`` alone, and a file value reaches it as the text of its variable, so both
spellings of a setting mean exactly the same. ``tests/unit/test_configuration.py`` checks that
every ``Settings`` field has an option here and that docs/configuration.md lists each one as
the code has it.

The file is checked before anything else: an unknown section or key, or a value of the wrong
type, is a ``ConfigurationError`` naming the file and the key (with the nearest known key when
one is close). Paths in the file are relative to the file's directory. ``Effective.describe``
is ``ipledger config``'s output: every setting, its value with secrets redacted, and where it
came from. Standard library only, so that the CLI may import it at module level.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service import errors
from service.settings import KubeTarget, Settings, redacted_url

Kind = Literal["str", "int", "float", "bool", "path", "choice", "clusters"]
Source = Literal["flag", "env", "file", "default"]
CONFIG_VARIABLE = "IPLEDGER_CONFIG"
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its ``Settings`` field, its file key (``section.name``) and its variable.

    ``secret``: ``"url"`` shows the value without its password, ``"value"`` hides all of it.
    """

    field: str
    key: str
    env: str
    kind: Kind
    choices: tuple[str, ...] = ()
    secret: Literal["", "url", "value"] = ""

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]


OPTIONS: tuple[Option, ...] = (
    Option("database_url", "database.url", "IPLEDGER_DATABASE_URL", "str", secret="url"),
    Option("data_dir", "database.data_dir", "IPLEDGER_DATA_DIR", "path"),
    Option("system_data_dir", "database.system_data_dir", "IPLEDGER_SYSTEM_DATA_DIR", "path"),
    Option("log", "event_log.kind", "IPLEDGER_LOG", "choice", choices=("table", "kafka")),
    Option("kafka_bootstrap", "event_log.kafka_bootstrap", "IPLEDGER_KAFKA_BOOTSTRAP", "str"),
    Option("events_topic", "event_log.events_topic", "IPLEDGER_EVENTS_TOPIC", "str"),
    Option("decisions_topic", "event_log.decisions_topic", "IPLEDGER_DECISIONS_TOPIC", "str"),
    Option("partitions", "event_log.partitions", "IPLEDGER_PARTITIONS", "int"),
    Option("batch_max_records", "allocator.batch_max_records", "IPLEDGER_BATCH_MAX_RECORDS", "int"),
    Option("batch_max_wait_ms", "allocator.batch_max_wait_ms", "IPLEDGER_BATCH_MAX_WAIT_MS", "int"),
    Option("lease_ttl_s", "allocator.lease_ttl_s", "IPLEDGER_LEASE_TTL_S", "int"),
    Option("instance_id", "allocator.instance_id", "IPLEDGER_INSTANCE_ID", "str"),
    Option("metrics_port", "allocator.metrics_port", "IPLEDGER_METRICS_PORT", "int"),
    Option("metrics_host", "metrics.host", "IPLEDGER_METRICS_HOST", "str"),
    Option("tree", "audit.tree", "IPLEDGER_TREE", "bool"),
    Option("tree_head_every", "audit.tree_head_every", "IPLEDGER_TREE_HEAD_EVERY", "int"),
    Option("tree_digest_every", "audit.tree_digest_every", "IPLEDGER_TREE_DIGEST_EVERY", "int"),
    Option("signing_key", "audit.signing_key", "IPLEDGER_SIGNING_KEY", "path", secret="value"),
    Option("kubeconfig", "kubernetes.kubeconfig", "IPLEDGER_KUBECONFIG", "path"),
    Option("kube_context", "kubernetes.context", "IPLEDGER_KUBE_CONTEXT", "str"),
    Option("kube_clusters", "kubernetes.clusters", "IPLEDGER_KUBECONFIGS", "clusters"),
    Option("ciliumnode_dir", "kubernetes.ciliumnode_dir", "IPLEDGER_CILIUMNODE_DIR", "path"),
    Option("sync_cluster", "sync.cluster", "IPLEDGER_SYNC_CLUSTER", "str"),
    Option("sync_qps", "sync.qps", "IPLEDGER_SYNC_QPS", "float"),
    Option("sync_burst", "sync.burst", "IPLEDGER_SYNC_BURST", "int"),
    Option("sync_concurrency", "sync.concurrency", "IPLEDGER_SYNC_CONCURRENCY", "int"),
    Option("resync_interval_s", "sync.resync_interval_s", "IPLEDGER_RESYNC_INTERVAL_S", "float"),
    Option("create_missing", "sync.create_missing", "IPLEDGER_SYNC_CREATE_MISSING", "bool"),
    Option("delete_orphans", "sync.delete_orphans", "IPLEDGER_SYNC_DELETE_ORPHANS", "bool"),
    Option("mirror_pod_ips", "sync.mirror_pod_ips", "IPLEDGER_SYNC_MIRROR_POD_IPS", "bool"),
    Option("owner_references", "sync.owner_references", "IPLEDGER_SYNC_OWNER_REFERENCES", "bool"),
    Option(
        "mirror_node_pod_cidrs",
        "watch_nodes.mirror_node_pod_cidrs",
        "IPLEDGER_MIRROR_NODE_PODCIDRS",
        "bool",
    ),
    Option("sync_metrics_port", "sync.metrics_port", "IPLEDGER_SYNC_METRICS_PORT", "int"),
    Option("api_address", "api.address", "IPLEDGER_API_ADDRESS", "str"),
    Option(
        "api_database_url", "api.database_url", "IPLEDGER_API_DATABASE_URL", "str", secret="url"
    ),
    Option("api_max_lag", "api.max_lag", "IPLEDGER_API_MAX_LAG", "int"),
    Option(
        "api_forecast_window_s", "api.forecast_window_s", "IPLEDGER_API_FORECAST_WINDOW_S", "float"
    ),
    Option(
        "api_statement_timeout_ms",
        "api.statement_timeout_ms",
        "IPLEDGER_API_STATEMENT_TIMEOUT_MS",
        "int",
    ),
)
BY_FIELD = {option.field: option for option in OPTIONS}
BY_KEY = {option.key: option for option in OPTIONS}
# Names that say a value is a credential: hidden whatever option they belong to.
SECRET_NAME = re.compile(r"password|passwd|secret|token|(^|_)key($|_)|credential")
_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "path": "a path (a string)",
    "choice": "one of",
    "clusters": "a table of clusters",
}
_CLUSTER_KEYS = ("kubeconfig", "context")


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings a command runs with, where each came from, and the file read (if any)."""

    settings: Settings
    sources: Mapping[str, Source]
    path: Path | None

    def describe(self) -> list[dict[str, Any]]:
        """Every setting in ``OPTIONS`` order: key, variable, value (redacted), source.

        Values are JSON-ready: paths and texts as strings, unset as None, the cluster map as a
        table of ``{"kubeconfig", "context"}``.
        """
        return [
            {
                "key": option.key,
                "env": option.env,
                "value": shown(option, getattr(self.settings, option.field)),
                "source": self.sources.get(option.field, "default"),
            }
            for option in OPTIONS
            if hasattr(self.settings, option.field)
        ]


def as_toml(effective: Effective) -> str:
    """``ipledger config``'s text: the settings as a TOML file, each line saying its source.

    Unset settings are comments; redacted values are not meant to be read back.
    """
    lines = [
        "# The settings in effect: flag > environment > file > default (docs/configuration.md).",
        f"# Configuration file: {effective.path if effective.path is not None else 'none'}.",
    ]
    section = ""
    # A table may be declared once only: each section's keys together, sections in order of
    # their first key.
    order = {option.section: n for n, option in reversed(list(enumerate(OPTIONS)))}
    rows = sorted(effective.describe(), key=lambda row: order[row["key"].partition(".")[0]])
    # Aligned comments, except after the odd long value (a URL, the cluster map).
    width = min(
        max(len(f"{row['key'].partition('.')[2]} = {_toml(row['value'])}") for row in rows), 40
    )
    for row in rows:
        head, _, name = row["key"].partition(".")
        if head != section:
            section = head
            lines += ["", f"[{section}]"]
        origin = f"# {row['source']}, {row['env']}"
        text = f"# {name} is unset" if row["value"] is None else f"{name} = {_toml(row['value'])}"
        lines.append(f"{text.ljust(width)}  {origin}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        inner = ", ".join(
            f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items() if v is not None
        )
        return f"{{ {inner} }}" if inner else "{}"
    # A JSON string (ASCII, escaped) is a TOML basic string.
    return json.dumps(str(value))


def load(
    *,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    path: Path | None = None,
) -> Effective:
    """The settings from ``flags`` over ``env`` over the file over the defaults, validated.

    ``path`` is ``--config``; without it, ``IPLEDGER_CONFIG`` names the file; with neither,
    no file is read. ``flags`` maps ``Settings`` fields to values the command line gave (None
    values are ignored). A bad file, variable or flag raises ``ConfigurationError``.
    """
    flags = {name: value for name, value in (flags or {}).items() if value is not None}
    if path is None and env.get(CONFIG_VARIABLE):
        path = Path(env[CONFIG_VARIABLE])
    from_file = read_file(path) if path is not None else {}
    sources: dict[str, Source] = {}
    layered = dict(env)
    late: dict[str, Any] = {}
    for field, value in from_file.items():
        option = BY_FIELD[field]
        if env.get(option.env):
            continue
        sources[field] = "file"
        if option.kind == "clusters":
            late[field] = value  # typed already; the variable's text form cannot hold any path
        else:
            layered[option.env] = _as_variable(option, value)
    for option in OPTIONS:
        if env.get(option.env):
            sources[option.field] = "env"
    settings = Settings.from_env(layered, check=False)
    settings = dataclasses.replace(settings, **late, **flags)
    for name in flags:
        sources[name] = "flag"
    effective = Effective(settings=settings, sources=sources, path=path)
    try:
        settings.validate()
    except errors.ConfigurationError as exc:
        raise errors.ConfigurationError(_with_origin(str(exc), effective)) from None
    return effective


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings as ``Settings`` field -> typed value; raises on anything unknown."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise errors.ConfigurationError(
            f"configuration file {path} does not exist: fix --config or {CONFIG_VARIABLE}"
        ) from None
    except OSError as exc:
        raise errors.ConfigurationError(
            f"cannot read configuration file {path}: {exc.strerror or exc}"
        ) from None
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise errors.ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    sections = sorted({option.section for option in OPTIONS})
    values: dict[str, Any] = {}
    for section, table in document.items():
        if section not in sections:
            raise errors.ConfigurationError(
                f"{path}: unknown {'section' if isinstance(table, dict) else 'key'} "
                f"{section!r}{_nearest(section, sections)}; the sections are "
                f"{', '.join(f'[{s}]' for s in sections)} (docs/configuration.md)"
            )
        if not isinstance(table, dict):
            raise errors.ConfigurationError(
                f"{path}: {section} must be a table ([{section}]), not {_type_of(table)}"
            )
        known = [option.name for option in OPTIONS if option.section == section]
        for name, value in table.items():
            key = f"{section}.{name}"
            option = BY_KEY.get(key)
            if option is None:
                raise errors.ConfigurationError(
                    f"{path}: unknown key {key!r}{_nearest(name, known, prefix=section + '.')}; "
                    f"[{section}] takes {', '.join(known)} (docs/configuration.md)"
                )
            values[option.field] = _typed(option, value, path)
    return values


def shown(option: Option, value: Any) -> Any:
    """``value`` as ``ipledger config`` shows it: JSON-ready, credentials redacted."""
    if value is None:
        return None
    if option.secret == "value" or SECRET_NAME.search(option.field):
        return REDACTED
    if option.secret == "url":
        return redacted_url(str(value))
    if option.kind == "clusters":
        return {
            name: {
                "kubeconfig": None if t.kubeconfig is None else str(t.kubeconfig),
                "context": t.context,
            }
            for name, t in value.items()
        }
    if isinstance(value, Path):
        return str(value)
    if option.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # lease_ttl_s is held as a float but set as whole seconds
    return value


def _typed(option: Option, value: Any, path: Path) -> Any:
    """Check a file value against its option's kind; return it as ``Settings`` holds it."""
    where = f"{path}: {option.key}"
    kind = option.kind
    wrong = errors.ConfigurationError(
        f"{where} must be {_TYPE_NAMES[kind]}"
        + (f" {', '.join(map(repr, option.choices))}" if kind == "choice" else "")
        + f", not {_type_of(value)}"
    )
    if kind == "clusters":
        return _clusters(option, value, path)
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        if kind == "int" and not isinstance(value, int):
            raise wrong
        return value
    if not isinstance(value, str):
        raise wrong
    if value == "":
        raise errors.ConfigurationError(
            f"{where} is empty: leave the key out for the default ({option.env} unset)"
        )
    if kind == "choice" and value not in option.choices:
        raise wrong
    if kind == "path":
        return _path(value, path)
    return value


def _clusters(option: Option, value: Any, path: Path) -> dict[str, KubeTarget]:
    if not isinstance(value, dict):
        raise errors.ConfigurationError(
            f"{path}: {option.key} must be a table of clusters "
            f"([{option.key}.<cluster>] with kubeconfig and context), not {_type_of(value)}"
        )
    targets: dict[str, KubeTarget] = {}
    for cluster, target in value.items():
        where = f"{path}: {option.key}.{cluster}"
        if not isinstance(target, dict):
            raise errors.ConfigurationError(
                f"{where} must be a table with kubeconfig and/or context, not {_type_of(target)}"
            )
        for name, field in target.items():
            if name not in _CLUSTER_KEYS:
                raise errors.ConfigurationError(
                    f"{where}: unknown key {name!r}{_nearest(name, _CLUSTER_KEYS)}; "
                    "a cluster takes kubeconfig and context"
                )
            if not isinstance(field, str) or not field:
                raise errors.ConfigurationError(
                    f"{where}.{name} must be a non-empty string, not {_type_of(field)}"
                )
        kubeconfig = target.get("kubeconfig")
        targets[cluster] = KubeTarget(
            kubeconfig=None if kubeconfig is None else _path(kubeconfig, path),
            context=target.get("context"),
        )
    return targets


def _path(text: str, config: Path) -> Path:
    found = Path(text).expanduser()
    return found if found.is_absolute() else config.parent / found


def _as_variable(option: Option, value: Any) -> str:
    """The text of ``option``'s variable that ``Settings.from_env`` reads as ``value``."""
    if option.kind == "bool":
        return "true" if value else "false"
    return str(value)


def _with_origin(message: str, effective: Effective) -> str:
    """``message`` (which names variables) with where each named setting was set, when that
    was not the environment: the file's key, or a flag."""
    notes = []
    for option in OPTIONS:
        if not re.search(rf"\b{option.env}\b", message):
            continue
        source = effective.sources.get(option.field, "default")
        if source == "file":
            notes.append(f"{option.key} in {effective.path}")
        elif source == "flag":
            notes.append(f"{option.field} from the command line")
    return f"{message} (set as {'; '.join(notes)})" if notes else message


def _nearest(name: str, known: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
