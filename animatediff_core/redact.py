"""Secrets never leave the process: URIs and config values as they may be logged or saved.

`redact_uri` strips `user:password@` from a URL and drops query parameters that carry credentials
(pre-signed URLs' `X-Amz-Signature`/`X-Amz-Credential`, `token=`, `sig=`, `key=`...);
`redact_value` also blanks values of keys named like secrets (`*token*`, `*secret*`, `*password*`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
_SECRET_PARAM = re.compile(r"(^x-amz-(signature|credential|security-token)$|token|secret|passw|^sig$|signature|^key$|apikey|api_key|credential)", re.I)
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_key|credentials?)(_|$)", re.I)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_uri(uri: str) -> str:
    """`s3://user:pw@bucket/x?X-Amz-Signature=..&a=1` -> `s3://bucket/x?a=1`; plain paths unchanged."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SECRET_PARAM.search(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside free text (a log message) redacted."""
    return _URL.sub(lambda m: redact_uri(m.group(0)), text) if "://" in text else text


def redact_value(key: str, value):
    """A config value as it may be saved or logged: secret-named keys hidden, URLs redacted (lists too)."""
    if value is None:
        return None
    if _SECRET_KEY.search(key):
        return HIDDEN
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return [redact_value("", v) for v in value]
    return value
