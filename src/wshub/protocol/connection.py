"""One WebSocket connection's whole lifecycle, server side (RFC 6455).

Sans-I/O, in the manner of python-websockets' ``Protocol`` and h11: the
driver (one per connection, in :mod:`wshub.transport.link`) feeds what the
peer sent and the current time in, and does what comes out; nothing here
reads a clock, touches a socket or imports asyncio, so HTTP/1.1, HTTP/2 and
the tests all run the same code.

In:

* :meth:`Connection.receive_data` (bytes, now) and :meth:`Connection.receive_eof`;
* the ``send_*`` methods for what the application sends (they return the
  frame bytes at once, so that the driver queues them in call order);
* :meth:`Connection.on_deadline` when the time :attr:`Connection.deadline`
  names has come.

Out:

* events, from ``receive_data`` in the order they happened on the wire: a
  ``str`` (a text message, validated UTF-8), ``bytes`` (a binary message),
  :class:`Ping`, :class:`Pong`, :class:`CloseReceived` and
  :class:`ProtocolError` (the peer broke the protocol or flooded pings; the
  connection is already being failed with its code);
* :meth:`Connection.data_to_send`: the frames the core decided to send on
  its own (pongs, the reply to a Close, the Close that fails the
  connection or ends a pong timeout);
* :attr:`Connection.end`: what to do with the transport (close it after
  flushing, half-close and linger, or abort it now);
* :attr:`Connection.deadline`: when to call ``on_deadline`` next;
* :meth:`Connection.connection_lost`: the code, reason and cleanliness the
  close is reported with.

:attr:`Connection.pending` is set whenever any of the last three changed,
so a driver checks one attribute after each call.  The lifecycle, with the
transitions tested one by one in ``tests/protocol/test_lifecycle.py``::

    OPEN --send_close--> CLOSE_SENT --peer's Close--> CLOSED, end=CLOSE
    OPEN --peer's Close--> CLOSE_RECEIVED --data_to_send (our reply)--> CLOSED, end=CLOSE
    OPEN --protocol error / ping flood--> CLOSED (failed), end=HALF_CLOSE
    any --EOF before CLOSED--> end=CLOSE, reported as 1006
    CLOSE_SENT / end set --close_timeout passes--> end=ABORT
    OPEN --pong_timeout passes--> CLOSE_SENT (1011; close_code 1011 until the peer answers)

The server closes the TCP connection first once both Close frames passed
(RFC 6455 §7.1.1); a failed connection stops writing but keeps reading
until the peer hangs up (§7.1.7), so that unread input does not turn into
a reset that destroys our Close frame.  Every ``end`` comes with a deadline
after which the transport is aborted: a peer that never reads or never
answers cannot hold the connection.

Payloads are consumed as they arrive, frame by frame and chunk by chunk, so
the unconsumed input never holds more than one frame header or one control
frame (≤ 131 bytes), and a message is only ever buffered up to
``max_payload`` bytes; a message also has at most one frame per 64 bytes of
``max_payload`` (at least 1,024), so that empty fragments cannot cost CPU
without counting.  Text is validated incrementally and fails fast on the
first invalid byte, even in the middle of a frame (Autobahn 6.4.x).
"""

from __future__ import annotations

import codecs
import enum
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from .errors import ConnectionClosedError, WsHubError
from .flood import PingFloodGuard
from .frames import (
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    InvalidClosePayload,
    MessageDecoder,
    PayloadBuffer,
    _PayloadBufferPy,
    apply_mask,
    build_frame,
    build_frame_header,
    close_payload,
    parse_close_payload,
)
from .frames import scan_frames as _scan_frames

__all__ = [
    "CloseReceived",
    "CloseResult",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLimits",
    "ConnectionState",
    "EndMode",
    "Event",
    "MessageCodec",
    "MessageTooBig",
    "Ping",
    "Pong",
    "ProtocolError",
]

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class Ping:
    """A Ping frame arrived.

    ``pong`` is the answer the connection decided on (within the flood
    guard's limits; ``b""``: none now): the driver sends it when it handles
    this event, so that it keeps its place among the answers to the
    messages around it (Autobahn 5.6: a ping between two fragments is
    answered before the message is echoed).
    """

    __slots__ = ("payload", "pong")

    def __init__(self, payload: bytes, pong: bytes = b"") -> None:
        self.payload = payload
        self.pong = pong

    def __repr__(self) -> str:
        return f"Ping({self.payload!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ping) and other.payload == self.payload


class Pong:
    """A Pong frame arrived.

    ``rtt``: when it answers the last ping we sent (same payload), the
    seconds since that ping (the ``now`` of both calls); else None.
    """

    __slots__ = ("payload", "rtt")

    def __init__(self, payload: bytes, rtt: float | None = None) -> None:
        self.payload = payload
        self.rtt = rtt

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pong) and other.payload == self.payload


