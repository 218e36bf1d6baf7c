"""RFC 6455 §5: frame layout, opcodes, close codes and masking.

Everything here is pure: bytes in, bytes out.  The frame *reader* lives in
:mod:`wshub.protocol.connection` because it is a state machine; this module
holds the stateless pieces that the reader, the writer and the tests share.
"""

from __future__ import annotations

import enum
import importlib
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

from .errors import WsHubError

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseCode",
    "apply_mask",
    "build_frame",
    "close_payload",
    "is_valid_close_code",
    "parse_close_payload",
]

# RFC 6455 §5.2 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


# RFC 6455 §5.5: control frames carry at most 125 bytes of payload.
MAX_CONTROL_PAYLOAD = 125


class CloseCode(enum.IntEnum):
    """RFC 6455 §7.4.1 status codes (and 1012-1014 from the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent on the wire
    ABNORMAL = 1006  # never sent on the wire
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent on the wire


# Codes a peer may put in a Close frame (RFC 6455 §7.4.1, §7.4.2; IANA
# registry).  1004, 1005, 1006 and 1015 are reserved and never sent; 0-999
# and 5000+ are not used; 3000-4999 are for libraries and applications.
_SENDABLE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


def is_valid_close_code(code: int) -> bool:
    """True if ``code`` may appear in a Close frame on the wire."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


def close_payload(code: int | None, reason: str = "") -> bytes:
    """Build the payload of a Close frame (RFC 6455 §5.5.1).

    ``code=None`` gives an empty payload (the peer then sees 1005).  The
    reason is truncated on a character boundary so that the payload stays
    within the 125 bytes a control frame may carry.
    """
    if code is None:
        return b""
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + data


