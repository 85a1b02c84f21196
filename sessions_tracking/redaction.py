"""What of a request may be stored: headers and URIs with every credential redacted.

Pure functions, no settings. Two layers: headers and query parameters named like a credential
are replaced by `REDACTED`, and then every credential value seen in the request (the token of
`Authorization`, each cookie value, each redacted header or parameter) is scrubbed from all
that is kept, so a token echoed in another header (a `Referer` with `?token=`, a custom
header) is not stored either.
"""

import re
from urllib.parse import parse_qsl, urlencode

REDACTED = "[redacted]"

# Always secret, whatever the value looks like.
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization"}
)
# Any header or query parameter named like a credential.
SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|api[-_]?key|auth|cookie|session|credential|signature", re.I
)
# Shorter values are not scrubbed from other strings: too likely to match ordinary text.
MIN_SCRUB_LENGTH = 6
# Bounds on what one request record holds (headers are bounded by the server, but a record
# must stay well under the store's value limit whatever the server lets through).
MAX_HEADERS = 64
MAX_VALUE_LENGTH = 1024
MAX_URI_LENGTH = 2048


def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter named `name` holds a credential."""
    return name.lower() in SECRET_HEADERS or SECRET_NAME.search(name) is not None


def _credential_values(name: str, value: str) -> list[str]:
    """Return the secret strings inside one secret header's value."""
    lowered = name.lower()
    found = [value]
    if lowered in ("authorization", "proxy-authorization"):
        found += value.split()[1:]  # "Bearer <token>": the token alone, too
    elif lowered in ("cookie", "set-cookie"):
        for part in value.split(";"):
            _, _, cookie_value = part.partition("=")
            found.append(cookie_value.strip().strip('"'))
    return found


def _redact_query(query: str, secrets: list[str]) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = []
    for name, value in pairs:
        if is_secret_name(name):
            secrets.append(value)
            value = REDACTED
        kept.append((name, value))
    return urlencode(kept, safe="[]:/@,")


def _scrub(text: str, secrets: list[str], limit: int) -> str:
    for secret in secrets:
        if len(secret) >= MIN_SCRUB_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    if "\x00" in text:  # PostgreSQL refuses NUL; header bytes arrive decoded as latin-1
        text = text.replace("\x00", "")
    return text[:limit]


def redact_request(*, path: str, query: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Return (uri, headers) of a request with every credential redacted."""
    secrets: list[str] = []
    kept: dict[str, str] = {}
    for name, value in list(headers.items())[:MAX_HEADERS]:
        if is_secret_name(name):
            secrets += _credential_values(name, value)
            kept[name] = REDACTED
        elif "?" in value:  # a URL (Referer): its credential parameters too
            base, _, value_query = value.partition("?")
            kept[name] = base + "?" + _redact_query(value_query, secrets)
        else:
            kept[name] = value
    uri = path + ("?" + _redact_query(query, secrets) if query else "")
    # Only now are all secrets known: scrub each of them from everything that is kept.
    for name, value in kept.items():
        if value != REDACTED:
            kept[name] = _scrub(value, secrets, MAX_VALUE_LENGTH)
    return _scrub(uri, secrets, MAX_URI_LENGTH), kept