class CloseReceived:
    """The peer sent a valid Close frame.

    ``code`` is 1005 when the frame had no payload.  If we had not sent a
    Close frame yet, the connection answers it (see
    :meth:`Connection.data_to_send`) with :attr:`reply_code` (``None``: an
    empty Close).
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    @property
    def reply_code(self) -> int | None:
        return _reply_code(self.code)

    def __repr__(self) -> str:
        return f"CloseReceived({self.code}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CloseReceived)
            and other.code == self.code
            and other.reason == self.reason
        )


class ProtocolError:
    """The peer broke the protocol: fail the connection with ``code``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.code}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ProtocolError)
            and other.code == self.code
            and other.reason == self.reason
        )


Event = str | bytes | Ping | Pong | CloseReceived | ProtocolError


class MessageTooBig(WsHubError):
    """Raised by a :class:`MessageCodec` when a message inflates past the limit."""


class MessageCodec(Protocol):
    """A per-message extension that transforms payloads (RFC 7692 and the like).

    The connection calls :meth:`decode` with each unmasked chunk of a message
    that had RSV1 set, and :meth:`encode` for each outgoing message.
    ``shared_frame_key``: connections whose codecs have equal keys (not None)
    turn one message into the same frame, so a broadcast frames it once.
    """

    @property
    def shared_frame_key(self) -> Hashable | None: ...

    @property
    def message_decoder(self) -> MessageDecoder | None:
        """None, or where each message is decoded on its own (nothing kept
        from one to the next): ``(decode_alone, suffix)``.

        ``decode_alone(payload + suffix, max_size)`` decodes one whole
        message (one frame) like :meth:`decode` given it in one chunk, but
        answers None where :meth:`decode` would raise.  The C frame scanner
        uses it; whatever it refuses, the connection reads again through
        :meth:`decode`, which reports why.
        """
        ...

    def decode(self, data: bytes, end_of_message: bool, max_size: int) -> bytes:
        """Return the decoded bytes of this chunk.

        ``max_size`` is how many more decoded bytes the message may have
        (``-1``: no limit); raise :class:`MessageTooBig` rather than produce
        more.  Raise ``ValueError`` for a corrupt stream.
        """
        ...

    def encode(self, data: bytes) -> bytes | None:
        """Return the encoded payload, or ``None`` to send ``data`` as it is (no RSV1)."""
        ...


class ConnectionState(enum.IntEnum):
    OPEN = 1
    CLOSE_SENT = 2  # we sent Close, waiting for the peer's ("readOnly")
    CLOSE_RECEIVED = 3  # the peer sent Close, we have not answered ("writeOnly")
    CLOSED = 4  # both Close frames passed, or the connection failed


class EndMode(enum.IntEnum):
    """What the driver does with the transport (:attr:`Connection.end`)."""

    NONE = 0  # keep it
    CLOSE = 1  # flush what is queued, then close (the server closes TCP first)
    HALF_CLOSE = 2  # flush, stop sending, keep reading until the peer hangs up
    ABORT = 3  # drop it now, whatever is queued (a deadline passed)


class CloseResult:
    """How a connection ended, as reported to the application."""

    __slots__ = ("code", "reason", "was_clean")

    def __init__(self, code: int, reason: str, was_clean: bool) -> None:
        self.code = code
        self.reason = reason
        self.was_clean = was_clean

    def __repr__(self) -> str:
        return f"CloseResult({self.code}, {self.reason!r}, was_clean={self.was_clean})"


class ConnectionLimits:
    """The lifecycle's limits; one object may be shared by many connections
    (a change applies to each from its next use of the value: the next
    frame header for ``max_payload``, the next close for ``close_timeout``)."""

    __slots__ = ("close_timeout", "max_payload", "ping_burst", "ping_flood_limit", "ping_rate")

    def __init__(
        self,
        *,
        max_payload: int = 0,
        close_timeout: float = 10.0,
        ping_burst: int = 16,
        ping_rate: float = 8.0,
        ping_flood_limit: int = 128,
    ) -> None:
        # Bytes in one message (all fragments, after decompression); < 1: no limit.
        self.max_payload = max_payload
        # Seconds from our Close frame (or from the decision to end the
        # transport) until the transport is aborted.
        self.close_timeout = close_timeout
        # The ping-flood guard (see PingFloodGuard).
        self.ping_burst = ping_burst
        self.ping_rate = ping_rate
        self.ping_flood_limit = ping_flood_limit


_DEFAULT_LIMITS = ConnectionLimits()  # never changed: a documented shared default

