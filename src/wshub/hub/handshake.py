"""What the hub keeps of a client's opening handshake: :class:`Handshake`.

The hub's ``on_handshake`` hook receives a :class:`Handshake` after the
built-in guards (Host, origin, per IP) passed: the request as the client
sent it (method, target, headers, cookies, the client's address, TLS
details), and what the answer will carry (the chosen subprotocol, extra
fields, cookies, the data attached to the client).  The same object is
``ws.request(client_id)`` afterwards.

It is kept per client, so it holds references, never copies: the request's
headers dict, the ``UpgradeRequest`` it came with; the cookies, the query's
parameters and the TLS details are made on first use.  Without a hook,
nothing of the request is kept: a client's subprotocol and data then live
in a :class:`ClientExtras`, made only when there is one to keep.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from ..protocol.handshake import is_token
from ..transport.link import UpgradeRequest
from ..transport.upgrade import SNI_ATTRIBUTE

__all__ = ["ClientExtras", "Handshake", "TlsInfo", "check_fields"]

# Fields the WebSocket answer sets itself: a hook may not add them.
_RESERVED_FIELDS = frozenset(
    {
        "connection",
        "content-length",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "transfer-encoding",
        "upgrade",
    }
)
# A field value: visible characters, spaces and tabs (RFC 9110 §5.5); no
# CR, LF or NUL that would end the field or the head early.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# RFC 6265 §4.1.1: cookie-octet, optionally in double quotes.
_COOKIE_VALUE = re.compile(
    r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*|"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"'
)
# A cookie's Path or Domain attribute value: no ";" and no control character.
_ATTRIBUTE_VALUE = re.compile(r"[\x20-\x3a\x3c-\x7e]*")
_SAMESITE = ("Strict", "Lax", "None")
_TLS_VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


def check_fields(fields: object, *, answer: bool) -> list[tuple[str, str]]:
    """``fields`` as a list of ``(name, value)`` str pairs fit to be sent.

    Raises ValueError (or TypeError) for anything that could split or
    corrupt the response: a name that is not a token, a CR, LF or NUL in a
    value; with ``answer`` (the 101/200), also a field the WebSocket answer
    sets itself (Upgrade, Sec-WebSocket-Protocol ...).
    """
    if not isinstance(fields, (list, tuple)):
        raise TypeError(
            f"response headers must be a list of (name, value), not {type(fields).__name__}"
        )
    checked: list[tuple[str, str]] = []
    for field in fields:
        if not isinstance(field, tuple) or len(field) != 2:
            raise TypeError(f"a response header must be a (name, value) tuple, not {field!r}")
        name, value = field
        if not isinstance(name, str) or not is_token(name):
            raise ValueError(f"invalid response header name {name!r}")
        if not isinstance(value, str) or _FIELD_VALUE.fullmatch(value) is None:
            raise ValueError(f"invalid value for response header {name!r}")
        if answer and name.lower() in _RESERVED_FIELDS:
            raise ValueError(f"response header {name!r} is set by the WebSocket answer itself")
        checked.append((name, value))
    return checked


def parse_cookies(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (RFC 6265 §5.4), name → value; the
    first of a repeated name wins (browsers send the most specific first)."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip(" \t")
        if not sep or not name or name in cookies:
            continue
        value = value.strip(" \t")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies


class TlsInfo:
    """The TLS details of a connection (``Handshake.tls``).

    ``version`` ("TLSv1.3"), ``cipher`` (the suite's name), ``server_name``
    (the SNI the client sent), ``alpn_protocol`` ("http/1.1", "h2"),
    ``peer_certificate`` (``getpeercert()``'s dict when the client showed a
    verified certificate).  Any of them is None when unknown: under ASGI
    they come from the scope's ``tls`` extension, when the server has it.
    """

    __slots__ = ("alpn_protocol", "cipher", "peer_certificate", "server_name", "version")

    def __init__(
        self,
        *,
        version: str | None = None,
        cipher: str | None = None,
        server_name: str | None = None,
        alpn_protocol: str | None = None,
        peer_certificate: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.cipher = cipher
        self.server_name = server_name
        self.alpn_protocol = alpn_protocol
        self.peer_certificate = peer_certificate

    @classmethod
    def from_source(cls, source: object) -> TlsInfo:
        """From an ``ssl.SSLObject`` or an ASGI scope's ``tls`` extension (a dict)."""
        if isinstance(source, dict):
            version = source.get("tls_version")
            return cls(version=_TLS_VERSIONS.get(version) if isinstance(version, int) else None)
        if source is None:
            return cls()
        ssl_object: Any = source
        cipher = ssl_object.cipher()
        return cls(
            version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            server_name=getattr(ssl_object, SNI_ATTRIBUTE, None),
            alpn_protocol=ssl_object.selected_alpn_protocol(),
            peer_certificate=ssl_object.getpeercert() or None,
        )

    def __repr__(self) -> str:
        return (
            f"TlsInfo(version={self.version!r}, cipher={self.cipher!r}, "
            f"server_name={self.server_name!r})"
        )


class ClientExtras:
    """A client's subprotocol and data when no :class:`Handshake` is kept."""

    __slots__ = ("data", "subprotocol")

    def __init__(self, subprotocol: str | None, data: Any = None) -> None:
        self.subprotocol = subprotocol
        self.data = data


class Handshake:
    """A client's opening handshake, as the ``on_handshake`` hook sees it.

    Read-only: ``method`` ("GET"; "CONNECT" over HTTP/2), ``http_version``
    ("1.1", "2" ...), ``scheme`` ("ws"/"wss"), ``target`` (as sent),
    ``path``, ``query`` (raw), ``query_params`` (``parse_qs``), ``url``,
    ``headers`` (lower-case names; repeated fields joined with ", ", cookies
    with "; "), ``cookies``, ``client`` (the client's address after
    ``trusted_proxies``), ``peer`` (the TCP peer's (ip, port)), ``tls``
    (:class:`TlsInfo`, None without TLS), ``subprotocols`` (the client's
    offers, in order).

    Writable: ``subprotocol`` (one of the offers, or None), ``data`` (any
    object: ``ws.data(client_id)`` later), ``response_headers`` (a list of
    ``(name, value)`` added to the answer); :meth:`set_cookie`.
    """

    __slots__ = (
        "_cookies",
        "_query_params",
        "_request",
        "_subprotocol",
        "_tls",
        "client",
        "data",
        "path",
        "query",
        "response_headers",
        "url",
    )

    def __init__(
        self,
        request: UpgradeRequest,
        *,
        client: str,
        path: str,
        query: str,
        url: str,
        subprotocol: str | None,
    ) -> None:
        self._request = request
        self.client = client
        self.path = path
        self.query = query
        self.url = url
        self._subprotocol = subprotocol
        self.data: Any = None
        self.response_headers: list[tuple[str, str]] = []
        self._cookies: dict[str, str] | None = None
        self._query_params: dict[str, list[str]] | None = None
        self._tls: TlsInfo | None = None

    # ---------------------------------------------------------- the request

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def http_version(self) -> str:
        return self._request.http_version

    @property
    def scheme(self) -> str:
        return self._request.scheme

    @property
    def target(self) -> str:
        return self._request.target

    @property
    def headers(self) -> dict[str, str]:
        return self._request.headers

    @property
    def peer(self) -> tuple[str, int]:
        return self._request.peer

    @property
    def subprotocols(self) -> tuple[str, ...]:
        return self._request.info.subprotocols

    @property
    def cookies(self) -> dict[str, str]:
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = parse_cookies(self._request.headers.get("cookie"))
        return cookies

    @property
    def query_params(self) -> dict[str, list[str]]:
        params = self._query_params
        if params is None:
            params = self._query_params = parse_qs(self.query)
        return params

    @property
    def tls(self) -> TlsInfo | None:
        if self._request.scheme != "wss":
            return None
        info = self._tls
        if info is None:
            info = self._tls = TlsInfo.from_source(self._request.tls)
        return info

    # ------------------------------------------------------------ the answer

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    @subprotocol.setter
    def subprotocol(self, value: str | None) -> None:
        if value is not None and value not in self._request.info.subprotocols:
            raise ValueError(
                f"subprotocol {value!r} was not offered by the client "
                f"(offers: {list(self._request.info.subprotocols)})"
            )
        self._subprotocol = value

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool | None = None,
        httponly: bool = True,
        samesite: str | None = "Lax",
    ) -> None:
        """Add a ``Set-Cookie`` to the answer (RFC 6265 §4.1).

        ``secure=None`` sets Secure under TLS (``wss``) only.  Raises
        ValueError for a name that is not a token or a value, path or
        domain that a cookie cannot carry.
        """
        if not isinstance(name, str) or not is_token(name):
            raise ValueError(f"invalid cookie name {name!r}")
        if not isinstance(value, str) or _COOKIE_VALUE.fullmatch(value) is None:
            raise ValueError(f"invalid value for cookie {name!r}")
        cookie = f"{name}={value}"
        if max_age is not None:
            if isinstance(max_age, bool) or not isinstance(max_age, int):
                raise TypeError("max_age must be an int (seconds) or None")
            cookie += f"; Max-Age={max_age}"
        for attribute, text in (("Path", path), ("Domain", domain)):
            if text is not None:
                if not isinstance(text, str) or _ATTRIBUTE_VALUE.fullmatch(text) is None:
                    raise ValueError(f"invalid cookie {attribute} {text!r}")
                cookie += f"; {attribute}={text}"
        if secure or (secure is None and self._request.scheme == "wss"):
            cookie += "; Secure"
        if httponly:
            cookie += "; HttpOnly"
        if samesite is not None:
            if samesite not in _SAMESITE:
                raise ValueError("samesite must be 'Strict', 'Lax', 'None' or None")
            cookie += f"; SameSite={samesite}"
        self.response_headers.append(("Set-Cookie", cookie))

    def __repr__(self) -> str:
        # The path, not the target: a query may carry a token, and reprs end up in logs.
        return f"<Handshake {self.method} {self.path[:80]!r} from {self.client}>"
