"""Which store reads which URL, and building stores from settings.

A URL whose bucket / account+container / project+container is a declared store's is read with
that store's endpoint and credentials; any other with the SDK's default chain (contract 2).
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from worker.errors import MissingExtra, UnsupportedURL
from worker.settings import (
    AzureStoreConfig,
    GCSStoreConfig,
    LocalStoreConfig,
    S3StoreConfig,
    Settings,
    StoreConfig,
    StoreSecrets,
    SwiftStoreConfig,
)
from worker.stores.base import Store
from worker.urls import ParsedURL

# store type -> (module, optional extra, SDK module that extra brings)
_BACKENDS: dict[str, tuple[str, str | None, str | None]] = {
    "local": ("worker.stores.local", None, None),
    "s3": ("worker.stores.s3", "s3", "boto3"),
    "azure": ("worker.stores.azure", "azure", "azure.storage.blob"),
    "gcs": ("worker.stores.gcs", "gcs", "google.cloud.storage"),
    "swift": ("worker.stores.swift", "swift", "swiftclient"),
}


def build_store(name: str, cfg: StoreConfig, secrets: StoreSecrets, settings: Settings) -> Store:
    """Instantiate one backend; a missing optional SDK raises MissingExtra naming the extra."""
    module_name, extra, sdk = _BACKENDS[cfg.type]
    if sdk is not None:
        try:
            importlib.import_module(sdk)
        except ImportError:
            raise MissingExtra(cfg.type, extra or cfg.type, sdk) from None
    module = importlib.import_module(module_name)
    store: Store = module.from_config(name, cfg, secrets, settings)
    return store


def azure_account(cfg: AzureStoreConfig, secrets: StoreSecrets) -> str | None:
    """The storage account of an Azure store: from account_url, else the connection string."""
    if cfg.account_url:
        parts = urlsplit(cfg.account_url)
        host = parts.hostname or ""
        if host.endswith(".blob.core.windows.net"):
            return host.split(".", 1)[0]
        # Emulators put the account in the path: http://127.0.0.1:10000/devstoreaccount1
        first = parts.path.strip("/").split("/", 1)[0]
        return first or host.split(".", 1)[0]
    conn = secrets.get("connection_string")
    if conn:
        fields = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        return fields.get("AccountName")
    return None


def owns(cfg: StoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    """True when ``url`` points into the bucket/container of the declared store ``cfg``."""
    if isinstance(cfg, S3StoreConfig):
        return url.scheme == "s3" and url.location == (cfg.bucket,)
    if isinstance(cfg, GCSStoreConfig):
        return url.scheme == "gs" and url.location == (cfg.bucket,)
    if isinstance(cfg, AzureStoreConfig):
        return url.scheme == "azure" and url.location == (
            azure_account(cfg, secrets),
            cfg.container,
        )
    if isinstance(cfg, SwiftStoreConfig):
        return url.scheme == "swift" and url.location == (cfg.project, cfg.container)
    if isinstance(cfg, LocalStoreConfig):
        return url.scheme == "file" and (
            url.key == str(cfg.path) or url.key.startswith(str(cfg.path).rstrip("/") + "/")
        )
    return False


def adhoc_config(url: ParsedURL) -> StoreConfig:
    """A config for a bucket no store declares: the SDK's default endpoint and credentials."""
    loc = url.location
    cfg: dict[str, Any]
    if url.scheme == "s3":
        cfg = {"type": "s3", "bucket": loc[0]}
        return S3StoreConfig(**cfg)
    if url.scheme == "gs":
        return GCSStoreConfig(type="gcs", bucket=loc[0])
    if url.scheme == "azure":
        return AzureStoreConfig(
            type="azure", account_url=f"https://{loc[0]}.blob.core.windows.net", container=loc[1]
        )
    if url.scheme == "swift":
        raise UnsupportedURL(
            f"swift://{loc[0]}/{loc[1]}/... needs a declared swift store for that project and "
            "container (Swift has no default endpoint to fall back to)"
        )
    raise UnsupportedURL(
        f"{url.scheme}:// URLs are read only from declared local stores; "
        f"no local store contains {url.key}"
    )
