"""Input URLs of containers no store declares are read with the SDK's default sources
(contract sections 2 and 7), through the same resolver the worker uses, against real servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.servers import AzuriteServer
from worker.settings import load_settings
from worker.stores.azure import AzureStore
from worker.stores.resolver import Sources
from worker.urls import parse_input_url


def _container(srv: AzuriteServer, data: bytes) -> str:
    from azure.storage.blob import BlobServiceClient

    name = f"t-{uuid.uuid4().hex[:12]}"
    with BlobServiceClient.from_connection_string(srv.connection_string) as svc:
        svc.create_container(name)
        svc.get_blob_client(name, "dir/blob.bin").upload_blob(data)
    return name


def test_an_undeclared_azure_container_is_read_with_the_default_connection_string(
    azure_srv: AzuriteServer, tmp_path: Path
) -> None:
    """``AZURE_STORAGE_CONNECTION_STRING`` is Azure's default source (the table's default
    ``connection_string_env``): a container of its account that no store declares, next to a
    declared one, is read with it. Before, such a URL went to
    ``https://<account>.blob.core.windows.net`` with ``DefaultAzureCredential``, so a
    container of the emulator's (or of a private endpoint's) account could not be read."""
    declared = _container(azure_srv, b"declared")
    other = _container(azure_srv, b"other container's bytes")
    env = {
        "HAUL_DATA_DIR": str(tmp_path),
        "HAUL_STORES__LAKE__TYPE": "azure",
        "HAUL_STORES__LAKE__CONTAINER": declared,
        "AZURE_STORAGE_CONNECTION_STRING": azure_srv.connection_string,
    }
    sources = Sources(load_settings(environ=env))
    try:
        url = parse_input_url(f"azure://{azure_srv.account_name}/{other}/dir/blob.bin")
        source, key = sources.for_url(url)
        assert source.name != "lake" and key == "dir/blob.bin"
        assert source.stat(key).size == len(b"other container's bytes")
        with source.read(key) as body:
            buf = bytearray(64)
            n = body.readinto(memoryview(buf))
        assert bytes(buf[:n]) == b"other container's bytes"
    finally:
        sources.close()


def test_another_accounts_container_does_not_get_the_connection_string(
    azure_srv: AzuriteServer, tmp_path: Path
) -> None:
    """A connection string is one account's: an URL of another account is not sent to its
    endpoint with its key, but to that account's own endpoint (Azure's default chain)."""
    pytest.importorskip("azure.identity")
    env = {
        "HAUL_DATA_DIR": str(tmp_path),
        "AZURE_STORAGE_CONNECTION_STRING": azure_srv.connection_string,
    }
    sources = Sources(load_settings(environ=env))
    try:
        source, _ = sources.for_url(parse_input_url("azure://otheraccount/box/blob.bin"))
        assert isinstance(source, AzureStore)  # built only; no request is made
        assert source.account == "otheraccount"
        assert source._service.url.startswith("https://otheraccount.blob.core.windows.net")
    finally:
        sources.close()


def test_a_connection_string_naming_no_account_is_not_used_for_an_account(
    tmp_path: Path,
) -> None:
    """A SAS connection string names an endpoint, not an account: for a URL of account
    ``acct`` it is not used (its endpoint could be any account's, whose container of the
    same name holds other data)."""
    pytest.importorskip("azure.identity")
    env = {
        "HAUL_DATA_DIR": str(tmp_path),
        "AZURE_STORAGE_CONNECTION_STRING": (
            "BlobEndpoint=https://elsewhere.example/;SharedAccessSignature=sv=2024&sig=c2VjcmV0"
        ),
    }
    sources = Sources(load_settings(environ=env))
    try:
        source, _ = sources.for_url(parse_input_url("azure://acct/box/blob.bin"))
        assert isinstance(source, AzureStore)  # built only; no request is made
        assert source._service.url.startswith("https://acct.blob.core.windows.net")
    finally:
        sources.close()
