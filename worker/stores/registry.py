"""Every store type haul knows, and what settings, URL parsing and logs ask of them.

A new backend is one module ending in a :class:`~worker.stores.plugin.StoreType` plus one line
in :data:`STORE_TYPES`. The backend modules import their SDKs only when a store is built, so
listing them here costs no SDK import; a missing extra fails at build with one
:class:`~worker.errors.MissingExtra` naming it.

A URL whose bucket / account+container / project+container is a declared store's is read with
that store's endpoint and credentials; any other with the SDK's default chain (contract 2).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from worker.errors import MissingExtra, UnsupportedURL
from worker.stores import azure, gcs, local, s3, swift
from worker.stores.plugin import StoreConfigBase, StoreSecrets, StoreTuning, StoreType

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.stores.base import Store
    from worker.urls import ParsedURL

STORE_TYPES: tuple[StoreType, ...] = (
    local.STORE_TYPE,
    s3.STORE_TYPE,
    azure.STORE_TYPE,
    gcs.STORE_TYPE,
    swift.STORE_TYPE,
)

_BY_NAME: Mapping[str, StoreType] = {t.name: t for t in STORE_TYPES}
_BY_SCHEME: Mapping[str, StoreType] = {t.scheme: t for t in STORE_TYPES}


def by_name(type_name: str) -> StoreType:
    return _BY_NAME[type_name]


def by_scheme(scheme: str) -> StoreType | None:
    """The store type whose URLs use ``scheme`` (None: no store's)."""
    return _BY_SCHEME.get(scheme)


def type_names() -> list[str]:
    return [t.name for t in STORE_TYPES]


def secret_env(cfg: StoreConfigBase) -> Mapping[str, str]:
    """Secret name -> environment variable, for one declared store."""
    return by_name(cfg.type).secret_env(cfg)


def build_store(
    name: str, cfg: StoreConfigBase, secrets: StoreSecrets, settings: Settings | StoreTuning
) -> Store:
    """Instantiate one backend; a missing optional SDK raises MissingExtra naming the extra."""
    kind = by_name(cfg.type)
    if kind.sdk_module is not None:
        try:
            importlib.import_module(kind.sdk_module)
        except ImportError:
            raise MissingExtra(kind.name, kind.extra or kind.name, kind.sdk_module) from None
    tuning = settings if isinstance(settings, StoreTuning) else StoreTuning.from_settings(settings)
    return kind.build(name, cfg, secrets, tuning)


def owns(cfg: StoreConfigBase, secrets: StoreSecrets, url: ParsedURL) -> bool:
    """True when ``url`` points into the bucket/container of the declared store ``cfg``."""
    kind = by_name(cfg.type)
    return url.scheme == kind.scheme and kind.owns(cfg, secrets, url)


def key_of(cfg: StoreConfigBase, url: ParsedURL) -> str:
    """The key inside the declared store ``cfg`` for a URL it owns."""
    return by_name(cfg.type).key_of(cfg, url)


def adhoc_secret_env() -> dict[str, Mapping[str, str]]:
    """Type name -> (secret name -> environment variable) for undeclared containers."""
    return {t.name: t.adhoc_secret_env for t in STORE_TYPES if t.adhoc_secret_env}


def adhoc_config(url: ParsedURL) -> StoreConfigBase:
    """A config for a container no store declares: the SDK's default endpoint and credentials."""
    kind = by_scheme(url.scheme)
    if kind is None or kind.adhoc is None:
        raise UnsupportedURL(f"{url.scheme}:// URLs are read only from declared stores")
    return kind.adhoc(url)
