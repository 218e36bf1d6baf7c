"""The per-client link between the hub and whatever carries the WebSocket.

The hub (:mod:`wshub.hub`) never sees a socket or an HTTP version.  It talks
to a :class:`Link`: send a message, ping, close, pause, count bytes.  The
link talks back to a :class:`LinkListener` (the hub's record of the client)
with messages, pongs, errors and exactly one close.

:class:`FramedLink` implements :class:`Link` for carriers of raw RFC 6455
frames (an HTTP/1.1 connection after the 101, an HTTP/2 stream after the
200) on top of :class:`wshub.protocol.connection.Connection`; subclasses
supply only the byte pipe.  The ASGI adapter implements :class:`Link`
directly, since there the ASGI server does the framing.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import logging
import socket
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, cast

from ..errors import WebSocketProtocolError
from ..logging import refusal_log
from ..protocol.connection import (
    Connection,
    ConnectionClosedError,
    ConnectionLimits,
    ConnectionState,
    EndMode,
    Event,
    MessageCodec,
    Ping,
    Pong,
    ProtocolError,
)
from ..protocol.frames import ACCELERATED, CloseCode
from ..protocol.handshake import Headers, UpgradeInfo

__all__ = [
    "SHARED_BATCH_FROM",
    "Admission",
    "CloseInitiator",
    "ClosingReporter",
    "FramedLink",
    "Link",
    "LinkConfig",
    "LinkListener",
    "ReadyState",
    "UpgradeHandler",
    "UpgradeRequest",
    "queue_again",
    "queue_shared",
]

log = logging.getLogger("wshub")

# The C accelerator's send of one piece to many sockets (None without it).
_send_each: Callable[[list[int], bytes], list[tuple[int, int]]] | None = None
if ACCELERATED:
    _send_each = getattr(importlib.import_module("wshub._speedups"), "send_each", None)

ReadyState = str  # "opening" | "open" | "readOnly" | "writeOnly" | "closed"


class CloseInitiator(enum.IntEnum):
    """Who started a closing handshake (:meth:`LinkListener.on_closing`)."""

    PEER = 1  # the peer's Close, or the peer went away without one
    APPLICATION = 2  # the hub asked: Link.close() (ws.close, a shutdown)
    SERVER = 3  # a limit or a timeout: the core failed the connection (a
    # protocol error, a message too big, a ping flood), no pong in time,
    # the write buffer over write_limit, an internal error


class LinkListener(Protocol):
    """What a link reports to (the hub's record of one client)."""

    def on_message(self, data: str | bytes) -> bool:
        """A whole message.  Return False to hold further events until ``link.release()``."""
        ...

    def on_error(self, exc: Exception) -> None: ...

    def on_pong(self, rtt: float) -> None:
        """The pong to our last ping came, ``rtt`` seconds after the ping."""
        ...

    def on_closing(self, code: int, reason: str, initiator: CloseInitiator) -> None:
        """The closing handshake started: called exactly once, before
        :meth:`on_close`, however the connection ends.

        ``code`` and ``reason`` are those of the Close that started it (ours,
        the peer's, or 1006 when the peer went away without one);
        ``initiator`` says who started it.  Nothing can be sent from now on
        (the reply to a peer's Close has been queued already).
        """
        ...

    def on_close(self, code: int, reason: str, was_clean: bool) -> None:
        """Called exactly once, when the connection is gone, whatever ended it."""
        ...


class ClosingReporter:
    """What every link does when a closing handshake starts: tell its
    listener, once (:meth:`LinkListener.on_closing`).  A mixin; the link
    sets ``closing_reported = False`` (and ``listener``) in ``__init__``."""

    __slots__ = ("closing_reported",)

    closing_reported: bool
    listener: LinkListener | None

    def report_closing(self, code: int, reason: str, initiator: CloseInitiator) -> None:
        if self.closing_reported:
            return
        self.closing_reported = True
        listener = self.listener
        if listener is not None:
            listener.on_closing(code, reason, initiator)


class Link(Protocol):
    """What the hub may ask of one client's connection."""

    listener: LinkListener | None
    bytes_read: int
    bytes_written: int
    carrier: str  # what carries it, for metrics: "http1", "h2" or "asgi"

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for the peer and not yet sent (compared with write_high)."""
        ...

    @property
    def broadcast_key(self) -> Hashable | None:
        """Links with equal keys accept the same prepared frame; None: never share."""
        ...

    def prepare(self, payload: bytes, text: bool) -> bytes: ...

    def send_prepared(self, frame: bytes) -> bool: ...

    def queue_prepared(self, frame: bytes) -> None:
        """:meth:`send_prepared` without the high-water answer (for broadcast)."""
        ...

    def send_message(self, payload: bytes, text: bool) -> bool: ...

    @property
    def can_ping(self) -> bool:
        """False where the carrier cannot send a Ping (ASGI)."""
        ...

    @property
    def awaiting_pong(self) -> bool:
        """A ping sent with a pong timeout is still unanswered."""
        ...

    def ping(self, payload: bytes, pong_timeout: float = 0.0) -> bool:
        """Send a Ping; with ``pong_timeout > 0`` close with 1011 unless the
        matching Pong comes within it."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> bool: ...

    def abort(self) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    @property
    def is_paused(self) -> bool: ...

    @property
    def ready_state(self) -> ReadyState: ...

    @property
    def is_open(self) -> bool: ...

    async def drain(self) -> None: ...

    def set_no_delay(self, no_delay: bool) -> bool: ...

    def set_keep_alive(self, enable: bool, initial_delay: float) -> bool: ...


class UpgradeRequest:
    """A valid WebSocket upgrade, whatever HTTP version carried it, for the hub to judge."""

    __slots__ = (
        "headers",
        "http_version",
        "info",
        "ip_slot",
        "method",
        "peer",
        "scheme",
        "target",
        "tls",
    )

    def __init__(
        self,
        *,
        target: str,
        headers: Headers,
        info: UpgradeInfo,
        peer: tuple[str, int],
        scheme: str,
        method: str = "GET",
        http_version: str = "1.1",
        tls: object = None,
        ip_slot: str | None = None,
    ) -> None:
        self.target = target  # the request target as sent: "/path?query"
        self.headers = headers  # lower-case names (":authority" folded into "host")
        self.info = info
        self.peer = peer  # (ip, port) of the TCP peer
        self.scheme = scheme  # "ws" or "wss"
        self.method = method  # "GET" (HTTP/1.1), "CONNECT" (HTTP/2)
        self.http_version = http_version  # "1.1", "2", or what the ASGI server says
        # Where the TLS details come from (read only if asked): the
        # transport's ssl.SSLObject, an ASGI scope's "tls" extension, or None.
        self.tls = tls
        # The key the connection is counted under since its accept
        # (UpgradeHandler.connection_opened), handed over with the request:
        # admit() takes it (and sets this to None) instead of giving it back
        # and counting the client again.  None: nothing counted.
        self.ip_slot = ip_slot


class Admission(Protocol):
    """The hub's yes to an upgrade: headers for the answer, then open or cancel."""

    client_id: str
    response_headers: list[tuple[str, str]]
    subprotocol: str | None  # also in response_headers (ASGI sends it apart)
    codec: MessageCodec | None
    config: LinkConfig

    def open(self, link: Link) -> None:
        """The answer was sent: the client is connected through ``link``."""
        ...

    def cancel(self) -> None:
        """The answer could not be sent: give back what ``admit`` reserved."""
        ...


class UpgradeHandler(Protocol):
    """What a transport needs from the hub attached to its server.

    Per connection: :meth:`connection_opened` / :meth:`connection_closed`
    and, for an upgrade, :meth:`admit`.  Over the server's life:
    :meth:`start`, :meth:`server_started`, then at shutdown :meth:`stop`
    and :meth:`shutdown` (the ASGI adapter calls :meth:`start` and
    :meth:`stop` at lifespan startup and shutdown, and closes its own
    connections).
    """

    def admit(self, request: UpgradeRequest) -> Admission | asyncio.Future[Admission]:
        """Judge an upgrade; raise ``HandshakeError`` (403, 429 ...) to refuse it.

        A future instead (an ``async`` handshake hook runs): its result is
        the admission, its exception the refusal; cancelling it gives back
        what was reserved.
        """
        ...

    def handshake_refused(self, status: int) -> None:
        """An upgrade (or a request that may have been one: a head too large
        or malformed, a connection over the per-IP limit) was refused with
        ``status``.  For metrics; the transport logs it."""
        ...

    def connection_opened(self, peer_ip: str, *, force: bool = False) -> str | None:
        """Count a new TCP connection from ``peer_ip`` under the per-IP limit.

        Returns the key it is counted under, for :meth:`connection_closed`
        (None: not counted, e.g. a trusted proxy's); raises
        ``HandshakeError(429)`` if the address is over the limit, unless
        ``force`` (a connection counted all along, through its WebSockets).
        """
        ...

    def connection_closed(self, key: str) -> None:
        """Give back what :meth:`connection_opened` counted under ``key``."""
        ...

    async def start(self) -> None:
        """Before the server accepts connections: join the hub's cluster, if any."""
        ...

    def server_started(self) -> None:
        """The server listens."""
        ...

    async def stop(self) -> None:
        """Shutdown begins: leave the cluster while the clients are still connected."""
        ...

    def ready(self) -> bool:
        """Whether the hub can take clients: its cluster backplane, if any, is joined."""
        ...

    async def shutdown(self, code: int, reason: str, window: float = 0.0) -> None:
        """Close every client with ``code`` and ``reason``, spread evenly over
        ``window`` seconds; return once all are gone."""
        ...


class LinkConfig(ConnectionLimits):
    """Per-connection limits the hub hands to each link (one object, shared):
    the core's (:class:`ConnectionLimits`) and the driver's buffers."""

    __slots__ = ("write_high", "write_limit", "write_low")

    def __init__(
        self,
        *,
        max_payload: int = 131072 * 20,
        close_timeout: float = 10.0,
        write_high: int = 64 * 1024,
        write_low: int = 16 * 1024,
        write_limit: int = 1024 * 1024,
        ping_burst: int = 16,
        ping_rate: float = 8.0,
        ping_flood_limit: int = 128,
    ) -> None:
        super().__init__(
            max_payload=max_payload,
            close_timeout=close_timeout,
            ping_burst=ping_burst,
            ping_rate=ping_rate,
            ping_flood_limit=ping_flood_limit,
        )
        self.write_high = write_high
        self.write_low = write_low
        self.write_limit = write_limit


_PLAIN_KEY = "plain"
_TCP_CONGESTION: int | None = getattr(socket, "TCP_CONGESTION", None)


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped 127.x addresses."""
    return ip.startswith(("127.", "::ffff:127.")) or ip == "::1"


# Enum members read on every pass of _pump: a module global is a dict
# lookup, an enum class attribute (Python 3.11) about 80 ns.
_OPEN = ConnectionState.OPEN
_CLOSE_RECEIVED = ConnectionState.CLOSE_RECEIVED
_NO_END = EndMode.NONE
_ABORT = EndMode.ABORT
# And those read once per connection, as its closing handshake ends.
_CLOSE_SENT = ConnectionState.CLOSE_SENT
_CLOSE_END = EndMode.CLOSE
_BY_PEER = CloseInitiator.PEER
_BY_SERVER = CloseInitiator.SERVER
_LARGE = 64 * 1024  # payloads from this size on are written without being copied
SHARED_BATCH_FROM = 32  # receivers of a broadcast from which they share one batch


def _tcp_socket(transport: asyncio.BaseTransport | None) -> socket.socket | None:
    """The TCP (IPv4/IPv6) socket under ``transport``, or None (no socket, Unix)."""
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock  # type: ignore[no-any-return]


class _SharedBatch:
    """Frames that consecutive broadcasts of one loop iteration queued for the
    same links (its members): queued once, not once per member, and written
    by every member as the same bytes at the flush.

    A member is a link whose ``_shared`` is this batch; it joins with no
    batch of its own and leaves (the frames becoming its own batch) as soon
    as anything else is queued for it, when it flushes, and when its
    connection leaves the OPEN state or is lost.  So the frames here are,
    for every member, exactly what it has queued, and every member is open.

    The batch, not each member, is with the write flusher; a member that
    leaves goes to the flusher with its own batch.
    """

    __slots__ = ("_joined", "frames", "limit", "links", "members", "size", "source")

    def __init__(self, limit: int, source: Sequence[Link]) -> None:
        self.frames: list[bytes] = []
        self.size = 0
        self.members = 0
        # Every link that joined, in order; those that left since are
        # skipped at the flush (their _shared is no longer this batch).
        self.links: list[FramedLink] = []
        # The receivers the batch was made for, if a tuple: a later
        # broadcast to the very same tuple, with as many members as links,
        # goes to exactly the members (see queue_again; a tuple cannot
        # change meanwhile, a list could).
        self.source = source if type(source) is tuple else None
        # The smallest write_high of the members: past it a message is
        # queued link by link again (which then flushes early, as always).
        self.limit = limit
        self._joined: bytes | None = None

    def add(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.size += len(frame)
        self._joined = None

    def joined(self) -> bytes:
        """The frames as one piece, joined once for all the members."""
        data = self._joined
        if data is None:
            frames = self.frames
            data = self._joined = frames[0] if len(frames) == 1 else b"".join(frames)
        return data

    def flush_batch(self) -> None:
        """(What the write flusher calls, as on a link of its own.)"""
        if self.links:
            self.write_to_members()

    def write_to_members(self) -> None:
        """Write the frames to every member still in the batch, which then
        has no members.

        The members whose socket may be written directly (``direct_fd``)
        get the bytes from one C call, back to back; what a socket did not
        take, and the other members, go through their own link.
        """
        data = self.joined()
        size = self.size
        fds: list[int] = []
        direct: list[FramedLink] = []
        links = self.links
        self.links = []
        self.members = 0
        for link in links:
            if link._shared is not self:
                continue  # left the batch, with the frames in its own
            link._shared = None
            link.bytes_written += size
            # (A member is open, never closed nor shut: see the class
            # docstring.  direct_fd is -1 without the C sends.)
            fd = link.direct_fd()
            if fd >= 0:
                fds.append(fd)
                direct.append(link)
                continue
            try:
                link._write_batch([data])
            except Exception:  # one broken connection must not starve the others
                log.exception("error while writing to a client")
        if fds and _send_each is not None:
            for i, sent in _send_each(fds, data):
                try:
                    direct[i].write_rest(data, sent)
                except Exception:
                    log.exception("error while writing to a client")


class _Flushable(Protocol):
    def flush_batch(self) -> None: ...


class _WriteFlusher:
    """Flushes every link with queued frames, and every shared batch, once,
    at the end of a loop iteration."""

    __slots__ = ("_links", "_loop_ref", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: _flushers is keyed weakly by the loop, and a strong reference
        # from its own value would keep every loop ever used alive.
        self._loop_ref = weakref.ref(loop)
        self._links: list[_Flushable] = []
        self._scheduled = False

    def add(self, link: _Flushable) -> None:
        self._links.append(link)
        if not self._scheduled:
            loop = self._loop_ref()
            if loop is None:  # pragma: no cover - a link outliving its loop
                self._links.clear()
                return
            self._scheduled = True
            loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        links = self._links
        self._links = []
        for link in links:
            try:
                link.flush_batch()
            except Exception:  # one broken connection must not starve the others
                log.exception("error while writing to a client")


# A cache (module state by design): the one write flusher of each event
# loop, and the last one asked for (nearly every link asks for the same).
_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriteFlusher] = (
    weakref.WeakKeyDictionary()
)


_last_flusher: _WriteFlusher | None = None


def _flusher_for(loop: asyncio.AbstractEventLoop) -> _WriteFlusher:
    # Every link asks; nearly always for the same loop as the last one, so
    # that answer is kept (a WeakKeyDictionary lookup builds a weakref each time).
    global _last_flusher
    last = _last_flusher
    if last is not None and last._loop_ref() is loop:
        return last
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _WriteFlusher(loop)
    _last_flusher = flusher
    return flusher


class FramedLink(ClosingReporter):
    """A :class:`Link` that speaks RFC 6455 frames over a byte pipe: the driver
    of one :class:`~wshub.protocol.connection.Connection`.

    The connection decides (replies, timeouts, when and how the transport
    ends); this class moves bytes, keeps the one timer the connection's
    deadline asks for, batches writes per loop iteration and applies flow
    control.  Subclasses implement the pipe: ``_write``, ``_write_many``,
    ``_end`` (close the pipe after flushing), ``_half_close``, ``_kill``
    (drop it now), ``_pause_reading``, ``_resume_reading``, ``_buffered``
    (bytes queued but not yet sent) and ``_socket_transport``.  They call
    :meth:`data_received`, :meth:`eof_received` and :meth:`connection_lost`.
    """

    # True where the pipe calls pause_writing() whenever more than
    # config.write_high bytes wait in it: then, while not paused, the buffer
    # cannot be over write_limit (>= write_high) and need not be asked.
    _PAUSE_SHOWS_BUFFER = False

    __slots__ = (
        "_batch",
        "_batched",
        "_bulk_cc",
        "_closed",
        "_drain_waiters",
        "_end_after_flush",
        "_ended",
        "_flusher",
        "_held",
        "_loop",
        "_pending",
        "_shared",
        "_shut",
        "_timer",
        "_timer_at",
        "_user_paused",
        "_write_paused",
        "broadcast_key",
        "bytes_read",
        "bytes_written",
        "config",
        "conn",
        "listener",
    )

    can_ping = True
    carrier = "framed"  # each subclass names its own

    def __init__(
        self,
        conn: Connection,
        config: LinkConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        bulk_congestion: str | None = None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.listener: LinkListener | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        # Passed in where known: asyncio.get_running_loop() costs a getpid()
        # system call on Python 3.11.
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._batch: list[bytes] | None = None
        self._batched = 0
        # Broadcast frames queued for this link and others together (they
        # follow _batch); see queue_shared().
        self._shared: _SharedBatch | None = None
        self._shut = False
        # A congestion control to switch to before the first large message
        # (HttpServer's opt-in loopback_congestion, for a peer on this host).
        self._bulk_cc = bulk_congestion
        self._flusher = _flusher_for(self._loop)
        # Set when the pipe is to be closed once the queued frames are out.
        self._end_after_flush: Callable[[], None] | None = None
        # Fixed once the extension is negotiated: a plain attribute, read
        # once per receiver of every broadcast.
        self.broadcast_key: Hashable | None = (
            _PLAIN_KEY if conn.codec is None else self._broadcast_key()
        )
        self._pending: list[Event] | None = None
        self._held = False
        self._user_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        # The one timer, at the connection's deadline.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ended = _NO_END  # what was done with the pipe so far
        self._closed = False
        self.closing_reported = False  # listener.on_closing was called

    # ------------------------------------------------------------ pipe (abstract)

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _write_many(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self._write(c)

    def _write_last(self, data: bytes) -> None:
        """The last bytes before the pipe ends (our Close frame, as a
        rule): a pipe over TCP may let them wait for the FIN, so that both
        go out in one segment."""
        self._write(data)

    def _end(self) -> None:
        """Flush, then close the pipe (our side of the connection ends)."""
        raise NotImplementedError

    def _half_close(self) -> None:
        """Flush and stop sending, but keep reading (a lingering close)."""
        self._end()

    def _kill(self) -> None:
        raise NotImplementedError

    def _pause_reading(self) -> None:
        raise NotImplementedError

    def _resume_reading(self) -> None:
        raise NotImplementedError

    def _buffered(self) -> int:
        raise NotImplementedError

    def _socket_transport(self) -> asyncio.BaseTransport | None:
        """The asyncio transport whose TCP socket carries this link, if any."""
        return None

    def direct_fd(self) -> int:
        """The descriptor of a socket that may be written right now without
        the pipe (nothing is buffered in it, and it is open), or -1."""
        return -1

    def write_rest(self, data: bytes, sent: int) -> None:
        """After ``sent`` bytes of ``data`` went straight to ``direct_fd``
        (0: none, -1: an error, which the pipe then meets itself): the rest,
        through the pipe."""
        raise NotImplementedError

    def _closes_by_itself(self) -> bool:
        """The pipe is closing with nothing left to send: it will be gone
        without a deadline's help (False where that cannot be known)."""
        return False

    def _tune_for_bulk(self) -> None:
        """Before the first large message to a peer on this host: switch the
        socket to ``_bulk_cc`` (HttpServer's ``loopback_congestion``).

        A pacing congestion control (BBR) spreads a large write on loopback
        into many small timed bursts: timer interrupts on our CPU and a
        wakeup of the peer for each, with no network to protect (the data
        never leaves the host).  Done once per connection; a refusal
        (unknown or not allowed name, no TCP socket) leaves it as it was.
        """
        cc = self._bulk_cc
        self._bulk_cc = None
        sock = _tcp_socket(self._socket_transport())
        if cc is None or sock is None or _TCP_CONGESTION is None:
            return
        try:
            current = sock.getsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, 16)
            if current.split(b"\0", 1)[0] != cc.encode():
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, cc.encode())
        except OSError as exc:
            log.debug("could not set congestion control %r: %s", cc, exc)

    def set_no_delay(self, no_delay: bool) -> bool:
        sock = _tcp_socket(self._socket_transport())
        if sock is None:
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if no_delay else 0)
        return True

    def set_keep_alive(self, enable: bool, initial_delay: float) -> bool:
        sock = _tcp_socket(self._socket_transport())
        if sock is None:
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if enable else 0)
        if enable and initial_delay > 0 and hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(initial_delay)))
        return True

    # ------------------------------------------------------------------ output

    def queue_frame(self, data: bytes) -> bool:
        """Queue frame bytes for the end of this loop iteration; False if
        this link writes nothing more.

        Frames are written at the end of the loop iteration, all of a
        connection's frames in one call: a broadcast of eight messages costs
        each receiver one write, not eight.  (Also how the transport sends
        the 101 before the first frame.)
        """
        if self._closed or self._shut:
            return False
        n = len(data)
        if n:
            self.bytes_written += n
            batch = self._batch
            if batch is None:
                # (A member of a shared batch has no batch of its own.)
                if self._shared is not None:
                    self._leave_shared()  # the broadcasts queued before this go first
                    batch = self._batch
                    assert batch is not None
                else:
                    self._batch = batch = []
                    self._flusher.add(self)
            batch.append(data)
            self._batched += n
            if self._batched > self.config.write_high:
                self.flush_batch()
        return True

    def _send(self, data: bytes) -> bool:
        """Queue frame bytes; return False above the high-water mark."""
        if not self.queue_frame(data):
            return False
        if not data:
            return True
        # Node's socket.write contract: False only if bytes are left queued in
        # our memory above the high-water mark, not for a big message the
        # kernel took at once (so drain() after False really has to wait).
        return self._buffered() + self._batched <= self.config.write_high

    def _overflow(self, buffered: int) -> None:
        # The peer does not read and the buffer passed its hard cap: close
        # with 1008 instead of letting the server's memory grow (the close
        # frame is tiny; if even that is not read, the close deadline aborts).
        if self.conn.state != _OPEN:
            return  # already closing: one log line, one Close frame
        refusal_log.warning(  # a peer that never reads: rate-limited like refusals
            "closing a client whose write buffer reached %d bytes (write_limit %d)",
            buffered,
            self.config.write_limit,
        )
        self._start_close(
            CloseCode.POLICY_VIOLATION, "write buffer limit exceeded", CloseInitiator.SERVER
        )

    def _leave_shared(self) -> None:
        """Take the shared batch's frames as this link's own batch (a member
        has none: it joined without one, and leaves before one is made)."""
        shared = self._shared
        assert shared is not None and self._batch is None
        self._shared = None
        shared.members -= 1
        self._batch = shared.frames.copy()
        self._batched += shared.size
        self.bytes_written += shared.size
        self._flusher.add(self)

    def flush_batch(self) -> None:
        """Write what was queued since the last flush, in one call."""
        batch = self._batch
        if batch is None:
            shared = self._shared
            if shared is not None:
                # A member: every member gets the same bytes, now.
                shared.write_to_members()
            return
        self._batch = None
        self._batched = 0
        end = self._end_after_flush
        try:
            self._write_batch(batch, end is not None)
        finally:
            if end is not None:
                self._end_after_flush = None
                end()
                at = self._timer_at
                if (
                    at is not None
                    and self._timer is None
                    and not self._closed
                    and not self._closes_by_itself()
                ):
                    self._timer = self._loop.call_at(at, self._deadline_passed)

    def _write_batch(self, batch: list[bytes], last: bool = False) -> None:
        # last: the pipe ends right after these bytes.
        if self._closed or self._shut or not batch:
            return
        if self.conn.state == _OPEN and (self._write_paused or not self._PAUSE_SHOWS_BUFFER):
            buffered = self._buffered()
            if buffered > self.config.write_limit:
                # Queue nothing more for a peer that does not read; once
                # closing, only our Close frame comes here: let it through.
                self._overflow(buffered)
                return
        if len(batch) == 1:
            if last:
                self._write_last(batch[0])
            else:
                self._write(batch[0])
        else:
            self._write_many(batch)

    def _broadcast_key(self) -> Hashable | None:
        codec = self.conn.codec
        if codec is None:
            return _PLAIN_KEY
        return codec.shared_frame_key

    def prepare(self, payload: bytes, text: bool) -> bytes:
        return self.conn.send_message(payload, text)

    def send_prepared(self, frame: bytes) -> bool:
        if self._closed or self.conn.state != _OPEN:
            raise ConnectionClosedError("the closing handshake has started")
        return self._send(frame)

    def queue_prepared(self, frame: bytes) -> None:
        # send_prepared without the high-water answer that a broadcast does
        # not use (it asks the transport for its buffer size).
        if self._closed or self.conn.state != _OPEN:
            raise ConnectionClosedError("the closing handshake has started")
        self.queue_frame(frame)

    def send_message(self, payload: bytes, text: bool) -> bool:
        conn = self.conn
        if len(payload) >= _LARGE and conn.codec is None:
            if self._bulk_cc is not None:
                self._tune_for_bulk()
            # Header and payload go out as two pieces: no copy of a large
            # payload just to put a few header bytes in front of it.
            self._send(conn.message_header(len(payload), text))
            return self._send(payload)
        return self._send(conn.send_message(payload, text))

    @property
    def awaiting_pong(self) -> bool:
        return self.conn.awaiting_pong

    def ping(self, payload: bytes, pong_timeout: float = 0.0) -> bool:
        ok = self._send(self.conn.send_ping(payload, self._loop.time(), pong_timeout))
        self._pump()
        return ok

    def close(self, code: int = 1000, reason: str = "") -> bool:
        state = self.conn.state
        if self._closed or state == ConnectionState.CLOSE_SENT or state == ConnectionState.CLOSED:
            return False
        self._start_close(code, reason, CloseInitiator.APPLICATION)
        if self._user_paused:
            # The peer's Close can only arrive if we read: closing a paused
            # client would otherwise always end in the close timeout (1006).
            self.resume()
        return True

    def abort(self) -> None:
        if not self._closed:
            self._kill()

    def _start_close(self, code: int, reason: str, initiator: CloseInitiator) -> None:
        self.queue_frame(self.conn.send_close(code, reason, self._loop.time()))
        self.report_closing(code, reason, initiator)
        self._pump()

    def _closing_by_core(self) -> None:
        """The core left OPEN on its own (the peer's Close, the peer gone, a
        failure, a pong timeout): tell the listener who started it."""
        conn = self.conn
        # SERVER: we failed the connection, or closed it for a missing pong.
        initiator = _BY_SERVER if conn.failed or conn.state == _CLOSE_SENT else _BY_PEER
        self.report_closing(conn.close_code, conn.close_reason, initiator)

    # ------------------------------------------------- what the core decided

    def _pump(self) -> None:
        """Do what the connection asks: its frames, the end of the pipe, its timer."""
        conn = self.conn
        if conn.end == _ABORT:
            if self._ended != _ABORT:
                self._ended = _ABORT
                log.info("close timeout: dropping the connection")
                self._cancel_timer()
                if not self.closing_reported:
                    self._closing_by_core()
                self._kill()
            return
        if self._pending is None:
            # (While events are held back, so is what the core sends in
            # answer to them: a Close reply after the messages before it.)
            frames = conn.data_to_send()
            for frame in frames:
                self.queue_frame(frame)
            end = conn.end
            if end != self._ended and end != _NO_END:
                self._ended = end
                if end == _CLOSE_END:
                    self._end_when_flushed(self._end)
                else:
                    # A failed connection: unread input may still arrive;
                    # closing now could turn into a reset that destroys our
                    # Close frame in flight, so stop writing and linger.
                    self._end_when_flushed(self._shut_and_linger)
        state = conn.state
        if state != _OPEN:
            if self._shared is not None:
                # Only open links are members (queue_again counts on it);
                # what the batch holds for this one was queued while it was
                # open (here with the Close reply still held back: anything
                # queued would have made it leave already).
                self._leave_shared()
            if not self.closing_reported and state != _CLOSE_RECEIVED:
                # (The peer's Close is told once the messages before it are
                # delivered and our reply is queued: their answers go out first.)
                self._closing_by_core()
        deadline = conn.deadline
        if deadline != self._timer_at:
            self._cancel_timer()
            if deadline is not None and not self._closed:
                self._timer_at = deadline
                if self._end_after_flush is None:
                    self._timer = self._loop.call_at(deadline, self._deadline_passed)
                # else: armed by flush_batch once the pipe has ended, unless
                # it then closes by itself (the usual end of a closing
                # handshake: no timer made and cancelled per connection).

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    def _deadline_passed(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._closed:
            conn = self.conn
            was_open = conn.state == _OPEN
            conn.on_deadline(self._loop.time())
            if was_open and conn.state != _OPEN:
                log.info("no pong within the timeout: closing the client with 1011")
            self._pump()

    def _end_when_flushed(self, end: Callable[[], None]) -> None:
        # Frames still queued (our Close among them) go out first, at the end
        # of this loop iteration together with other connections' writes;
        # then the pipe closes.
        if self._shared is not None:
            self._leave_shared()
        if self._batch:
            self._end_after_flush = end
        else:
            end()

    def _shut_and_linger(self) -> None:
        self._half_close()
        self._shut = True

    # ------------------------------------------------------------------- input

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        conn = self.conn
        try:
            events = conn.receive_data(data, self._loop.time())
        except Exception as exc:  # a bug, not the peer's fault: never crash the server
            self._internal_error(exc)
            return
        if events:
            self._deliver(events)
        if conn.pending:
            self._pump()
        if conn.direct_payload is not None:
            self._large_frame_pending()

    def _large_frame_pending(self) -> None:
        """The core reads a large binary frame into ``conn.direct_payload``
        and has not all of it yet: a transport that can receive straight
        into that buffer may take over the reads (see Http1Link)."""

    def window_filled(self, n: int) -> None:
        """``n`` bytes were received into ``conn.read_window()``."""
        self.bytes_read += n
        try:
            events = self.conn.window_filled(n)
        except Exception as exc:
            self._internal_error(exc)
            return
        if events:
            self._deliver(events)

    def _internal_error(self, exc: Exception) -> None:
        log.exception("internal error while reading frames", exc_info=exc)
        self._report_error(exc)
        self._start_close(CloseCode.INTERNAL_ERROR, "internal error", CloseInitiator.SERVER)

    def _deliver(self, events: list[Event]) -> None:
        if self._pending is not None:
            self._pending.extend(events)
            return
        # What the callbacks send is queued (_send) and written at the end of
        # this loop iteration, all connections' writes back to back.
        self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        listener = self.listener
        n = len(events)
        i = 0
        while i < n:
            ev = events[i]
            i += 1
            if type(ev) is str or type(ev) is bytes:
                if listener is None or self._closed:
                    continue
                if not listener.on_message(ev):
                    self._hold(events[i:])
                    return
                if self._user_paused and i < n:
                    # The callback paused this client: keep the rest for
                    # resume() (not _hold(), which waits for release()).
                    self._pending = events[i:]
                    return
            elif type(ev) is Ping:
                # The core's answer, in its place among the answers to
                # the messages around it.
                if ev.pong:
                    self.queue_frame(ev.pong)
            elif type(ev) is Pong:
                if ev.rtt is not None and listener is not None:
                    listener.on_pong(ev.rtt)
            elif type(ev) is ProtocolError:
                # The core already failed the connection (our Close is on
                # its way); tell the application why.  A peer can cause this
                # on every connection it opens: rate-limited like refusals.
                if ev.code == CloseCode.POLICY_VIOLATION:
                    refusal_log.warning("closing a client with %d: %s", ev.code, ev.reason)
                else:
                    refusal_log.info("protocol error from client: %d %s", ev.code, ev.reason)
                self._report_error(WebSocketProtocolError(ev.code, ev.reason))
            # Pong and CloseReceived: nothing to do here (the reply to a
            # Close is the core's, taken by _pump after these events).

    def _hold(self, rest: list[Event]) -> None:
        self._pending = rest
        self._held = True
        self._pause_reading()

    def hold(self) -> None:
        """Deliver nothing more (and read nothing) until :meth:`release`."""
        if not self._held:
            if self._pending is None:
                self._pending = []
            self._held = True
            self._pause_reading()

    def release(self) -> None:
        """The listener finished the message it was busy with: go on."""
        self._held = False
        self._continue()

    def _continue(self) -> None:
        if self._held or self._user_paused:
            return
        pending = self._pending
        if pending is not None:
            self._pending = None
            if pending:
                self._dispatch(pending)
            if self._pending is None and not self._closed:
                self._pump()
            if self._held or self._user_paused:
                return
        if not self._closed:
            self._resume_reading()

    def _report_error(self, exc: Exception) -> None:
        if self.listener is not None:
            self.listener.on_error(exc)

    def eof_received(self) -> bool | None:
        """The peer will send no more (TCP FIN / END_STREAM)."""
        conn = self.conn
        if conn.state != ConnectionState.CLOSED and conn.state != ConnectionState.CLOSE_RECEIVED:
            log.debug("peer closed without a closing handshake")
        conn.receive_eof(self._loop.time())
        self._pump()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._shared is not None:
            self._leave_shared()  # (its frames are dropped: nothing is written now)
        self._cancel_timer()
        self._wake_drain_waiters()
        conn = self.conn
        if not self.closing_reported:
            # Gone before any Close: the peer (or its network) went away.
            failed = conn.failed
            self.report_closing(
                conn.close_code if failed else int(CloseCode.ABNORMAL),
                conn.close_reason if failed else "",
                CloseInitiator.SERVER if failed else CloseInitiator.PEER,
            )
        result = conn.connection_lost()
        listener = self.listener
        if listener is not None:
            try:
                if exc is not None and isinstance(exc, Exception) and not result.was_clean:
                    listener.on_error(exc)
                listener.on_close(result.code, result.reason, result.was_clean)
            finally:
                # The listener (the hub's client record) points back at this
                # link: drop our side of the cycle so that both, and the
                # transport and buffers hanging from them, are freed at once
                # by reference counting instead of by a later GC pass.
                self.listener = None

    # -------------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = None
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def drain(self) -> None:
        if self._closed or (not self._write_paused and self._buffered() <= self.config.write_low):
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(fut)
        await fut

    def pause(self) -> None:
        self._user_paused = True
        self._pause_reading()

    def resume(self) -> None:
        self._user_paused = False
        self._continue()

    @property
    def is_paused(self) -> bool:
        return self._user_paused

    @property
    def buffered_amount(self) -> int:
        if self._closed:
            return 0
        shared = self._shared
        return self._buffered() + self._batched + (0 if shared is None else shared.size)

    @property
    def is_open(self) -> bool:
        return not self._closed and self.conn.state == _OPEN

    @property
    def ready_state(self) -> ReadyState:
        if self._closed:
            return "closed"
        state = self.conn.state
        if state == _OPEN:
            return "open"
        if state == ConnectionState.CLOSE_SENT:
            return "readOnly"
        if state == ConnectionState.CLOSE_RECEIVED:
            return "writeOnly"
        return "closed"


def queue_again(links: Sequence[Link], payload: bytes, text: bool) -> int | None:
    """If ``links`` are exactly the members of one shared batch, all open,
    add the message to it and return how many they are; else None (and
    nothing queued): then :func:`queue_shared`, per ``broadcast_key``.

    The usual case of a burst of broadcasts in one loop iteration: per
    receiver only the check that it is still a member and still open; for
    the tuple the batch was made from, not even that (a registry's tuple
    of all its links, rebuilt when a client comes or goes).
    """
    if len(links) < SHARED_BATCH_FROM:
        return None
    first = links[0]
    if not isinstance(first, FramedLink):
        return None
    shared = first._shared
    if shared is None or shared.members != len(links):
        return None
    if shared.source is not links:
        for link in cast("Sequence[FramedLink]", links):
            if link._shared is not shared or link._closed or link.conn.state != _OPEN:
                return None
    # else: the tuple the batch was made from, with as many members as
    # links: every one joined (once) and none left, so every one is open.
    # Exactly the members (none twice: len(links) == members), all open.
    frame = first.prepare(payload, text)
    if shared.size + len(frame) <= shared.limit:
        shared.add(frame)
        return len(links)
    # Past write_high: link by link, each flushing early as always.
    for member in links:
        member.queue_prepared(frame)
    return len(links)


def queue_shared(links: Sequence[Link], payload: bytes, text: bool) -> int:
    """Queue one message for ``links``; return how many were open.

    The frame is built once per ``broadcast_key`` (None: a compression
    context of the link's own, the message is sent as such).  From
    ``SHARED_BATCH_FROM`` links on, the open links of this process's loop with
    nothing queued yet in this loop iteration become the members of a new shared batch per key
    (:class:`_SharedBatch`); the next broadcasts to the same links go to
    :func:`queue_again`.  The others get the frame in their own batch, after
    what they had in a shared one (:meth:`FramedLink.queue_frame`): every
    receiver gets its frames in the order they were queued, and broadcasts
    to alternating sets of clients do not move frames from batch to batch.
    """
    if not links:
        return 0
    first = links[0]
    # A shared batch pays for its bookkeeping when the next broadcasts go
    # to the same many receivers; for a few, their own batches are cheaper.
    flusher = (
        first._flusher
        if len(links) >= SHARED_BATCH_FROM and isinstance(first, FramedLink)
        else None
    )
    # The frames and batches of the keys met before the last one (rare).
    frames: dict[Hashable, bytes] | None = None
    batches: dict[Hashable, _SharedBatch | None] | None = None
    # Nearly every link shares one key: the last key, frame and batch are
    # kept at hand.
    last_key: Hashable | None = None
    frame = b""
    shared: _SharedBatch | None = None
    count = 0
    for link in links:
        key = link.broadcast_key
        if key is None:
            try:
                link.send_message(payload, text)
            except ConnectionClosedError:
                continue
            count += 1
            continue
        if key is not last_key:
            if not link.is_open:
                continue
            if last_key is not None:
                if frames is None or batches is None:
                    frames, batches = {}, {}
                frames[last_key] = frame
                batches[last_key] = shared
            last_key = key
            if frames is not None and batches is not None and key in frames:
                frame = frames[key]
                shared = batches[key]
            else:
                frame = link.prepare(payload, text)
                shared = None
        if isinstance(link, FramedLink):
            if link._closed or link.conn.state != _OPEN:
                continue
            if (
                link._shared is None
                and link._batch is None
                and link._flusher is flusher
                and len(frame) <= link.config.write_high
            ):
                if shared is None:
                    shared = _SharedBatch(link.config.write_high, links)
                    shared.add(frame)
                    link._flusher.add(shared)  # (once: not each member)
                elif link.config.write_high < shared.limit:
                    shared.limit = link.config.write_high
                link._shared = shared
                shared.members += 1
                shared.links.append(link)
            else:
                link.queue_frame(frame)  # (queue_prepared's checks are done)
        elif link.is_open:
            link.queue_prepared(frame)
        else:
            continue
        count += 1
    return count
