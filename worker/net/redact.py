"""What a URL may show: no userinfo, no credential-bearing query parameters.

It lives in the network layer because every client here logs and reports URLs; a presigned
URL's query string counts as a credential (contract 7). ``worker.urls`` re-exports it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

# Query parameters that carry credentials in presigned / SAS / token URLs (lower-case).
_SECRET_PARAMS = {
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "googleaccessid",
    "sig",
    "se",
    "sp",
    "sv",
    "sr",
    "st",
    "skoid",
    "sktid",
    "skt",
    "ske",
    "sks",
    "skv",
    "spr",
    "srt",
    "ss",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "secret",
    "auth",
    "temp_url_sig",
    "temp_url_expires",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-algorithm",
    "x-goog-date",
    "x-goog-expires",
    "x-goog-signedheaders",
    "x-goog-algorithm",
    "expires",
    "policy",
    "key-pair-id",
}


def redact_url(url: str) -> str:
    """The URL without userinfo or credential query parameters; safe for logs and events."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        kept = [
            (k, v)
            for k, v in parse_qsl(query, keep_blank_values=True)
            if k.lower() not in _SECRET_PARAMS and not k.lower().startswith(("x-amz-", "x-goog-"))
        ]
        query = urlencode(kept, quote_via=quote, safe="/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
