"""Settings come from TOML and HAUL_* env, are validated once, and bad values name the key."""

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import LocalStoreConfig, load_settings
from worker.stores.s3 import S3StoreConfig


def test_embedded_defaults(tmp_path: Path) -> None:
    s = load_settings({"HAUL_DATA_DIR": str(tmp_path)})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.inputs_mount == "/valohai/inputs"
    assert (s.events_stream, s.events_maxlen) == ("haul:events", 100000)
    assert s.default_store == "default"
    assert s.broker_visibility_timeout_s == 300
    assert s.allow_private_addresses is False
    default = s.all_stores()["default"]
    assert isinstance(default, LocalStoreConfig)
    assert default.path == tmp_path / "store"


def test_toml_then_env_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "haul.toml"
    cfg.write_text(
        """
events_maxlen = 5000
[stores.lake]
type = "s3"
bucket = "ml-data"
prefix = "haul"
[projects.proj-42]
store = "lake"
"""
    )
    s = load_settings(
        {
            "HAUL_CONFIG": str(cfg),
            "HAUL_EVENTS_MAXLEN": "7000",
            "HAUL_STORES__LAKE__REGION": "eu-north-1",
            "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        }
    )
    lake = s.stores["lake"]
    assert isinstance(lake, S3StoreConfig)
    assert (lake.bucket, lake.prefix, lake.region) == ("ml-data", "haul", "eu-north-1")
    assert s.events_maxlen == 7000
    assert s.allow_private_addresses is True
    assert s.store_for_project("proj-42") == "lake"
    assert s.store_for_project("other") == "default"
    assert s.store_for_project("proj-42", "default") == "default"


def test_a_short_visibility_timeout_starts_the_worker() -> None:
    """No floor above one second (a fast-failover test's 5 s is fine); kombu's restore scan
    follows it (tasks/config.py)."""
    from tasks.config import celery_config

    s = load_settings({"HAUL_BROKER_VISIBILITY_TIMEOUT_S": "5"})
    options = celery_config(s)["broker_transport_options"]
    assert options["visibility_timeout"] == 5 and options["unacked_restore_interval"] == 1


def test_events_maxlen_takes_any_positive_cap() -> None:
    """The contract makes the cap configurable without a floor: a small one (a test's, an
    edge box's) starts the worker; Redis then trims approximately (docs/operating.md)."""
    assert load_settings({"HAUL_EVENTS_MAXLEN": "10"}).events_maxlen == 10
    with pytest.raises(ConfigError, match="events_maxlen"):
        load_settings({"HAUL_EVENTS_MAXLEN": "0"})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"HAUL_EVENTS_MAXLEN": "lots"}, "events_maxlen"),
        ({"HAUL_BROKER_VISIBILITY_TIMEOUT_S": "0"}, "broker_visibility_timeout_s"),
        ({"HAUL_DEFAULT_STORE": "nowhere"}, "default_store"),
        ({"HAUL_STORES__LAKE__TYPE": "s3"}, "stores.lake.bucket"),
        ({"HAUL_STORES__LAKE__TYPE": "ftp"}, "stores.lake"),
        ({"HAUL_PROJECTS__P__STORE": "nowhere"}, "projects.p.store"),
        ({"HAUL_CHUNK_SIZE_BYTES": "10"}, "chunk_size_bytes"),
        ({"HAUL_NO_SUCH_SETTING": "1"}, "no_such_setting"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"HAUL_STORES__DEFAULT__PATH": "/data"}, "stores.default: 'type' is missing (one of: "),
        ({"HAUL_STORES__LAKE__TYPE": "ftp"}, "stores.lake: unknown type 'ftp' (one of: "),
    ],
)
def test_a_store_without_a_known_type_says_which_types_there_are(
    env: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert said in str(info.value)
    assert "local, s3, azure, gcs, swift" in str(info.value)
    assert "discriminator" not in str(info.value)


@pytest.mark.parametrize("key", ["secrets", "adhoc_secrets"])
def test_captured_credentials_are_not_settings(key: str, tmp_path: Path) -> None:
    """What haul captures from the environment at start cannot be given as a setting."""
    with pytest.raises(ConfigError, match=f"{key}: not a setting"):
        load_settings({f"HAUL_{key.upper()}__S3__VALUES__X": "y"})
    toml = tmp_path / "haul.toml"
    toml.write_text(f"[{key}.s3]\n")
    with pytest.raises(ConfigError, match=f"{key}: not a setting"):
        load_settings({"HAUL_CONFIG": str(toml)})


def test_missing_and_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings({"HAUL_CONFIG": str(tmp_path / "nope.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"HAUL_CONFIG": str(bad)})


def test_credentials_are_captured_but_never_printed(tmp_path: Path) -> None:
    s = load_settings(
        {
            "HAUL_STORES__BLOB__TYPE": "azure",
            "HAUL_STORES__BLOB__CONTAINER": "models",
            "AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=SUPERSECRET",
        }
    )
    assert s.store_secrets("blob").get("connection_string") is not None
    assert "SUPERSECRET" not in repr(s)
    assert "SUPERSECRET" not in s.model_dump_json()


def test_a_given_metrics_folder_must_be_a_folder(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR (``haul worker`` hands one to its two workers) is served as
    it is; one that is not a folder stops the start, naming it, instead of the first count."""
    assert load_settings({}).metrics_dir_given is None
    given = load_settings({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert given.metrics_dir_given == tmp_path
    with pytest.raises(ConfigError, match=r"PROMETHEUS_MULTIPROC_DIR: .*nope is not a directory"):
        load_settings({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "nope")})


def test_kubernetes_service_variables_are_not_settings() -> None:
    """A namespace with a ``haul-web`` Service (deploy/kubernetes/web.yaml) puts its service
    link variables in every pod; the worker still starts. A misspelt setting still fails."""
    links = {
        "HAUL_WEB_SERVICE_HOST": "10.0.0.7",
        "HAUL_WEB_SERVICE_PORT": "8750",
        "HAUL_WEB_SERVICE_PORT_HTTP": "8750",
        "HAUL_WEB_PORT": "tcp://10.0.0.7:8750",
        "HAUL_WEB_PORT_8750_TCP": "tcp://10.0.0.7:8750",
        "HAUL_WEB_PORT_8750_TCP_PROTO": "tcp",
        "HAUL_WEB_PORT_8750_TCP_PORT": "8750",
        "HAUL_WEB_PORT_8750_TCP_ADDR": "10.0.0.7",
        "HAUL_WORKER_METRICS_SERVICE_HOST": "10.0.0.8",
        "HAUL_SERVICE_HOST": "10.0.0.9",  # a Service named plain "haul"
        "HAUL_PORT": "tcp://10.0.0.9:80",
        "HAUL_PORT_80_TCP_ADDR": "10.0.0.9",
    }
    assert load_settings(links).web_bind == "127.0.0.1:8750"
    with pytest.raises(ConfigError, match="web_bnd"):
        load_settings({**links, "HAUL_WEB_BND": "0.0.0.0:8750"})
