"""Credentials a store cannot use are an ``access_denied`` naming the store, never a bare SDK
exception and never the secret (contract section 7)."""

from __future__ import annotations

import pytest

from worker.errors import AccessDenied

pytest.importorskip("azure.storage.blob")

SECRET = "haul-SECRET-account-key-0123456789"


@pytest.mark.parametrize(
    "conn",
    [
        f"this is no connection string {SECRET}",
        f"DefaultEndpointsProtocol=https;AccountKey={SECRET};",  # no account, no endpoint
    ],
)
def test_a_malformed_azure_connection_string_is_access_denied(conn: str) -> None:
    """azure-storage-blob raises a plain ValueError for these, which got past the store's
    translation boundary (the task then failed as an internal error)."""
    from worker.stores.azure import AzureStore

    with pytest.raises(AccessDenied, match="connection string is malformed") as got:
        AzureStore("lake", "box", connection_string=conn)
    assert SECRET not in str(got.value)
    assert "'lake'" in str(got.value)
