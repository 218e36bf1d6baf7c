"""The opening handshake, server side: RFC 6455 §4.2 (HTTP/1.1) and RFC 8441 §4-5 (HTTP/2).

Pure functions over already-parsed request headers.  The transports parse
HTTP (httptools for HTTP/1.1, h2 for HTTP/2); this module only decides
whether the request is a valid WebSocket upgrade, and builds the answer.

Headers are passed as a ``dict`` of lower-case names to values; repeated
fields are joined with ``", "`` (RFC 9110 §5.3), except ``cookie``, joined
with ``"; "`` (RFC 6265 §5.4).  :func:`add_header` does that joining.
"""

from __future__ import annotations

import binascii
import hashlib
import importlib
import re
from collections.abc import Callable

from . import frames
from .errors import WsHubError

__all__ = [
    "SUPPORTED_VERSIONS",
    "HandshakeError",
    "Headers",
    "UpgradeInfo",
    "accept_key",
    "add_header",
    "check_h2_connect",
    "check_http1_upgrade",
    "header_tokens",
    "is_token",
    "is_websocket_upgrade",
    "parse_subprotocols",
    "select_subprotocol",
]

Headers = dict[str, str]

# RFC 6455 §4.2.2 and hybi-08 (same framing): the versions we speak.
SUPPORTED_VERSIONS = (13, 8)
_VERSION_HEADER = ("Sec-WebSocket-Version", "13, 8")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(WsHubError):
    """The request cannot be upgraded; answer with ``status``.

    ``reason`` is a short, safe text for the response body and the log line;
    ``headers`` are extra response headers (426 carries the versions we speak).
    ``body``: the whole answer's body instead of the reason (``headers`` are
    then the answer's fields as they are: a handshake hook's Response).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []
        self.body = body


class UpgradeInfo:
    """What a valid upgrade request told us."""

    __slots__ = ("extensions", "key", "origin", "subprotocols", "version")

    def __init__(
        self,
        version: int,
        key: str | None,
        origin: str | None,
        extensions: str,
        subprotocols: tuple[str, ...] = (),
    ) -> None:
        self.version = version
        self.key = key  # None for HTTP/2 (RFC 8441 §5: no key, no accept)
        self.origin = origin
        self.extensions = extensions
        self.subprotocols = subprotocols  # Sec-WebSocket-Protocol, in the client's order


_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def add_header(headers: Headers, name: str, value: str) -> None:
    """Add one field to ``headers``, joining repeats the way HTTP does."""
    name = name.lower()
    old = headers.get(name)
    if old is None:
        headers[name] = value
    else:
        headers[name] = old + ("; " if name == "cookie" else ", ") + value


def header_tokens(value: str) -> list[str]:
    """The comma-separated tokens of a header, lower-cased, blanks dropped."""
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def _has_token(value: str, token: str) -> bool:
    """True if the comma-separated header ``value`` holds ``token`` (lower-case)."""
    if value.lower() == token:  # the usual single token: no split
        return True
    return token in header_tokens(value)


# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(value: str) -> bool:
    """True if ``value`` is an HTTP token (RFC 9110 §5.6.2), as subprotocol names must be."""
    return _TOKEN.fullmatch(value) is not None


def parse_subprotocols(value: str | None) -> tuple[str, ...]:
    """The subprotocols a client offers in ``Sec-WebSocket-Protocol``, in its order.

    RFC 6455 §4.1 and §11.3.4: a comma-separated list of tokens, possibly
    over several header lines (joined with ", " by :func:`add_header`);
    empty list elements are ignored (RFC 9110 §5.6.1.2).  Names compare
    exactly, case included.  Raises :class:`HandshakeError` (400) for a
    name that is not a token or a name offered twice.
    """
    if not value:
        return ()
    if _TOKEN.fullmatch(value):  # the usual single offer: no split
        return (value,)
    offers = tuple(item for item in (part.strip(" \t") for part in value.split(",")) if item)
    for name in offers:
        if _TOKEN.fullmatch(name) is None:
            raise HandshakeError(400, "invalid Sec-WebSocket-Protocol")
    if len(set(offers)) != len(offers):
        raise HandshakeError(400, "a subprotocol offered twice in Sec-WebSocket-Protocol")
    return offers


def select_subprotocol(offered: tuple[str, ...], supported: tuple[str, ...]) -> str | None:
    """The default choice (RFC 6455 §4.2.2): the first of the client's offers
    that the server speaks, or None."""
    for name in offered:
        if name in supported:
            return name
    return None


def is_websocket_upgrade(headers: Headers) -> bool:
    """True if the request asks to become a WebSocket (so it is judged as one)."""
    upgrade = headers.get("upgrade")
    return upgrade is not None and _has_token(upgrade, "websocket")


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return accept_key_bytes(key).decode("ascii")


def _accept_key_py(key: str) -> bytes:
    """:func:`accept_key` as the bytes that go into the response (hashlib):
    the pure-Python twin of the C accelerator's ``accept_key``."""
    return binascii.b2a_base64(hashlib.sha1(key.encode("ascii") + _GUID).digest(), newline=False)


