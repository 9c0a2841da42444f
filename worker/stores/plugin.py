"""What a store type is, whole: the shapes every backend module fills in once.

A backend module ends with one :class:`StoreType` (its descriptor): the ``type`` name of its
settings, its URL scheme and how those URLs split into location and key, its config model, the
extra to install and the SDK module that extra brings, the environment variables its secrets
come from, which URLs it owns, and how to build it from ``(name, config, secrets, tuning)``.
:mod:`worker.stores.registry` lists the descriptors; settings, URL parsing and log redaction
ask it instead of naming the types again (fsspec's ``registry.py`` has the same shape).

Nothing here imports an SDK or :mod:`worker.settings`: settings import the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.stores.base import Store
    from worker.urls import ParsedURL

MiB = 1024 * 1024


class StoreConfigBase(BaseModel):
    """The keys of one ``[stores.<name>]`` table; ``type`` picks the backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class StoreSecrets(BaseModel):
    """Credentials a store takes from named environment variables, captured at start."""

    model_config = ConfigDict(frozen=True)
    values: dict[str, SecretStr] = Field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        return value.get_secret_value() if value is not None else None


@dataclass(frozen=True)
class StoreTuning:
    """The transfer numbers every backend shares (one object instead of a dozen arguments)."""

    multipart_threshold_bytes: int = 16 * MiB
    part_size_bytes: int = 8 * MiB
    concurrency: int = 8
    timeout_s: float = 60.0
    #: an HTTP(S) proxy is set: the SDKs use it, so no direct connections of haul's own
    proxy_in_env: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreTuning:
        return cls(
            multipart_threshold_bytes=settings.multipart_threshold_bytes,
            part_size_bytes=settings.chunk_size_bytes,
            concurrency=settings.concurrency,
            timeout_s=settings.http_timeout_s,
            proxy_in_env=settings.proxy_in_env,
        )


#: what a store built without settings uses (tests, ``haul fetch`` of an ad-hoc URL)
DEFAULT_TUNING = StoreTuning()


def _no_secrets(config: Any) -> Mapping[str, str]:
    return {}


def _whole_key(config: Any, url: ParsedURL) -> str:
    return url.key


@dataclass(frozen=True)
class StoreType:
    """One store type, whole (see the module docstring)."""

    #: the ``type`` key of its settings table
    name: str
    #: its input URL scheme (``s3`` for ``s3://bucket/key``)
    scheme: str
    #: how its URLs read, location segments first (``s3://bucket/key``)
    url_form: str
    #: how many path segments before the key name the container (bucket: 1)
    location_parts: int
    config: type[StoreConfigBase]
    #: ``build(name, config, secrets, tuning)``
    build: Callable[[str, Any, StoreSecrets, StoreTuning], Store]
    #: ``owns(config, secrets, url)``: the URL points into this declared store
    owns: Callable[[Any, StoreSecrets, ParsedURL], bool]
    #: the pip extra that brings its SDK, and the SDK module (None: nothing to install)
    extra: str | None = None
    sdk_module: str | None = None
    #: secret name -> the environment variable it is read from, for one config
    secret_env: Callable[[Any], Mapping[str, str]] = field(default=_no_secrets)
    #: the config of a container no store declares (None: such URLs are refused)
    adhoc: Callable[[ParsedURL], StoreConfigBase] | None = None
    #: secret name -> environment variable, for such undeclared containers: the SDK's own
    #: default variables (Azure's ``AZURE_STORAGE_CONNECTION_STRING``), captured at start
    adhoc_secret_env: Mapping[str, str] = field(default_factory=dict)
    #: ``key_of(config, url)``: the store's key for a URL it owns (default: the URL's key)
    key_of: Callable[[Any, ParsedURL], str] = field(default=_whole_key)
    #: the SDK's loggers, quietened to WARNING (they log every request, URLs included)
    loggers: tuple[str, ...] = ()