# 1006 made once: int(CloseCode.ABNORMAL) builds a new int (past the
# small-int cache) that every open connection would keep.
_ABNORMAL = int(CloseCode.ABNORMAL)

# The states send_message checks for every message, read once: an enum
# member looked up on its class costs several times a global's lookup.
_OPEN = ConnectionState.OPEN
_CLOSE_RECEIVED = ConnectionState.CLOSE_RECEIVED
# Likewise the states and ends every connection passes through once
# (construction, the closing handshake, connection_lost), and 1005.
_CLOSE_SENT = ConnectionState.CLOSE_SENT
_CLOSED = ConnectionState.CLOSED
_KEEP = EndMode.NONE
_CLOSE_END = EndMode.CLOSE
_NO_STATUS = int(CloseCode.NO_STATUS)


_HEADER = 0
_PAYLOAD = 1
_DISCARD = 2
_DIRECT = 3  # a large binary frame's payload goes into a PayloadBuffer

# Binary frames at least this long, that are a whole message and arrive in
# pieces, are received into one preallocated buffer (no chunk list, no
# join; a transport may even read into it directly: read_window()).
DIRECT_MIN = 65536
# The buffer starts at twice what came with the header (at least this) and
# doubles when full: a header's claim alone never allocates much.
_DIRECT_INITIAL = 65536


_T = TypeVar("_T")


class _Timers:
    """A connection's rarely used lifecycle state, kept apart to keep idle
    connections small."""

    __slots__ = (
        "_close_deadline",
        "_deferred_pong",
        "_deferred_pong_at",
        "_guard",
        "_ping_payload",
        "_ping_sent_at",
        "_pong_deadline",
    )

    def __init__(self) -> None:
        self._close_deadline: float | None = None  # the transport gone by then
        self._pong_deadline: float | None = None  # the pong to _ping_payload due by then
        self._ping_payload: bytes | None = None
        self._ping_sent_at: float | None = None  # when the ping of _ping_payload went out
        self._deferred_pong: bytes | None = None  # a coalesced ping's payload
        self._deferred_pong_at: float | None = None  # ... answerable then
        self._guard: PingFloodGuard | None = None


