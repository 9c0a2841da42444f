"""config/haul.example.toml documents every setting, at its real default, and loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from worker.settings import CAPTURED, Settings, load_settings
from worker.stores.azure import AzureStoreConfig
from worker.stores.gcs import GCSStoreConfig
from worker.stores.local import LocalStoreConfig
from worker.stores.s3 import S3StoreConfig
from worker.stores.swift import SwiftStoreConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "haul.example.toml"
# Shown with an example value rather than the default (the default depends on the machine).
EXAMPLE_VALUES = {"data_dir", "broker_url", "web_database_url"}


def _uncommented() -> str:
    """The example with every commented-out setting ("# key = ..." / "# [section]") enabled."""
    return re.sub(r"^# (?=[\[a-z_])", "", EXAMPLE.read_text(), flags=re.MULTILINE)


def _parsed() -> dict[str, Any]:
    return tomllib.loads(_uncommented())


def test_every_setting_is_documented_at_its_default() -> None:
    """A new key in Settings fails here until the example shows it with its default."""
    doc = _parsed()
    for name, field in Settings.model_fields.items():
        # web_token comes from the environment only (HAUL_WEB_TOKEN).
        if name in {*CAPTURED, "stores", "projects", "web_token"}:
            continue
        assert name in doc, f"{name} is not in {EXAMPLE.name}"
        if name in EXAMPLE_VALUES:
            continue
        assert doc[name] == field.default, (
            f"{name}: example {doc[name]!r}, default {field.default!r}"
        )


def test_every_store_type_key_is_documented() -> None:
    """Each store type has one example section with all its keys."""
    stores = _parsed()["stores"]
    by_type = {cfg["type"]: cfg for cfg in stores.values()}
    for model in (
        LocalStoreConfig,
        S3StoreConfig,
        AzureStoreConfig,
        GCSStoreConfig,
        SwiftStoreConfig,
    ):
        store_type = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        assert store_type in by_type, f"no example for store type {store_type}"
        assert set(by_type[store_type]) == set(model.model_fields), store_type


def test_example_loads_as_is_and_uncommented(tmp_path: Path) -> None:
    """The file is valid as shipped (all defaults), and with every example enabled."""
    assert load_settings(environ={}, config_file=EXAMPLE).default_store == "default"
    enabled = tmp_path / "haul.toml"
    enabled.write_text(_uncommented())
    settings = load_settings(environ={}, config_file=enabled)
    assert settings.store_for_project("proj-42") == "lake"
    assert set(settings.stores) == {"default", "lake", "blobs", "gcs-data", "archive"}
