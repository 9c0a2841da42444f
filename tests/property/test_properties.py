"""Property-based tests (hypothesis) of what hostile input reaches first: message validation,
URL parsing and redaction, key building, size formatting, the wildcard matcher, names and
bounded messages. Each property holds for every generated input, not only the examples."""

from __future__ import annotations

import contextlib
import json
import operator
import re
import string
from functools import cache
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.errors import MAX_PROBLEMS, SHOWN_MAX_CHARS, MessageError, UnsupportedURL, bounded
from worker.models import MESSAGES, PrepareInputs, validate_message
from worker.paths import check_relative, check_visible, hidden_characters
from worker.records.datums import content_key, datum_id
from worker.sizes import format_size
from worker.urls import matches, parse_input_url, redact_url, wildcard_prefix

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
_ALNUM = string.ascii_letters + string.digits
#: ids of the contract's pattern (generated directly: from_regex is ten times slower)
ids = st.builds(operator.add, st.sampled_from(_ALNUM), st.text(_ALNUM + "._-", max_size=20))
segment = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12).filter(
    lambda s: s not in {".", ".."}
)
keys = st.lists(segment, min_size=1, max_size=5).map("/".join)


def _message_field_mutations() -> st.SearchStrategy[dict[str, Any]]:
    """A message that is nearly right: a valid one with one field replaced by any JSON value."""
    field = st.sampled_from(["execution_id", "project_id", "store", "inputs", "extra"])
    return st.builds(
        lambda f, v, eid, pid: {"execution_id": eid, "project_id": pid, "inputs": [], f: v},
        field,
        json_values,
        ids,
        ids,
    )


@FAST
@given(st.sampled_from(sorted(MESSAGES)), json_values | _message_field_mutations())
def test_validation_accepts_or_rejects_with_a_bounded_error(task: str, payload: Any) -> None:
    """Any JSON value is a message or a MessageError; never another exception, and the error's
    reason and problems stay bounded."""
    try:
        validate_message(MESSAGES[task], payload)
    except MessageError as exc:
        assert len(str(exc)) <= SHOWN_MAX_CHARS + 40
        assert 1 <= len(exc.errors) <= MAX_PROBLEMS + 1
        assert all(len(e["problem"]) <= SHOWN_MAX_CHARS + 40 for e in exc.errors)


@FAST
@given(
    ids,
    ids,
    st.lists(
        st.fixed_dictionaries(
            {"urls": st.lists(keys.map(lambda k: f"s3://bucket/{k}"), min_size=1, max_size=3)},
            optional={
                "keep_directories": st.sampled_from(["none", "full", "suffix"]),
                "optional": st.booleans(),
            },
        ),
        max_size=4,
    ),
)
def test_valid_messages_validate_and_round_trip(eid: str, pid: str, inputs: list[Any]) -> None:
    """A message built by the contract's rules validates, and its JSON form validates to the
    same message."""
    payload = {
        "execution_id": eid,
        "project_id": pid,
        "inputs": [{**spec, "name": f"in{n}"} for n, spec in enumerate(inputs)],
    }
    msg = validate_message(PrepareInputs, payload)
    again = validate_message(PrepareInputs, json.loads(msg.model_dump_json()))
    assert again == msg


@FAST
@given(st.text())
@example("s3://")
@example("http://[::1")
@example("azure://a//b")
def test_any_text_parses_or_is_unsupported(text: str) -> None:
    """``parse_input_url`` returns a URL or raises UnsupportedURL, whatever the text; redaction
    never raises."""
    with contextlib.suppress(UnsupportedURL):
        parse_input_url(text)
    redact_url(text)


@FAST
@given(st.sampled_from(["s3", "gs"]), segment, keys)
def test_bucket_urls_split_into_bucket_and_key(scheme: str, bucket: str, key: str) -> None:
    """``<scheme>://bucket/key`` gives back exactly the bucket and the key."""
    parsed = parse_input_url(f"{scheme}://{bucket}/{key}")
    assert (parsed.scheme, parsed.location, parsed.key) == (scheme, (bucket,), key)


@FAST
@given(st.sampled_from(["azure", "swift"]), segment, segment, keys)
def test_two_part_urls_split_into_location_and_key(
    scheme: str, first: str, second: str, key: str
) -> None:
    """``azure://account/container/blob`` and ``swift://project/container/object``."""
    parsed = parse_input_url(f"{scheme}://{first}/{second}/{key}")
    assert (parsed.location, parsed.key) == ((first, second), key)


SECRET = "Zq9sEcReT"


@FAST
@given(segment, keys, st.sampled_from(["sig", "X-Amz-Signature", "token", "x-goog-credential"]))
def test_redaction_removes_userinfo_and_signatures_and_is_idempotent(
    host: str, path: str, param: str
) -> None:
    """Neither the password nor a signature survives redaction; redacting twice changes
    nothing more."""
    url = f"https://user:{SECRET}@{host}.example/{path}?{param}={SECRET}&keep=1"
    shown = redact_url(url)
    assert SECRET not in shown and "user" not in shown and "keep=1" in shown
    assert redact_url(shown) == shown


