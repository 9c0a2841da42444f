"""What an event names as an object's version (``source.version``, contract section 6)."""

from __future__ import annotations

from worker.stores.base import ObjectInfo


def test_the_shown_version_is_the_version_id_or_the_bare_pin() -> None:
    """A store's version id wins (S3 VersionId, Azure versionId); otherwise the pin token,
    without the quotes Azure's pin keeps for If-Match; no pin, no version."""
    s3 = ObjectInfo("k", 1, etag="abc", version="v-123", extra={"version_id": "v-123"})
    azure = ObjectInfo("k", 1, etag="0x8D", version='"0x8D"', extra={"version_id": "2026-12-03"})
    azure_unversioned = ObjectInfo("k", 1, etag="0x8D", version='"0x8D"')
    assert s3.shown_version == "v-123"
    assert azure.shown_version == "2026-12-03"
    assert azure_unversioned.shown_version == "0x8D"
    assert ObjectInfo("k", 1, version="1733200000123456").shown_version == "1733200000123456"
    assert ObjectInfo("k", 1).shown_version is None
