"""Keep camera credentials out of logs, exception messages, reprs and span attributes: the only
module that redacts.

`redact_url` is for URLs we display (and any text with URLs in it); `scrub` is for text we did not
write (FFmpeg and httpx error strings can echo the URL they were given, credentials included);
`has_credentials` tells whether a text needs either.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

REDACTED: Final = "REDACTED"
REDACTED_USERINFO: Final = f"{REDACTED}:{REDACTED}"

# scheme://[userinfo@]host...: the authority ends at the first '/', '?' or '#' (RFC 3986), and the
# userinfo at the last '@' inside it, so an unescaped '@' in a password is still covered.
_URL_USERINFO: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#]*@")
# Query parameters that cheap cameras and webhooks use to carry credentials (…/snapshot.cgi?pwd=y).
SECRET_QUERY_KEYS: Final = (
    "password", "passwd", "pass", "pwd", "pw", "loginpas", "secret", "token", "access_token",
    "auth", "key", "apikey", "api_key", "sig", "signature",
)  # fmt: skip
# The same test as an RE2 pattern, for the CRDs' CEL rules (tests/test_models.py checks they agree).
SECRET_QUERY_PATTERN: Final = "(?i)[?&;](" + "|".join(SECRET_QUERY_KEYS) + ")="
_SECRET_QUERY: Final = re.compile(
    r"(?P<key>[?&;](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&;#\s]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """`url` with any user info replaced by REDACTED:REDACTED and secret-looking query values hidden.

    `url` may also be a text with URLs in it (an error message): every one of them is redacted.

    >>> redact_url("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101")
    'rtsp://REDACTED:REDACTED@10.0.0.5:554/Streaming/101'
    """
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED_USERINFO}@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{REDACTED}", text)


def has_userinfo(text: str) -> bool:
    """Whether `text` holds a URL with a user name or password in it (scheme://user[:password]@host)."""
    return _URL_USERINFO.search(text) is not None


def has_secret_query(url: str) -> bool:
    """Whether `url` carries a secret-looking query parameter (password=, token=, ...)."""
    return re.search(SECRET_QUERY_PATTERN, url) is not None


def has_credentials(text: str) -> bool:
    """Whether `text` holds what `redact_url` hides: URL user info or a secret-looking query value."""
    return has_userinfo(text) or _SECRET_QUERY.search(text) is not None


def _variants(secret: str) -> set[str]:
    """The forms a secret takes on its way into a URL or an Authorization header."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with URL user info redacted and every secret (also percent-encoded) replaced by REDACTED.

    Empty and None secrets are ignored, so callers can pass optional credentials as they are.
    """
    values: set[str] = set()
    for secret in secrets:
        if secret:
            values |= _variants(secret)
    text = redact_url(text)
    # Longest first: a secret that contains another must go before the shorter one breaks it up.
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def basic_auth_token(username: str, password: str) -> str:
    """The base64 part of an HTTP Basic Authorization header, so that it too can be scrubbed."""
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
