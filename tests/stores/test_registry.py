"""The store registry is the one list of store types, and everything asks it.

Each test goes over every registered type, so a new backend's descriptor is checked the moment
its line is added: settings accept its ``type`` and name its bad keys, input URLs of its scheme
split as it says, log lines redact its URLs, its secrets are captured and never printed, and a
missing SDK is one clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing

import pytest

from worker.errors import ConfigError, MissingExtra, UnsupportedURL
from worker.logs import RedactingFilter
from worker.settings import load_settings
from worker.stores import registry, s3
from worker.stores.plugin import StoreSecrets, StoreTuning
from worker.urls import parse_input_url

TYPES = registry.STORE_TYPES
IDS = [t.name for t in TYPES]
URL_TYPES = [t for t in TYPES if t.location_parts > 0]


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_each_descriptor_is_whole(kind: registry.StoreType) -> None:
    """The config model's ``type`` is the descriptor's name, the scheme finds the type back,
    and an extra always names the SDK module it brings."""
    literal = typing.get_args(kind.config.model_fields["type"].annotation)
    assert literal == (kind.name,)
    assert registry.by_scheme(kind.scheme) is kind
    assert registry.by_name(kind.name) is kind
    assert (kind.extra is None) == (kind.sdk_module is None)


@pytest.mark.parametrize("kind", URL_TYPES, ids=[t.name for t in URL_TYPES])
def test_urls_split_as_the_descriptor_says(kind: registry.StoreType) -> None:
    """A URL of the type's form has ``location_parts`` location segments and then the key;
    one without a key is refused naming the form."""
    location = [f"loc{i}" for i in range(kind.location_parts)]
    url = parse_input_url(f"{kind.scheme}://{'/'.join(location)}/dir/file.bin")
    assert url.scheme == kind.scheme
    assert url.location == tuple(location)
    assert url.key == "dir/file.bin"
    with pytest.raises(UnsupportedURL, match=kind.url_form):
        parse_input_url(f"{kind.scheme}://{'/'.join(location)}/")


@pytest.mark.parametrize("kind", URL_TYPES, ids=[t.name for t in URL_TYPES])
def test_log_lines_redact_every_store_scheme(kind: registry.StoreType) -> None:
    """A presigned-looking URL of any store scheme loses its signature in a log line."""
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "reading %s", (f"{kind.scheme}://b/k?sig=S3CR3T",), None
    )
    RedactingFilter().filter(record)
    assert "S3CR3T" not in record.getMessage()
    assert f"{kind.scheme}://b/k" in record.getMessage()


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_settings_take_every_type_and_name_its_bad_keys(kind: registry.StoreType) -> None:
    """``type = <name>`` selects the type's config model, and an unknown key is reported as
    ``stores.<store>.<key>`` (the discriminator tag pydantic adds is dropped)."""
    env = {"HAUL_STORES__LAKE__TYPE": kind.name, "HAUL_STORES__LAKE__NO_SUCH_KEY": "1"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert "stores.lake.no_such_key" in str(caught.value)
    assert f"stores.lake.{kind.name}." not in str(caught.value)


def test_secrets_come_from_the_names_the_type_gives() -> None:
    """A store's secrets are read from the variables its descriptor names, once, and never
    show in the settings' repr."""
    env = {
        "HAUL_STORES__BLOB__TYPE": "azure",
        "HAUL_STORES__BLOB__CONTAINER": "box",
        "HAUL_STORES__BLOB__CONNECTION_STRING_ENV": "MY_AZ",
        "MY_AZ": "AccountName=acct;AccountKey=TOPSECRET",
    }
    settings = load_settings(env)
    assert settings.store_secrets("blob").get("connection_string") == env["MY_AZ"]
    assert "TOPSECRET" not in repr(settings)


def test_a_missing_sdk_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a store whose SDK is not installed raises MissingExtra naming the extra."""
    absent = dataclasses.replace(s3.STORE_TYPE, sdk_module="haul_test_no_such_sdk")
    monkeypatch.setitem(registry._BY_NAME, "s3", absent)  # type: ignore[index]
    cfg = s3.S3StoreConfig(type="s3", bucket="bkt")
    with pytest.raises(MissingExtra, match=r"haul-worker\[s3\]"):
        registry.build_store("lake", cfg, StoreSecrets(), StoreTuning())


def test_undeclared_containers_follow_the_type() -> None:
    """An undeclared S3 bucket gets the SDK's default chain; Swift, with no default endpoint,
    and a file path outside every local store are refused."""
    cfg = registry.adhoc_config(parse_input_url("s3://other-bucket/k"))
    assert isinstance(cfg, s3.S3StoreConfig) and cfg.bucket == "other-bucket"
    with pytest.raises(UnsupportedURL, match="declared swift store"):
        registry.adhoc_config(parse_input_url("swift://proj/box/k"))
    with pytest.raises(UnsupportedURL, match="declared local stores"):
        registry.adhoc_config(parse_input_url("file:///etc/passwd"))


def test_every_store_sdk_comes_with_a_plain_install() -> None:
    """``pip install .`` brings every store's SDK (contract section 8); the extra a
    MissingExtra message names still exists, so that line works on a broken install too."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = " ".join(project["dependencies"])
    sdk_dists = {"s3": "boto3", "azure": "azure-storage-blob", "gcs": "google-cloud-storage",
                 "swift": "python-swiftclient"}  # fmt: skip
    for kind in TYPES:
        if kind.extra is not None:
            assert kind.extra in project["optional-dependencies"], kind.name
            assert sdk_dists[kind.name] in deps, kind.name
    requires = importlib.metadata.requires("haul-worker") or []
    plain = {re.split(r"[<>=\[; ]", r)[0] for r in requires if "extra ==" not in r}
    assert set(sdk_dists.values()) | {"fastapi", "sqlalchemy"} <= plain  # as installed