class _TimerField(Generic[_T]):
    """A Connection attribute that lives in its :class:`_Timers` (None until set)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, conn: Connection, owner: type | None = None) -> _T | None:
        timers = conn._timers
        return None if timers is None else getattr(timers, self.name)

    def __set__(self, conn: Connection, value: _T | None) -> None:
        timers = conn._timers
        if timers is None:
            if value is None:
                return
            timers = conn._timers = _Timers()
        setattr(timers, self.name, value)


class Connection:
    """Server side of one WebSocket connection.

    ``limits`` holds ``max_payload`` (one message, all fragments, after
    decompression; ``< 1``: no limit), the timeouts and the ping-flood
    guard's figures, read where they are used: a shared
    :class:`ConnectionLimits` changed later applies from the next frame.
    ``max_payload`` alone (no ``limits``) makes limits of its own.
    ``codec`` is the negotiated per-message extension, if any; without one
    an RSV1 bit is a protocol error.
    """

    __slots__ = (
        "_buf",
        "_failure",
        "_frame_fin",
        "_frame_left",
        "_frame_mask",
        "_frame_masked_pos",
        "_msg_compressed",
        "_msg_frames",
        "_msg_opcode",
        "_msg_parts",
        "_msg_size",
        "_now",
        "_out",
        "_read_state",
        "_timers",
        "_utf8",
        "close_code",
        "close_reason",
        "codec",
        "deadline",
        "direct_payload",
        "end",
        "failed",
        "limits",
        "pending",
        "state",
    )

    _close_deadline = _TimerField[float]()
    _pong_deadline = _TimerField[float]()
    _ping_payload = _TimerField[bytes]()
    _ping_sent_at = _TimerField[float]()
    _deferred_pong = _TimerField[bytes]()
    _deferred_pong_at = _TimerField[float]()
    _guard = _TimerField[PingFloodGuard]()

    def __init__(
        self,
        *,
        max_payload: int | None = None,
        codec: MessageCodec | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        if limits is None:
            limits = ConnectionLimits(max_payload=max_payload) if max_payload else _DEFAULT_LIMITS
        elif max_payload is not None:
            raise TypeError("give max_payload in limits, not beside them")
        self.codec = codec
        self.limits = limits
        self.state = _OPEN
        self.failed = False
        # What the close will be reported with (see connection_lost).
        self.close_code = _ABNORMAL
        self.close_reason = ""
        # Outputs for the driver (see the module docstring).
        self.end = _KEEP
        self.deadline: float | None = None
        self.pending = False
        self._out: list[bytes] | None = None  # made on first use: most connections never need it
        self._failure: tuple[int, str] | None = None  # the Close that fails us, still due
        # Deadlines and ping state, made on first use (most connections
        # never ping or close early): see _Timers and _TimerField.
        self._timers: _Timers | None = None
        self._now = 0.0  # the time of the data being read
        self._buf = b""
        self._read_state = _HEADER
        # The frame being read (payload not yet complete).
        self._frame_fin = False
        self._frame_left = 0
        self._frame_mask = b""
        self._frame_masked_pos = 0
        # The message being assembled; _msg_opcode 0 means none.
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_size = 0
        self._msg_frames = 0
        # Pieces of the message: big chunks as they came (joined once at the
        # end), small ones gathered into a bytearray (no object per fragment).
        self._msg_parts: list[bytes | bytearray] | None = None
        self._utf8: codecs.IncrementalDecoder | None = None
        # The buffer of the large binary frame being read (see DIRECT_MIN),
        # or None: a transport that sees one may receive into read_window().
        self.direct_payload: _PayloadBufferPy | None = None

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        ``now`` is the driver's clock (seconds, monotonic); deadlines come
        out on the same clock.  Frame parsing alone does not need it.
        """
        events: list[Event] = []
        if self._read_state == _DISCARD:
            return events
        self._now = now
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        if (
            _scan_frames is not None
            and self._read_state == _HEADER
            and not self._msg_opcode
            and end
            and data[0] & 0x0F < 8  # a control frame first (a Close...) is Python's anyway
        ):
            # C fast path: every leading complete, unfragmented, valid data
            # frame at once (compressed ones too where the codec decodes
            # each message alone); whatever it stops at is read below as usual.
            codec = self.codec
            events, pos = _scan_frames(
                data, 0, self.limits.max_payload, None if codec is None else codec.message_decoder
            )
        while pos < end:
            if self._read_state == _DIRECT:
                pos = self._write_direct(data, pos, end, events)
                continue
            if self._read_state == _PAYLOAD:
                pos = self._read_payload(data, pos, end, events)
                if self._read_state == _DISCARD:
                    return events
                continue
            # _HEADER: RFC 6455 §5.2.
            if end - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                hlen = 4
            elif length == 127:
                hlen = 10
            if not b1 & 0x80:
                # RFC 6455 §5.1: a server MUST close on an unmasked client frame.
                return self._fail(events, CloseCode.PROTOCOL_ERROR, "client frame not masked")
            if end - pos < hlen + 4:
                break
            if hlen == 4:
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif hlen == 10:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    return self._fail(events, CloseCode.PROTOCOL_ERROR, "frame length over 2^63")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            error = self._check_header(b0, opcode, length)
            if error is not None:
                return self._fail(events, error[0], error[1])
            mask = data[pos + hlen : pos + hlen + 4]
            pos += hlen + 4
            if opcode >= 8:
                # Control frame: ≤ 125 bytes, handled whole.
                if end - pos < length:
                    self._buf = data[pos - hlen - 4 :]
                    return events
                payload = apply_mask(data[pos : pos + length], mask)
                pos += length
                self._control_frame(opcode, payload, events, now)
                if self._read_state == _DISCARD:
                    return events
                continue
            if opcode != OP_CONTINUATION:
                self._msg_opcode = opcode
                self._msg_compressed = bool(b0 & 0x40)
                self._msg_size = 0
                self._msg_frames = 1
            if fin and opcode != OP_CONTINUATION and end - pos >= length:
                # Fast path: a whole unfragmented message is here.
                payload = apply_mask(data[pos : pos + length], mask)
                pos += length
                self._msg_opcode = 0
                if self._msg_compressed:
                    self._msg_compressed = False
                    inflated = self._decode(payload, True, events)
                    if inflated is None:
                        return events
                    payload = inflated
                if opcode == OP_TEXT:
                    try:
                        events.append(payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        return self._fail(
                            events, CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in text"
                        )
                else:
                    events.append(payload)
                continue
            if length >= DIRECT_MIN and fin and opcode == OP_BINARY and not self._msg_compressed:
                # A large binary message in one frame, not all here yet.
                initial = max(_DIRECT_INITIAL, 2 * (end - pos))
                self.direct_payload = PayloadBuffer(length, initial, mask)
                self._read_state = _DIRECT
                continue
            self._frame_fin = bool(fin)
            self._frame_left = length
            self._frame_mask = mask
            self._frame_masked_pos = 0
            self._read_state = _PAYLOAD
            if self._msg_parts is None:
                self._msg_parts = []
                if self._msg_opcode == OP_TEXT:
                    self._utf8 = _Utf8Decoder()
            if length == 0:
                # An empty frame still ends the frame (and maybe the message).
                self._read_payload(data, pos, pos, events)
                if self._read_state == _DISCARD:
                    return events
        if pos < end:
            self._buf = data[pos:]
        return events

    def _write_direct(self, data: bytes, pos: int, end: int, events: list[Event]) -> int:
        buf = self.direct_payload
        assert buf is not None
        take = min(buf.total - buf.filled, end - pos)
        buf.write(memoryview(data)[pos : pos + take] if take >= 4096 else data[pos : pos + take])
        if buf.filled == buf.total:
            self._direct_done(events)
        return pos + take

    def _direct_done(self, events: list[Event]) -> None:
        buf = self.direct_payload
        assert buf is not None
        self.direct_payload = None
        self._read_state = _HEADER
        self._msg_opcode = 0
        events.append(buf.take())

    def read_window(self) -> memoryview | None:
        """Where the rest of a large frame's payload may be received directly.

        While a large binary frame is being read (see ``DIRECT_MIN``), a
        writable view of the buffer its bytes belong in, else None.  A
        transport that receives into it (``recv_into``, an asyncio
        ``BufferedProtocol``) then calls :meth:`window_filled` instead of
        :meth:`receive_data`; the view never reaches past the frame.
        Release the view before asking for the next one.
        """
        if self._read_state != _DIRECT:
            return None
        buf = self.direct_payload
        assert buf is not None
        window: memoryview = buf.window()
        return window

    def window_filled(self, n: int) -> list[Event]:
        """``n`` bytes were received into :meth:`read_window`'s view."""
        events: list[Event] = []
        buf = self.direct_payload
        if buf is None or self._read_state != _DIRECT:
            raise RuntimeError("no read window is open")
        buf.filled_in(n)
        if buf.filled == buf.total:
            self._direct_done(events)
        return events

    def _check_header(self, b0: int, opcode: int, length: int) -> tuple[int, str] | None:
        """Return ``(close code, reason)`` if this frame header is not allowed."""
        if b0 & 0x30:
            return CloseCode.PROTOCOL_ERROR, "RSV2/RSV3 set without an extension"
        if opcode >= 8:
            if opcode > OP_PONG:
                return CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}"
            if not b0 & 0x80:
                return CloseCode.PROTOCOL_ERROR, "fragmented control frame"
            if length > MAX_CONTROL_PAYLOAD:
                return CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes"
            if b0 & 0x40:
                return CloseCode.PROTOCOL_ERROR, "RSV1 set on a control frame"
            return None
        if opcode > OP_BINARY:
            return CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}"
        limit = self.limits.max_payload
        if opcode == OP_CONTINUATION:
            if not self._msg_opcode:
                return CloseCode.PROTOCOL_ERROR, "continuation frame without a message"
            if b0 & 0x40:
                # RFC 7692 §6.1: RSV1 only on a message's first frame.
                return CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame"
            self._msg_frames += 1
            if limit > 0 and self._msg_frames > max(1024, limit >> 6):
                # Empty or tiny fragments would cost CPU without counting
                # toward max_payload: a message has at most one frame per
                # 64 bytes of it (RFC 6455 §10.4, limits on frames).
                return CloseCode.MESSAGE_TOO_BIG, f"message in over {max(1024, limit >> 6)} frames"
        else:
            if self._msg_opcode:
                return CloseCode.PROTOCOL_ERROR, "new message before the last one ended"
            if b0 & 0x40 and self.codec is None:
                return CloseCode.PROTOCOL_ERROR, "RSV1 set without a negotiated extension"
        if limit > 0 and not (b0 & 0x40 or (opcode == OP_CONTINUATION and self._msg_compressed)):
            # RFC 6455 §10.4: refuse before buffering anything of it.
            size = self._msg_size if opcode == OP_CONTINUATION else 0
            if size + length > limit:
                return CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes"
        return None

    def _read_payload(self, data: bytes, pos: int, end: int, events: list[Event]) -> int:
        """Consume what is here of the current data frame's payload."""
        take = min(self._frame_left, end - pos)
        chunk = b""
        if take:
            # A view, not a copy: the unmasking below makes the one copy.
            view = memoryview(data)[pos : pos + take] if take >= 4096 else data[pos : pos + take]
            mask = self._frame_mask
            offset = self._frame_masked_pos & 3
            if offset:
                mask = mask[offset:] + mask[:offset]
            chunk = apply_mask(view, mask)
            self._frame_masked_pos += take
            self._frame_left -= take
        end_of_message = self._frame_left == 0 and self._frame_fin
        if self._msg_compressed:
            inflated = self._decode(chunk, self._frame_left == 0 and self._frame_fin, events)
            if inflated is None:
                return end
            chunk = inflated
        self._msg_size += len(chunk)
        utf8 = self._utf8
        if utf8 is not None:
            try:
                utf8.decode(chunk, end_of_message)
            except UnicodeDecodeError:
                self._fail(events, CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in text")
                return end
        parts = self._msg_parts
        assert parts is not None
        if chunk:
            if len(chunk) >= 8192 or not parts:
                parts.append(chunk)
            else:
                last = parts[-1]
                if type(last) is bytearray:
                    last += chunk
                else:
                    parts.append(bytearray(chunk))
        if self._frame_left == 0:
            self._read_state = _HEADER
            if self._frame_fin:
                if len(parts) == 1 and type(parts[0]) is bytes:
                    payload = parts[0]
                else:
                    payload = b"".join(parts)
                self._msg_parts = None
                self._utf8 = None
                if self._msg_opcode == OP_TEXT:
                    events.append(payload.decode("utf-8"))
                else:
                    events.append(payload)
                self._msg_opcode = 0
                self._msg_compressed = False
        return pos + take

    def _decode(self, chunk: bytes, end_of_message: bool, events: list[Event]) -> bytes | None:
        """Run a compressed chunk through the codec, within what is left of
        max_payload; on failure fail the connection (1009 or 1007) and
        return None."""
        codec = self.codec
        assert codec is not None  # RSV1 without a codec was refused from the header
        limit = self.limits.max_payload
        room = limit - self._msg_size if limit > 0 else -1
        try:
            return codec.decode(chunk, end_of_message, room)
        except MessageTooBig:
            self._fail(events, CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes")
        except ValueError as exc:
            self._fail(events, CloseCode.INVALID_PAYLOAD, f"cannot decompress: {exc}")
        return None

    def _control_frame(self, opcode: int, payload: bytes, events: list[Event], now: float) -> None:
        if opcode == OP_PING:
            ping = Ping(payload)
            events.append(ping)
            self._on_ping(ping, now, events)
        elif opcode == OP_PONG:
            sent_at = self._ping_sent_at
            if payload == self._ping_payload and sent_at is not None:
                events.append(Pong(payload, now - sent_at))
                self._ping_payload = None
                self._ping_sent_at = None
                self._pong_deadline = None
                timers = self._timers
                if (
                    timers is not None
                    and timers._guard is None
                    and timers._close_deadline is None
                    and timers._deferred_pong_at is None
                ):
                    # Empty now: a connection the hub pings every
                    # ping_delay holds its _Timers only while a ping is out.
                    self._timers = None
                self._update_deadline()
            else:
                events.append(Pong(payload))
        else:
            try:
                code, reason = parse_close_payload(payload)
            except InvalidClosePayload as exc:
                self._fail(events, exc.code, exc.reason)
                return
            self.receive_close(code, reason, now)
            events.append(CloseReceived(code, reason))

    def receive_close(self, code: int, reason: str, now: float = 0.0) -> None:
        """The peer's Close arrived (here from a frame, or decoded by someone
        else: an ASGI server).  ``code`` is 1005 for a Close without one."""
        self._stop_reading()
        self.close_code = code
        self.close_reason = reason
        if self._timers is not None:  # (else no ping to forget)
            self._forget_pings()
        if self.state == _CLOSE_SENT:
            # It answers our Close: the handshake is complete.
            self.state = _CLOSED
            self._set_end(_CLOSE_END, now)
        elif self.state == _OPEN:
            # Our reply is made when the driver next asks for data to send,
            # so that what the application sends in answer to the messages
            # before this Close still goes out before it.
            self.state = _CLOSE_RECEIVED
            self._close_deadline = now + self.limits.close_timeout
            self._update_deadline()

    def _on_ping(self, ping: Ping, now: float, events: list[Event]) -> None:
        if self.state != ConnectionState.OPEN:
            # Closing: no pong is due (RFC 6455 §5.5.2 asks for one "unless
            # it already received a Close frame"; after ours none is useful).
            return
        guard = self._guard
        if guard is None:
            lim = self.limits
            guard = self._guard = PingFloodGuard(
                lim.ping_burst, lim.ping_rate, lim.ping_flood_limit
            )
        verdict = guard.on_ping(now)
        if verdict == PingFloodGuard.ANSWER:
            ping.pong = build_frame(OP_PONG, ping.payload)
        elif verdict == PingFloodGuard.DEFER:
            # Coalesce: only the latest ping of a burst gets its pong (RFC 6455 §5.5.3).
            self._deferred_pong = ping.payload
            if self._deferred_pong_at is None:
                self._deferred_pong_at = now + guard.seconds_until_token()
                self._update_deadline()
        else:
            self._fail(events, CloseCode.POLICY_VIOLATION, "ping flood")

    def _forget_pings(self) -> None:
        """Closing: no pong is awaited, and no coalesced ping is answered."""
        timers = self._timers  # (straight to the fields: no descriptor calls)
        if timers is not None:
            timers._pong_deadline = None
            timers._deferred_pong = timers._deferred_pong_at = None

    def _stop_reading(self) -> None:
        self._read_state = _DISCARD
        self._buf = b""
        self._msg_parts = None
        self._utf8 = None
        self.direct_payload = None

    def _fail(self, events: list[Event], code: int, reason: str) -> list[Event]:
        """Fail the connection (RFC 6455 §7.1.7): read nothing more; our Close
        with ``code`` goes out when the driver next asks for data (after the
        answers to the messages before the error), then our side stops
        writing and lingers until the peer hangs up or the close timeout
        passes."""
        self.failed = True
        self._failure = (code, reason)
        self._stop_reading()
        events.append(ProtocolError(code, reason))
        self.close_code = code
        self.close_reason = reason
        self._forget_pings()
        self.pending = True
        return events

    def receive_eof(self, now: float = 0.0) -> None:
        """The peer will send nothing more (TCP FIN, HTTP/2 END_STREAM).

        Before both Close frames passed, the connection is over without a
        closing handshake: reported as 1006.  Either way the transport is
        closed after what is queued (the peer may still read it).
        """
        self._stop_reading()
        if self._failure is None and (
            self.state == ConnectionState.OPEN or self.state == ConnectionState.CLOSE_SENT
        ):
            # (After the peer's Close our reply is still due: that ends well;
            # after a protocol error the report is that error.)
            self.close_code = int(CloseCode.ABNORMAL)
            self.close_reason = ""
            self.state = ConnectionState.CLOSED
            self._forget_pings()
        if self.end == EndMode.NONE or self.end == EndMode.HALF_CLOSE:
            self._set_end(EndMode.CLOSE, now)

    # ---------------------------------------------------------- the driver

    def data_to_send(self) -> list[bytes]:
        """The frames the connection decided to send on its own, in order.

        Also clears :attr:`pending`; the driver then reads :attr:`end` and
        :attr:`deadline`.
        """
        failure = self._failure
        if failure is not None:
            self._failure = None
            if self.state == _OPEN or self.state == _CLOSE_RECEIVED:
                self._emit(_close_frame(failure[0], failure[1]))
            self.state = _CLOSED
            if self.end == _KEEP:
                self._set_end(EndMode.HALF_CLOSE, self._now)
        elif self.state == _CLOSE_RECEIVED:
            # Answer the peer's Close (RFC 6455 §5.5.1): the handshake is
            # complete, and the server closes the TCP connection first.
            self._emit(_close_frame(_reply_code(self.close_code), ""))
            self.state = _CLOSED
            self.end = _CLOSE_END
        self.pending = False
        out = self._out
        if out is None:
            return []
        self._out = None
        return out

    def _emit(self, frame: bytes) -> None:
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)

    def on_deadline(self, now: float) -> None:
        """The time :attr:`deadline` named has come (or passed)."""
        if self._close_deadline is not None and now >= self._close_deadline:
            self._close_deadline = None
            if self.state != ConnectionState.CLOSED:
                # RFC 6455 §7.1.1 waited long enough for the peer's Close.
                self.close_code = int(CloseCode.ABNORMAL)
                self.close_reason = ""
                self.state = ConnectionState.CLOSED
            self._stop_reading()
            self.end = EndMode.ABORT
            self.pending = True
        if self._pong_deadline is not None and now >= self._pong_deadline:
            self._pong_deadline = None
            self._ping_payload = self._ping_sent_at = None
            if self.state == ConnectionState.OPEN:
                self._emit(self.send_close(CloseCode.INTERNAL_ERROR, "pong timeout", now))
                # Like a failure, the close is ours and says why (the
                # driver reports it as it starts); the peer's answer, or
                # its absence, still decides what connection_lost says.
                self.close_code = int(CloseCode.INTERNAL_ERROR)
                self.close_reason = "pong timeout"
                self.pending = True
        pong_at = self._deferred_pong_at
        if pong_at is not None and now >= pong_at:
            self._deferred_pong_at = None
            guard = self._guard
            payload = self._deferred_pong
            if payload is not None and guard is not None and self.state == ConnectionState.OPEN:
                if guard.take_deferred(now):
                    self._deferred_pong = None
                    self._emit(build_frame(OP_PONG, payload))
                    self.pending = True
                else:
                    self._deferred_pong_at = now + guard.seconds_until_token()
        self._update_deadline()

    def connection_lost(self) -> CloseResult:
        """The transport is gone: how the close is reported.

        Clean only when both Close frames passed (or we failed the
        connection and said why); otherwise 1006 (RFC 6455 §7.1.5).
        """
        self._stop_reading()
        self._timers = None
        self.deadline = None
        if self.state != _CLOSED or self.close_code == _ABNORMAL:
            self.state = _CLOSED
            return CloseResult(_ABNORMAL, self.close_reason, False)
        return CloseResult(self.close_code, self.close_reason, True)

    def _set_end(self, mode: EndMode, now: float) -> None:
        self.end = mode
        self.pending = True
        # Whatever is left to flush, the transport is gone by then.
        self._close_deadline = now + self.limits.close_timeout
        self._update_deadline()

    def _update_deadline(self) -> None:
        best: float | None = None
        timers = self._timers
        if timers is not None:
            for t in (timers._close_deadline, timers._pong_deadline, timers._deferred_pong_at):
                if t is not None and (best is None or t < best):
                    best = t
        if best != self.deadline:
            self.deadline = best
            self.pending = True

    @property
    def max_payload(self) -> int:
        """The message size limit in force (``limits.max_payload``)."""
        return self.limits.max_payload

    @property
    def awaiting_pong(self) -> bool:
        """A ping sent with a pong timeout has not been answered yet."""
        return self._pong_deadline is not None

    # ----------------------------------------------------------------- output

    def send_message(self, data: bytes, text: bool) -> bytes:
        """Frame one message (compressed if the codec wants it)."""
        state = self.state
        if state != _OPEN and state != _CLOSE_RECEIVED:
            raise ConnectionClosedError("the closing handshake has started")
        opcode = OP_TEXT if text else OP_BINARY
        codec = self.codec
        if codec is not None:
            encoded = codec.encode(data)
            if encoded is not None:
                return build_frame(opcode, encoded, rsv1=True)
        return build_frame(opcode, data)

    def message_header(self, length: int, text: bool) -> bytes:
        """Only the header of an uncompressed message, for writers that send a
        large payload without copying it behind the header."""
        if self.state != ConnectionState.OPEN and self.state != ConnectionState.CLOSE_RECEIVED:
            raise ConnectionClosedError("the closing handshake has started")
        return build_frame_header(OP_TEXT if text else OP_BINARY, length)

    def send_ping(self, payload: bytes = b"", now: float = 0.0, pong_timeout: float = 0.0) -> bytes:
        """A Ping frame; with ``pong_timeout > 0`` the connection is closed
        with 1011 unless a Pong with the same payload comes within it.

        A new ping replaces the one still waiting (and its deadline).
        """
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        if self.state == ConnectionState.CLOSE_SENT or self.state == ConnectionState.CLOSED:
            raise ConnectionClosedError("the closing handshake has started")
        # The pong is matched by payload (for its round-trip time) with or
        # without a timeout.
        self._ping_payload = payload
        self._ping_sent_at = now
        self._pong_deadline = now + pong_timeout if pong_timeout > 0 else None
        self._update_deadline()
        return build_frame(OP_PING, payload)

    def send_close(
        self, code: int | None = CloseCode.NORMAL, reason: str = "", now: float = 0.0
    ) -> bytes:
        """Start the closing handshake: our Close frame, or ``b""`` if we sent
        one already (RFC 6455 §5.5.1).  The peer has ``close_timeout`` to answer."""
        state = self.state
        if state == ConnectionState.CLOSE_SENT or state == ConnectionState.CLOSED:
            return b""
        self._forget_pings()
        if state == ConnectionState.CLOSE_RECEIVED:
            # The application closes before our automatic reply went out:
            # this is the reply.
            self.state = ConnectionState.CLOSED
            self.end = EndMode.CLOSE
            self.pending = True
        else:
            self.state = ConnectionState.CLOSE_SENT
            self._close_deadline = now + self.limits.close_timeout
        self._update_deadline()
        return _close_frame(code, reason)


def _reply_code(code: int) -> int | None:
    # RFC 6455 §5.5.1: the answer typically echoes the status code; 1005 is
    # never sent, so a close without a code is answered without one.
    return None if code == _NO_STATUS else code


_CLOSE_FRAMES: dict[int, bytes] = {}  # a cache: the few usual codes, framed once


def _close_frame(code: int | None, reason: str) -> bytes:
    if reason or code is None:
        return build_frame(OP_CLOSE, close_payload(code, reason))
    # A code without a reason (every reply to a peer's Close): a few codes
    # come back all the time, their frames are made once.
    frame = _CLOSE_FRAMES.get(code)
    if frame is None:
        frame = build_frame(OP_CLOSE, close_payload(code))
        if len(_CLOSE_FRAMES) < 64:
            _CLOSE_FRAMES[code] = frame
    return frame
