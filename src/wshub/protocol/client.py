"""The client side of RFC 6455, sans I/O: the upgrade request and its answer,
masked frames out, server frames in.

Small on purpose: it serves :mod:`wshub.client` (no extensions offered, so
no compression; messages bounded by ``max_size``).  :class:`ClientProtocol`
is fed bytes and returns what arrived; what it must send by itself (pongs,
the Close reply) waits in :meth:`ClientProtocol.data_to_send`.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass, field

from .errors import WsHubError
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    InvalidClosePayload,
    apply_mask,
    close_payload,
    parse_close_payload,
)
from .handshake import accept_key, header_tokens

__all__ = [
    "ClientProtocol",
    "ClosedByPeer",
    "HandshakeFailed",
    "ProtocolViolation",
    "UpgradeRequest",
    "check_upgrade_response",
    "upgrade_request",
]

#: The longest response head accepted before the 101 (bytes).
MAX_RESPONSE_HEAD = 16 * 1024


class HandshakeFailed(WsHubError):
    """The server did not answer the upgrade with a valid 101."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolViolation(WsHubError):
    """The server broke RFC 6455; ``code`` is the close code to send."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClosedByPeer:
    """The server's Close frame (code 1005 when it carried none)."""

    code: int
    reason: str


@dataclass
class UpgradeRequest:
    """An upgrade request: its bytes and the key its answer must match."""

    data: bytes
    key: str
    subprotocols: tuple[str, ...] = field(default=())


def upgrade_request(
    host: str,
    target: str,
    *,
    subprotocols: tuple[str, ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> UpgradeRequest:
    """The HTTP/1.1 upgrade request for ``target`` (path and query) on ``host``."""
    for text in (host, target, *subprotocols, *(n + v for n, v in headers)):
        if "\r" in text or "\n" in text:
            raise ValueError("no CR or LF in a request line or header")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    lines.extend(f"{name}: {value}" for name, value in headers)
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return UpgradeRequest(data, key, subprotocols)


def check_upgrade_response(request: UpgradeRequest, head: bytes) -> dict[str, list[str]]:
    """The header fields of a valid 101 answer to ``request`` (names in lower
    case, every value kept); HandshakeFailed otherwise."""
    try:
        text = head.decode("latin-1")
        status_line, *field_lines = text.split("\r\n")
        version, status_text, *_ = status_line.split(" ", 2)
        status = int(status_text)
    except ValueError:
        raise HandshakeFailed("not an HTTP response") from None
    if not version.startswith("HTTP/1."):
        raise HandshakeFailed(f"not an HTTP/1.x response: {version[:16]!r}")
    if status != 101:
        raise HandshakeFailed(f"upgrade refused with HTTP {status}", status)
    fields: dict[str, list[str]] = {}
    for line in field_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeFailed("malformed header line in the 101 response")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    if "websocket" not in [t.lower() for v in fields.get("upgrade", []) for t in header_tokens(v)]:
        raise HandshakeFailed("the 101 response lacks Upgrade: websocket")
    if "upgrade" not in [t.lower() for v in fields.get("connection", []) for t in header_tokens(v)]:
        raise HandshakeFailed("the 101 response lacks Connection: Upgrade")
    if fields.get("sec-websocket-accept") != [accept_key(request.key)]:
        raise HandshakeFailed("wrong Sec-WebSocket-Accept")
    if fields.get("sec-websocket-extensions"):
        raise HandshakeFailed("the server chose an extension that was not offered")
    chosen = fields.get("sec-websocket-protocol")
    if chosen is not None and (len(chosen) != 1 or chosen[0] not in request.subprotocols):
        raise HandshakeFailed("the server chose a subprotocol that was not offered")
    return fields


_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with a fresh key (RFC 6455 §5.3)."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = _pack_h(b0, 0x80 | 126, n)
    else:
        head = _pack_q(b0, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


class ClientProtocol:
    """One client connection after its 101: frames in and out."""

    __slots__ = ("_buffer", "_message", "_opcode", "_out", "close_sent", "closed", "max_size")

    def __init__(self, max_size: int = 64 * 1024 * 1024) -> None:
        #: The largest message accepted (bytes); a larger one is a 1009.
        self.max_size = max_size
        #: The server's Close, once received.
        self.closed: ClosedByPeer | None = None
        #: True once a Close frame was queued by this side.
        self.close_sent = False
        self._buffer = bytearray()
        self._message: list[bytes] = []
        self._opcode = 0
        self._out: list[bytes] = []

    def send_text(self, text: str) -> bytes:
        return masked_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bytes:
        return masked_frame(OP_BINARY, data)

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        self.close_sent = True
        return masked_frame(OP_CLOSE, close_payload(code, reason))

    def data_to_send(self) -> bytes:
        """The frames this side decided to send (pongs, the Close reply)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[str | bytes | ClosedByPeer]:
        """The messages (and the server's Close) completed by ``data``;
        ProtocolViolation when the server broke the protocol."""
        buf = self._buffer
        buf += data
        events: list[str | bytes | ClosedByPeer] = []
        pos = 0
        while self.closed is None:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "server frame is masked")
            if b0 & 0x70:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                head = 4
                if len(buf) - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                head = 10
                if len(buf) - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            opcode = b0 & 0x0F
            fin = bool(b0 & 0x80)
            if opcode >= 0x8 and (length > 125 or not fin):
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "bad control frame")
            if opcode < 0x8 and sum(map(len, self._message)) + length > self.max_size:
                raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, "message too big")
            if len(buf) - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            event = self._frame(opcode, fin, payload)
            if event is not None:
                events.append(event)
        del buf[:pos]
        return events

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> str | bytes | ClosedByPeer | None:
        if opcode == OP_PING:
            if not self.close_sent:
                self._out.append(masked_frame(OP_PONG, payload))
            return None
        if opcode == OP_PONG:
            return None
        if opcode == OP_CLOSE:
            try:
                code, reason = parse_close_payload(payload)
            except InvalidClosePayload as exc:
                raise ProtocolViolation(exc.code, str(exc)) from None
            self.closed = ClosedByPeer(code, reason)
            if not self.close_sent:
                reply = code if code != CloseCode.NO_STATUS else CloseCode.NORMAL
                self._out.append(self.send_close(reply))
            return self.closed
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "continuation of nothing")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "new message inside another")
            self._opcode = opcode
        else:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._message.append(payload)
        if not fin:
            return None
        data = b"".join(self._message)
        self._message.clear()
        kind, self._opcode = self._opcode, 0
        if kind == OP_BINARY:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(CloseCode.INVALID_PAYLOAD, "text is not UTF-8") from None
