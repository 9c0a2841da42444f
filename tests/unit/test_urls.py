"""URL forms, wildcard matching and redaction of credentials."""

import pytest

from worker.errors import UnsupportedURL
from worker.urls import matches, parse_input_url, redact_url, suffix_base, wildcard_prefix


def test_parse_forms() -> None:
    assert parse_input_url("s3://b/k/x.gz").location == ("b",)
    az = parse_input_url("azure://acct/cont/dir/blob")
    assert (az.location, az.key) == (("acct", "cont"), "dir/blob")
    sw = parse_input_url("swift://proj/cont/obj")
    assert (sw.location, sw.key) == (("proj", "cont"), "obj")
    assert parse_input_url("gs://b/k").key == "k"
    assert parse_input_url("datum://01J9ABC").key == "01J9ABC"
    assert parse_input_url("s3://b/a/*.gz").has_wildcard


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket",
        "s3://bucket/",
        "azure://acct/cont",
        "ftp://x/y",
        "datum://../x",
        "nourl",
        # a wildcard expands in the key part only (the SDKs' own refusal said nothing)
        "s3://buck*/k",
        "gs://*/k",
        "azure://acct/c*/blob",
        "swift://proj*/cont/obj",
    ],
)
def test_malformed(url: str) -> None:
    with pytest.raises(UnsupportedURL):
        parse_input_url(url)


def test_wildcards() -> None:
    assert matches("data/*.gz", "data/a.gz")
    assert not matches("data/*.gz", "data/sub/a.gz")
    assert matches("data/**.gz", "data/sub/a.gz")
    assert matches("data/**/a.gz", "data/a.gz")
    assert matches("data/**/a.gz", "data/x/y/a.gz")
    assert wildcard_prefix("data/sub/*/x") == "data/sub/"
    assert suffix_base("data/sub/img*/x") == "data/sub/"


def test_redaction_removes_userinfo_and_signatures() -> None:
    url = (
        "https://user:pw@host.example/a/b.gz?X-Amz-Signature=abc&X-Amz-Credential=k&"
        "versionId=3&sig=zzz&se=2030"
    )
    shown = redact_url(url)
    assert shown == "https://host.example/a/b.gz?versionId=3"
    assert "pw" not in shown and "abc" not in shown and "zzz" not in shown
