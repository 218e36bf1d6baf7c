"""Plain HTTP responses framed as RFC 9110 says, once per HTTP version (sans-I/O).

Every response wshub sends that is not a WebSocket's 101/200 (a handler's
page, a refused upgrade, a 408 or 431) is framed here, so that HTTP/1.1 and
HTTP/2 agree on what has a body and what its length is:

* 1xx, 204 and 304 responses have no body (RFC 9110 §6.4.1, §15.3.5,
  §15.4.5) and no Content-Length is added to them (§8.6);
* a response to HEAD has the Content-Length its GET would have had, and no
  body (§9.3.2);
* otherwise the body is sent with its Content-Length; a handler's own
  Content-Length and Transfer-Encoding are replaced, since wshub always
  knows the whole body (RFC 9112 §6.3 forbids sending both);
* HTTP/2 drops the connection-specific fields (RFC 9113 §8.2.2) and sends
  lower-case names.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "ResponseHead",
    "frame_http1",
    "frame_http2",
    "reason_phrase",
    "refusal",
    "switching_protocols",
]

# Fields a response must not carry over HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
)
# Fields computed here from the body (RFC 9112 §6).
_FRAMING = frozenset({"content-length", "transfer-encoding"})

Headers = list[tuple[str, str]]


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _body_allowed(status: int) -> bool:
    return not (100 <= status < 200 or status == 204 or status == 304)


class ResponseHead:
    """Status and fields of a response after framing, and the body to send."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _frame(status: int, headers: Headers, body: bytes, method: str) -> ResponseHead:
    out = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    if not _body_allowed(status):
        return ResponseHead(status, out, b"")
    out.append(("Content-Length", str(len(body))))
    return ResponseHead(status, out, b"" if method == "HEAD" else body)


def frame_http1(
    status: int, headers: Headers, body: bytes, *, method: str = "GET", keep_alive: bool = True
) -> bytes:
    """The bytes of an HTTP/1.1 response (RFC 9112 §4, §6)."""
    head = _frame(status, headers, body, method)
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines.extend(f"{k}: {v}" for k, v in head.headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + head.body


def frame_http2(
    status: int, headers: Headers, body: bytes, *, method: str = "GET"
) -> tuple[Headers, bytes]:
    """The header block (``:status`` first, lower-case names) and body of an
    HTTP/2 response (RFC 9113 §8.3.2)."""
    head = _frame(status, headers, body, method)
    block = [(":status", str(status))]
    for k, v in head.headers:
        name = k.lower()
        if name not in _CONNECTION_SPECIFIC:
            block.append((name, v))
    return block, head.body


def refusal(status: int, reason: str, headers: Headers | None = None) -> tuple[Headers, bytes]:
    """Fields and body of an error answer: the short reason as plain text."""
    body = (reason + "\n").encode("utf-8", "replace")
    return [("Content-Type", "text/plain; charset=utf-8"), *(headers or ())], body


_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def switching_protocols(accept: bytes, headers: Headers) -> bytes:
    """The 101 that completes an HTTP/1.1 WebSocket handshake (RFC 6455 §4.2.2)."""
    if not headers:
        return _SWITCHING + accept + b"\r\n\r\n"
    if len(headers) == 1:  # the usual Set-Cookie alone: no list, no join
        name, value = headers[0]
        fields = f"\r\n{name}: {value}\r\n\r\n"
    else:
        fields = "".join([f"\r\n{k}: {v}" for k, v in headers]) + "\r\n\r\n"
    return _SWITCHING + accept + fields.encode("latin-1")