@FAST
@given(st.text(max_size=30), ids, st.binary(min_size=32, max_size=32).map(bytes.hex), segment)
def test_content_keys_have_the_contract_shape(
    prefix: str, project: str, sha256: str, name: str
) -> None:
    """``<prefix>/data/<project>/<sha[0:2]>/<sha>/<name>``, no empty segment, same inputs
    same key; the datum id is 32 hex characters and deterministic."""
    key = content_key(prefix, project, sha256, name)
    parts = key.split("/")
    assert parts[-5:] == ["data", project, sha256[:2], sha256, name]
    assert "" not in parts
    assert key == content_key(prefix, project, sha256, name)
    did = datum_id(project, "e", name, sha256)
    assert re.fullmatch(r"[0-9a-f]{32}", did) and did == datum_id(project, "e", name, sha256)


_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18}
_SIZE = re.compile(r"^(\d+(?:\.\d)?) (B|kB|MB|GB|TB|PB|EB)$")


@FAST
@given(st.integers(min_value=0, max_value=10**21))
@example(999)
@example(1000)
@example(999_950)
@example(999_949)
def test_sizes_have_one_decimal_and_stay_close(size: int) -> None:
    """Bytes under 1 kB, else one decimal below 1000 of the unit; within half a tenth of it."""
    shown = format_size(size)
    m = _SIZE.match(shown)
    assert m, shown
    value, unit = float(m.group(1)), m.group(2)
    if size < 1000:
        assert unit == "B" and int(value) == size and "." not in shown
        return
    assert unit != "B" and "." in shown
    assert value < 1000 or unit == "EB"
    assert abs(value * _UNITS[unit] - size) <= 0.05 * _UNITS[unit] + 1e-9 * size


@FAST
@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=0, max_value=10**15))
def test_sizes_are_monotonic(a: int, b: int) -> None:
    """A larger size never shows as a smaller one."""

    def shown(n: int) -> float:
        m = _SIZE.match(format_size(n))
        assert m
        return float(m.group(1)) * _UNITS[m.group(2)]

    lo, hi = sorted((a, b))
    assert shown(lo) <= shown(hi)


def _reference(pattern: str, key: str) -> bool:
    """``*`` within one segment, ``**`` across segments, ``**/`` also matching none: matched
    by plain recursion over both strings (no regular expressions)."""

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(key)
        if pattern.startswith("**/", i):
            # zero segments, or any run of characters that ends with a slash
            return m(i + 3, j) or any(key[k] == "/" and m(i + 3, k + 1) for k in range(j, len(key)))
        if pattern.startswith("**", i):
            return any(m(i + 2, k) for k in range(j, len(key) + 1))
        if pattern[i] == "*":
            return any(m(i + 1, k) for k in range(j, len(key) + 1) if "/" not in key[j:k])
        return j < len(key) and key[j] == pattern[i] and m(i + 1, j + 1)

    return m(0, 0)


pattern_parts = st.lists(st.sampled_from(["a", "b", "/", "*", "**", "**/", ".", "["]), max_size=7)
key_parts = st.lists(st.sampled_from(["a", "b", "/", ".", "ab", "["]), max_size=8)


@settings(max_examples=400, deadline=None)
@given(pattern_parts.map("".join), key_parts.map("".join))
@example("**/a", "a")
@example("a/**/b", "a/b")
@example("*", "a/b")
def test_the_wildcard_matcher_agrees_with_a_reference(pattern: str, key: str) -> None:
    """``matches`` gives the reference's answer for every pattern and key, and every key it
    matches starts with the pattern's literal prefix (what a listing asks for)."""
    assert matches(pattern, key) == _reference(pattern, key)
    if matches(pattern, key):
        assert key.startswith(wildcard_prefix(pattern))


@FAST
@given(keys)
def test_a_pattern_without_wildcards_matches_only_itself(key: str) -> None:
    """No ``*``: the pattern is a literal, also for regex characters like ``.`` and ``[``."""
    assert matches(key, key)
    assert not matches(key, key + "x")
    assert not matches(key.replace(".", "x"), key) or "." not in key


@FAST
@given(st.text(max_size=40))
def test_checked_names_stay_inside_and_visible(rel: str) -> None:
    """A name that passes both checks has no empty, ``.`` or ``..`` segment, is relative, and
    holds no control or bidi character."""
    try:
        check_relative(rel)
        check_visible(rel)
    except Exception as exc:
        assert type(exc).__name__ == "UnsafePathError"
        return
    assert not rel.startswith("/")
    assert all(part not in {"", ".", ".."} for part in rel.split("/"))
    assert hidden_characters(rel) == []
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in rel)


@FAST
@given(st.text(max_size=2000), st.integers(min_value=1, max_value=500))
def test_bounded_cuts_long_text_and_says_so(text: str, limit: int) -> None:
    """Short text is unchanged; long text keeps its first ``limit`` characters and its length."""
    shown = bounded(text, limit)
    if len(text) <= limit:
        assert shown == text
    else:
        assert shown.startswith(text[:limit])
        assert shown.endswith(f"... ({len(text)} characters, cut)")