#: :func:`accept_key` as the bytes that go into the response: the C
#: accelerator's (SHA-1 written out: a fraction of hashlib's cost per call
#: on a two-block message), or its twin above.
accept_key_bytes: Callable[[str], bytes] = _accept_key_py
if frames.ACCELERATED:
    accept_key_bytes = importlib.import_module("wshub._speedups").accept_key


def _origin(headers: Headers) -> str | None:
    # Version 8 (hybi-08) browsers sent Sec-WebSocket-Origin instead of Origin.
    origin = headers.get("origin")
    if origin is None:
        origin = headers.get("sec-websocket-origin")
    return origin


# The exact spellings of SUPPORTED_VERSIONS (RFC 6455 §4.1: no leading zero).
# Compared as strings: int() and str.isdigit() also take other scripts' digits
# ("١٣" is 13 to int(); "¹³".isdigit() but int() refuses it).
_VERSION_TEXT = {str(v): v for v in SUPPORTED_VERSIONS}


def _version(headers: Headers) -> int:
    value = headers.get("sec-websocket-version")
    if value is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Version", [_VERSION_HEADER])
    version = _VERSION_TEXT.get(value.strip(" \t"))
    if version is None:
        # RFC 6455 §4.2.2 point 4 and §4.4: 426 and the versions we speak,
        # for any value that is not one of them (as "abc" or "7" always got).
        raise HandshakeError(426, "unsupported WebSocket version", [_VERSION_HEADER])
    return version


def check_http1_upgrade(
    method: str, http_version: str, headers: Headers, is_upgrade: bool = False
) -> UpgradeInfo:
    """Validate an HTTP/1.1 upgrade request (RFC 6455 §4.2.1).

    Raises :class:`HandshakeError` (400, 405 or 426) when it is not valid.
    ``is_upgrade``: the caller already found :func:`is_websocket_upgrade` true.
    """
    if method != "GET":
        raise HandshakeError(405, "a WebSocket upgrade must use GET", [("Allow", "GET")])
    if http_version not in ("1.1",) and not http_version.startswith(("2", "3")):
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    if "host" not in headers:
        raise HandshakeError(400, "missing Host header")
    connection = headers.get("connection", "")
    # (The usual "Upgrade" is the token itself: no call.)
    if connection != "Upgrade" and not _has_token(connection, "upgrade"):
        raise HandshakeError(400, "Connection header must contain Upgrade")
    if not is_upgrade and not is_websocket_upgrade(headers):
        raise HandshakeError(400, "Upgrade header must contain websocket")
    key = headers.get("sec-websocket-key")
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    key = key.strip()
    if not _KEY.fullmatch(key):
        # RFC 6455 §4.1: the base64 of 16 bytes, i.e. 22 base64 characters
        # and "==" (what b64decode(validate=True) takes and decodes to 16
        # bytes).  Also catches a repeated header, joined to "a, b" above.
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    # The usual "13" is read without a call; anything else by _version.
    version = 13 if headers.get("sec-websocket-version") == "13" else _version(headers)
    offered = headers.get("sec-websocket-protocol")
    return UpgradeInfo(
        version,
        key,
        _origin(headers),
        headers.get("sec-websocket-extensions", ""),
        parse_subprotocols(offered) if offered else (),
    )


def check_h2_connect(method: str, protocol: str | None, headers: Headers) -> UpgradeInfo:
    """Validate an RFC 8441 extended CONNECT (pseudo-headers already checked by h2).

    ``headers`` are the regular (non-pseudo) fields.  RFC 8441 §5: no key and
    no accept; version 13 only (version 8 predates HTTP/2).
    """
    if method != "CONNECT":
        raise HandshakeError(405, "a WebSocket over HTTP/2 must use CONNECT")
    if protocol is None:
        raise HandshakeError(400, "CONNECT without :protocol")
    if protocol.lower() != "websocket":
        raise HandshakeError(501, f"unsupported :protocol {protocol[:40]!r}")
    value = headers.get("sec-websocket-version")
    if value is None or value.strip(" \t") != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version", [("sec-websocket-version", "13")]
        )
    return UpgradeInfo(
        13,
        None,
        _origin(headers),
        headers.get("sec-websocket-extensions", ""),
        parse_subprotocols(headers.get("sec-websocket-protocol")),
    )