class InvalidClosePayload(WsHubError, ValueError):
    """A Close frame's payload breaks RFC 6455 §5.5.1 / §7.4."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Return ``(code, reason)`` of a received Close frame's payload.

    An empty payload means 1005 (no status).  Raises
    :class:`InvalidClosePayload` with the close code to answer with: 1002 for
    a one-byte payload or a code that may not be sent, 1007 for a reason that
    is not UTF-8 (RFC 6455 §5.5.1: "the data ... MUST be UTF-8").
    """
    n = len(payload)
    if n == 0:
        return CloseCode.NO_STATUS, ""
    if n == 1:
        raise InvalidClosePayload(CloseCode.PROTOCOL_ERROR, "close frame payload of 1 byte")
    code = (payload[0] << 8) | payload[1]
    # (The usual codes pass the set without a call.)
    if code not in _SENDABLE_CODES and not is_valid_close_code(code):
        raise InvalidClosePayload(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    if n == 2:  # a code without a reason, as most clients close
        return code, ""
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidClosePayload(
            CloseCode.INVALID_PAYLOAD, "close reason is not valid UTF-8"
        ) from None
    return code, reason


# XOR tables: _XOR[k] maps every byte b to b ^ k (for bytes.translate).
_XOR = [bytes(b ^ k for b in range(256)) for k in range(256)]

# Below this many bytes the big-integer XOR is quicker; above it, four
# strided bytes.translate() passes (about twice as fast on large payloads).
_TRANSLATE_MIN = 512


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3).

    Pure Python, but fast: small payloads are XORed as two big integers (in
    C, a machine word at a time); large ones byte-mapped with
    ``bytes.translate``, one pass per mask byte over every fourth byte.
    """
    n = len(data)
    if n == 0:
        return b""
    if n >= _TRANSLATE_MIN:
        buf = bytearray(data)
        _unmask_in_place(buf, 0, n, mask)
        return bytes(buf)
    key = mask * ((n >> 2) + 1)
    return (int.from_bytes(data, sys.byteorder) ^ int.from_bytes(key[:n], sys.byteorder)).to_bytes(
        n, sys.byteorder
    )


def _unmask_in_place(buf: bytearray, start: int, end: int, mask: bytes) -> None:
    """XOR ``buf[start:end]`` with ``mask``, mask byte 0 at ``start``."""
    for k in range(4):
        i = start + k
        if i < end:
            buf[i:end:4] = buf[i:end:4].translate(_XOR[mask[k]])


apply_mask = _apply_mask_py
"""XOR ``data`` with a 4-byte mask; replaced by the C accelerator when built."""


class _PayloadBufferPy:
    """The payload of one large frame, received in place (pure-Python twin).

    ``total`` is the frame's payload length, ``initial`` the first size of
    the buffer (it doubles, up to ``total``, only when full, so memory
    follows what the peer really sent, not what its header claims) and
    ``mask`` the frame's masking key.  Bytes come in either through
    :meth:`write` (masked bytes read elsewhere) or by receiving into
    :meth:`window` and reporting them with :meth:`filled_in`; both unmask.
    :meth:`take` returns the complete payload.

    The C twin (``_speedups.PayloadBuffer``) fills the very ``bytes`` object
    it returns; this one fills a ``bytearray`` and copies it once at the end.
    """

    __slots__ = ("_buf", "_mask", "filled", "total")

    def __init__(self, total: int, initial: int, mask: bytes) -> None:
        if total < 0 or len(mask) != 4:
            raise ValueError("need total >= 0 and a 4-byte mask")
        self.total = total
        self.filled = 0
        self._mask = bytes(mask)
        self._buf: bytearray | None = bytearray(min(max(initial, 1), total))

    @property
    def allocated(self) -> int:
        """Bytes allocated so far."""
        return len(self._buf) if self._buf is not None else 0

    def _room(self) -> bytearray:
        buf = self._buf
        if buf is None:
            raise ValueError("the payload was taken already")
        if self.filled >= len(buf):
            grow = len(buf) if len(buf) <= self.total // 2 else self.total - len(buf)
            try:
                buf.extend(bytes(max(grow, 1)))
            except BufferError:
                raise BufferError("a window of this payload is still in use") from None
        return buf

    def _mask_at(self, start: int) -> bytes:
        """The mask rotated so that its first byte applies at payload offset ``start``."""
        mask = self._mask
        phase = start & 3
        return mask[phase:] + mask[:phase] if phase else mask

    def _unmask(self, buf: bytearray, start: int, data: bytes | bytearray | memoryview) -> None:
        """Unmask ``data`` (payload offset ``start``) into ``buf[start:]``."""
        end = start + len(data)
        if len(data) >= _TRANSLATE_MIN:
            buf[start:end] = data
            _unmask_in_place(buf, start, end, self._mask_at(start))
        else:
            buf[start:end] = _apply_mask_py(data, self._mask_at(start))

    def window(self) -> memoryview:
        if self.filled >= self.total:
            raise BufferError("the payload is complete")
        buf = self._room()
        return memoryview(buf)[self.filled :]

    def filled_in(self, n: int) -> None:
        buf = self._buf
        if buf is None:
            raise ValueError("the payload was taken already")
        if n < 0 or n > len(buf) - self.filled:
            raise ValueError("more bytes than the window holds")
        start = self.filled
        _unmask_in_place(buf, start, start + n, self._mask_at(start))
        self.filled += n

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._buf is None:
            raise ValueError("the payload was taken already")
        if len(data) > self.total - self.filled:
            raise ValueError("more bytes than the payload has left")
        view = memoryview(data)
        while len(view):
            buf = self._room()
            n = min(len(view), len(buf) - self.filled)
            self._unmask(buf, self.filled, view[:n])
            self.filled += n
            view = view[n:]

    def take(self) -> bytes:
        buf = self._buf
        if buf is None:
            raise ValueError("the payload was taken already")
        if self.filled != self.total:
            raise ValueError("the payload is not complete")
        self._buf = None
        return bytes(buf)


PayloadBuffer: type[_PayloadBufferPy] = _PayloadBufferPy
"""Receives one large frame's payload in place; the C twin when built."""

MessageDecoder = tuple[Callable[[bytes, int], "bytes | None"], bytes]
"""A codec's ``message_decoder``: ``(decode_alone, suffix)`` (see ``MessageCodec``)."""

scan_frames: Callable[[bytes, int, int, MessageDecoder | None], tuple[list[Any], int]] | None = None
"""The C accelerator's reader of simple frames (see ``_speedups.c``), or None.

Its pure-Python twin is :meth:`wshub.protocol.connection.Connection.receive_data`
itself, which handles every frame the scanner leaves to it.
"""

ACCELERATED = False
if not os.environ.get("WSHUB_NO_EXTENSIONS"):
    try:
        _speedups = importlib.import_module("wshub._speedups")
    except ImportError:
        pass
    else:
        apply_mask = _speedups.apply_mask
        scan_frames = _speedups.scan_frames
        PayloadBuffer = _speedups.PayloadBuffer
        ACCELERATED = True

_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack


def build_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """Serialise one unmasked server frame (RFC 6455 §5.2; servers never mask)."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _pack_h(b0, 126, n) + payload
    return _pack_q(b0, 127, n) + payload


def build_frame_header(opcode: int, length: int, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """Only the header of an unmasked frame, for writers that send the payload apart."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _pack_h(b0, 126, length)
    return _pack_q(b0, 127, length)
