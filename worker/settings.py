"""haul's settings: one validated object, read once at start (contract section 7).

Sources, later ones win: the embedded defaults, the TOML file named by ``HAUL_CONFIG``, then
``HAUL_*`` environment variables (nested keys joined with ``__``, e.g.
``HAUL_STORES__LAKE__BUCKET``). :func:`load_settings` is the only place in haul that reads the
environment; everything else receives a :class:`Settings`.

Credentials are never in the file. The few a store takes from named environment variables
(Azure connection string, Swift user/key) are read here, once, into :class:`SecretStr` values
that never print.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.binds import split_bind
from worker.errors import ConfigError
from worker.stores import registry
from worker.stores.local import LocalStoreConfig
from worker.stores.plugin import StoreConfigBase, StoreSecrets

__all__ = ["LocalStoreConfig", "Settings", "StoreConfig", "StoreSecrets", "load_settings"]

ENV_PREFIX = "HAUL_"
CONFIG_ENV = "HAUL_CONFIG"
WEB_TOKEN_ENV = "HAUL_WEB_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: prometheus_client's own variable: where a process's metric values go (multiprocess mode)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MiB = 1024 * 1024
GiB = 1024 * MiB

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


if TYPE_CHECKING:
    StoreConfig = StoreConfigBase
else:
    # Every store type's config model, told apart by its ``type`` key (the registry's list).
    StoreConfig = Annotated[
        Union[tuple(t.config for t in registry.STORE_TYPES)],  # noqa: UP007
        Field(discriminator="type"),
    ]


class ProjectConfig(_Strict):
    store: str


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("haul", appauthor=False))


class Settings(_Strict):
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Field(default_factory=_default_data_dir)
    inputs_mount: str = "/valohai/inputs"
    events_stream: str = "haul:events"
    #: any positive cap (contract section 7); Redis trims approximately, in whole stream
    #: nodes of ``stream-node-max-entries`` (100) entries, so a cap under 100 keeps about 100
    events_maxlen: Annotated[int, Field(ge=1)] = 100_000
    default_store: str = "default"
    #: any whole second (contract section 7 sets no floor): one shorter than the longest task
    #: hands a running task's message to a second worker, which waits on the execution's
    #: lease (docs/operating.md), so a short one costs waiting, never a double run
    broker_visibility_timeout_s: Annotated[int, Field(ge=1)] = 300
    allow_private_addresses: bool = False

    stores: dict[str, StoreConfig] = Field(default_factory=dict)
    projects: dict[str, ProjectConfig] = Field(default_factory=dict)

    # Transfer engine.
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    chunk_size_bytes: Annotated[int, Field(ge=64 * 1024, le=1024 * MiB)] = 8 * MiB
    multipart_threshold_bytes: Annotated[int, Field(ge=0)] = 16 * MiB
    # 128: chosen by bench.rtt at 20 ms RTT (docs/design.md, "Small files at a round-trip time").
    files_in_flight: Annotated[int, Field(ge=1, le=256)] = 128
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    #: no retry of one call waits past this long after its first attempt (worker/retry.py)
    retry_budget_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    http_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_redirects: Annotated[int, Field(ge=0, le=30)] = 10
    cache_enabled: bool = True
    cache_max_bytes: Annotated[int, Field(ge=0)] = 20 * GiB
    progress_interval_s: Annotated[float, Field(gt=0)] = 5.0
    #: a wildcard matching more objects fails the input (the plan holds each one in memory,
    #: about 1.3 KB per object: 100 000 objects took 126 MB)
    max_wildcard_matches: Annotated[int, Field(ge=1)] = 100_000

    # Worker process.
    worker_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    task_time_limit_s: Annotated[int, Field(ge=60)] = 6 * 3600
    lease_ttl_s: Annotated[int, Field(ge=3, le=3600)] = 30
    lease_retry_s: Annotated[int, Field(ge=1)] = 30
    #: on SIGTERM, how long running tasks may go on before they are requeued
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 25.0
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: the Celery broker (redis:// or amqp://); None: ``redis_url`` (contract section 11)
    broker_url: str | None = None
    #: Celery task events for Flower and ``celery events`` (contract section 11)
    task_events: bool = True
    #: host:port of the worker's /metrics and /healthz; empty turns them off
    metrics_bind: str = "127.0.0.1:9808"

    # Live outputs (contract section 9).
    watch_max_s: Annotated[int, Field(ge=1)] = 86_400
    watch_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    #: one watch round's length: a watch is a chain of rounds (worker/pipeline/watch.py)
    watch_round_s: Annotated[float, Field(gt=0, le=300)] = 20.0

    # The dashboard, ``haul web`` (contract section 10).
    web_bind: str = "127.0.0.1:8750"
    #: SQLAlchemy URL; None: SQLite file under data_dir
    web_database_url: str | None = None
    web_consumer_group: str = "haul-web"
    #: from the environment only (HAUL_WEB_TOKEN); never in the TOML file
    web_token: SecretStr | None = Field(default=None, exclude=True, repr=False)

    # Credentials captured from the environment at start; never printed.
    secrets: dict[str, StoreSecrets] = Field(default_factory=dict, exclude=True, repr=False)
    #: the same for containers no store declares, by store type (the SDK's default variables)
    adhoc_secrets: dict[str, StoreSecrets] = Field(default_factory=dict, exclude=True, repr=False)
    #: the TOML file the settings came from (None: embedded defaults and environment only)
    _config_file: Path | None = PrivateAttr(default=None)
    #: an HTTP(S) proxy is set in the environment (the SDKs would use it)
    _proxy_in_env: bool = PrivateAttr(default=False)
    #: PROMETHEUS_MULTIPROC_DIR given to the worker (``haul worker``'s two workers share one)
    _metrics_dir_given: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        return self._config_file

    @property
    def proxy_in_env(self) -> bool:
        return self._proxy_in_env

    @property
    def metrics_dir_given(self) -> Path | None:
        """The metrics folder prometheus_client was pointed at before haul started (by
        ``haul worker`` for its two workers, or by the operator): written to and served as it
        is, never emptied or removed by the worker. None: the worker makes its own."""
        return self._metrics_dir_given

    @field_validator("metrics_bind")
    @classmethod
    def _check_metrics_bind(cls, value: str) -> str:
        if value:
            try:
                split_bind(value)
            except ValueError as exc:
                raise ValueError(f"{exc} (or empty to turn it off)") from None
        return value

    @field_validator("web_bind")
    @classmethod
    def _check_web_bind(cls, value: str) -> str:
        split_bind(value)
        return value

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        for name in self.stores:
            if not _valid_name(name):
                raise ValueError(f"stores.{name}: store names match {_NAME}")
        if self.default_store not in self.all_stores():
            raise ValueError(
                f"default_store: {self.default_store!r} is not a declared store "
                f"(declared: {', '.join(sorted(self.all_stores()))})"
            )
        for project, cfg in self.projects.items():
            if cfg.store not in self.all_stores():
                raise ValueError(f"projects.{project}.store: {cfg.store!r} is not a declared store")
        return self

    def all_stores(self) -> dict[str, StoreConfig]:
        """Declared stores plus the embedded local default when none is named ``default``."""
        stores: dict[str, StoreConfig] = {
            "default": LocalStoreConfig(type="local", path=self.data_dir / "store")
        }
        stores.update(self.stores)
        return stores

    def store_for_project(self, project_id: str, requested: str | None = None) -> str:
        if requested:
            return requested
        project = self.projects.get(project_id)
        return project.store if project else self.default_store

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_web_database_url(self) -> str:
        return self.web_database_url or f"sqlite:///{self.data_dir / 'web.sqlite3'}"

    @property
    def executions_dir(self) -> Path:
        return self.data_dir / "executions"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def store_secrets(self, name: str) -> StoreSecrets:
        return self.secrets.get(name, StoreSecrets())

    def adhoc_store_secrets(self, type_name: str) -> StoreSecrets:
        """What an undeclared bucket / container of that store type is read with."""
        return self.adhoc_secrets.get(type_name, StoreSecrets())


def _valid_name(name: str) -> bool:
    import re

    return re.fullmatch(_NAME, name) is not None


#: the variables Kubernetes puts in every pod for each Service of its namespace (Docker's
#: links the same), here for a Service named ``haul`` or ``haul-*`` such as the shipped
#: ``haul-web``: ``HAUL_WEB_SERVICE_HOST``, ``HAUL_WEB_PORT=tcp://...``, ``HAUL_PORT``...
_SERVICE_LINK = (
    r"^HAUL_([A-Z0-9_]+_)?(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)


def _is_service_link(key: str) -> bool:
    """A Service's variable, not a setting: no setting has such a name, and refusing them
    would stop every worker in a namespace that has a ``haul-*`` Service."""
    import re

    return "__" not in key and re.fullmatch(_SERVICE_LINK, key) is not None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or _is_service_link(key):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: conflicts with {ENV_PREFIX}{part.upper()}")
            node = child
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{CONFIG_ENV}: no such file {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_ENV}: {path} is not valid TOML: {exc}") from exc


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts ("stores.lake.s3.bucket").
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 3 and loc[0] == "stores" and loc[2] in registry.type_names():
            del loc[2]
        key = ".".join(loc) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        # A store table's type picks its model; pydantic's own words name its internals.
        types = ", ".join(registry.type_names())
        if err["type"] == "union_tag_not_found":
            msg = f"'type' is missing (one of: {types})"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown type {str(err['input'].get('type'))[:100]!r} (one of: {types})"
        lines.append(f"{key}: {msg}" if not msg.startswith(key) else msg)
    return "invalid settings: " + "; ".join(lines)


def _capture_secrets(settings: Settings, environ: Mapping[str, str]) -> dict[str, StoreSecrets]:
    secrets: dict[str, StoreSecrets] = {}
    for name, cfg in settings.all_stores().items():
        wanted = registry.secret_env(cfg)
        values = {k: SecretStr(environ[v]) for k, v in wanted.items() if environ.get(v)}
        secrets[name] = StoreSecrets(values=values)
    return secrets


def _capture_adhoc_secrets(environ: Mapping[str, str]) -> dict[str, StoreSecrets]:
    return {
        kind: StoreSecrets(
            values={k: SecretStr(environ[v]) for k, v in wanted.items() if environ.get(v)}
        )
        for kind, wanted in registry.adhoc_secret_env().items()
    }


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


#: fields filled from the environment at start, never given as settings
CAPTURED = ("secrets", "adhoc_secrets")


def read_environment() -> dict[str, str]:
    """The process's environment, read once by an entry point (``haul``'s, Celery's app):
    what the settings are loaded from and what the processes it starts inherit."""
    return dict(os.environ)


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Build the one settings object; raise :class:`ConfigError` naming the bad key."""
    env = read_environment() if environ is None else environ
    data: dict[str, Any] = {}
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is not None:
        data = _read_toml(path)
        if "web_token" in data:
            raise ConfigError(
                f"web_token: set it in the environment ({WEB_TOKEN_ENV}), not in {path}"
            )
    overrides = _env_overrides(env)
    overrides.pop("web_token", None)
    data = _merge(data, overrides)
    for key in CAPTURED:
        if key in data:
            raise ConfigError(
                f"{key}: not a setting; credentials come from each store's environment "
                "variables and SDK chain (docs/stores.md)"
            )
    if env.get(WEB_TOKEN_ENV):
        data["web_token"] = env[WEB_TOKEN_ENV]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    loaded = settings.model_copy(
        update={
            "secrets": _capture_secrets(settings, env),
            "adhoc_secrets": _capture_adhoc_secrets(env),
        }
    )
    loaded._config_file = path
    loaded._proxy_in_env = any(env.get(k) for k in _PROXY_VARS)
    loaded._metrics_dir_given = _metrics_dir(env)
    return loaded


def _metrics_dir(env: Mapping[str, str]) -> Path | None:
    value = env.get(METRICS_DIR_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        # prometheus_client would fail at the first count, deep in a task
        raise ConfigError(f"{METRICS_DIR_ENV}: {value} is not a directory")
    return path
