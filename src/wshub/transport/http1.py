"""HTTP/1.1: requests parsed by httptools, WebSocket upgrades, plain requests to the handler.

One :class:`Http1Protocol` per TCP connection.  It reads requests until one
is a WebSocket upgrade; with the 101 it hands the transport to an
:class:`Http1Link` (a :class:`~wshub.transport.link.FramedLink` over the
transport), which from then on is the transport's protocol, and is gone.
Policy (origin, per-IP, IDs) is the hub's: this module only checks that the
request is well-formed and writes what the hub decided.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
from typing import TYPE_CHECKING, Any, cast

import httptools

from ..errors import WsHubError
from ..http import Request, Response, call_handler, finished_response
from ..logging import refusal_log
from ..policy import valid_host
from ..protocol import frames
from ..protocol.connection import Connection
from ..protocol.handshake import (
    Headers,
    accept_key_bytes,
    add_header,
    is_websocket_upgrade,
)
from ..protocol.http import frame_http1, switching_protocols
from .epoll import EpollTransport
from .link import Admission, FramedLink, LinkConfig
from .upgrade import (
    PendingVerdict,
    Refusal,
    RequestHead,
    bulk_congestion_for,
    discard_upgrade,
    hook_timeout,
    judge_upgrade,
    new_connection,
    settle_upgrade,
)

if TYPE_CHECKING:
    from .server import HttpServer, ServerConnections

__all__ = ["Http1Link", "Http1Protocol"]

log = logging.getLogger("wshub")

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Stands for "no httptools parser made yet" (None means "read no more").
_LAZY: Any = object()

# The C accelerator's reader of a whole, plain upgrade request (see
# _speedups.c), or None on the pure-Python path: then httptools reads all.
_parse_upgrade_head: Any = None
_send_nowait: Any = None
if frames.ACCELERATED:
    _speedups = importlib.import_module("wshub._speedups")

    _parse_upgrade_head = _speedups.parse_upgrade_head
    _send_nowait = getattr(_speedups, "send_nowait", None)  # (not on Windows)


# A cache (module state by design), per transport class: does
# writelines() gather without joining (see Http1Link)?
_GATHER: dict[type, bool] = {}

# The transports over a plain socket that a write may bypass while nothing
# is buffered in them (Http1Link._write): asyncio's and uvloop's.  Not TLS.
_DIRECT_TRANSPORTS = {
    ("asyncio.selector_events", "_SelectorSocketTransport"),
    ("uvloop.loop", "TCPTransport"),
    ("uvloop.loop", "UnixTransport"),
}

# Http1Link._fd before its lookup counts up from _FD_FIRST to _FD_LOOKUP,
# one per write: the descriptor is looked up at the third write.  The 101
# and a Close reply, all that S5's connect-upgrade-close loop writes, are
# not worth it: uvloop builds a socket object (and calls getsockname) for
# the lookup, 3.5 % of the server's time there when done at the first write.
_FD_FIRST = -4
_FD_LOOKUP = -2


class Http1Link(FramedLink):
    """A WebSocket over an HTTP/1.1 connection (after the 101).

    It is its transport's protocol: the transport calls its
    ``data_received``, ``eof_received``, ``pause_writing``,
    ``resume_writing`` and ``connection_lost`` (the :class:`Http1Protocol`
    that read the upgrade request is gone, which idle connections feel).
    """

    __slots__ = ("_connections", "_direct", "_fd", "_gather", "transport")

    # The transport's limits are config.write_high/low (set in _handshake).
    _PAUSE_SHOWS_BUFFER = True
    carrier = "http1"

    def __init__(
        self,
        transport: asyncio.Transport,
        conn: Connection,
        config: LinkConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        bulk_congestion: str | None = None,
        connections: ServerConnections | None = None,
        direct_reads: bool = True,
    ) -> None:
        super().__init__(conn, config, loop, bulk_congestion=bulk_congestion)
        self.transport = transport
        # The server's table of upgraded connections, left on connection_lost.
        self._connections = connections
        # Reads large frames in place: made by the first large frame; False
        # where not wanted (over TLS, whose layer reads into its own buffers).
        self._direct: _DirectReader | bool | None = None if direct_reads else False
        # uvloop's writelines() and ours hand all pieces to one writev() and
        # keep what the kernel did not take without copying it; asyncio's
        # (3.11) joins them into one new bytes first.
        kind = type(transport)
        gather = _GATHER.get(kind)
        if gather is None:
            gather = _GATHER[kind] = kind is EpollTransport or kind.__module__.startswith("uvloop")
        self._gather = gather
        # The socket's descriptor for writes straight to the kernel, -1
        # where there is none; before it is looked up, the writes still to
        # make through the transport (see _FD_FIRST).
        if _send_nowait is None:
            self._fd = -1
        elif kind is EpollTransport:
            self._fd = self._socket_fd()  # (no lookup to save)
        else:
            self._fd = _FD_FIRST

    def _socket_fd(self) -> int:
        # (Only asked where _send_nowait exists: _fd starts at -1 without it.)
        transport = self.transport
        if isinstance(transport, EpollTransport):
            return transport.fileno()
        kind = type(transport)
        if (kind.__module__, kind.__name__) not in _DIRECT_TRANSPORTS:
            return -1
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def direct_fd(self) -> int:
        # Only with nothing buffered in the transport (what it holds goes
        # first), and only while it is open: after that the descriptor may
        # be closed and reused by another connection.
        fd = self._fd
        if fd < 0:
            if fd == -1:
                return -1
            if fd < _FD_LOOKUP:
                self._fd = fd + 1  # one write fewer to go
                return -1
            fd = self._fd = self._socket_fd()
            if fd < 0:
                return -1
        t = self.transport
        return -1 if t.get_write_buffer_size() or t.is_closing() else fd

    def write_rest(self, data: bytes, sent: int) -> None:
        self.transport.write(memoryview(data)[sent:] if sent > 0 else data)

    def _write(self, data: bytes, more: bool = False) -> None:
        # One send() of our own where the transport would make the same
        # system call after its bookkeeping (for uvloop, send() instead of
        # write(): no VFS layer); what the kernel does not take goes to the
        # transport, which keeps it in order and reports errors.
        fd = self.direct_fd()
        if fd >= 0:
            sent = _send_nowait(fd, data, more)
            if sent != len(data):
                self.write_rest(data, sent)
            return
        self.transport.write(data)

    def _write_last(self, data: bytes) -> None:
        # MSG_MORE: the kernel holds the bytes until the close (or shutdown)
        # that follows in this call, and sends them with the FIN in one
        # segment: one transmission and one wakeup of the peer fewer for
        # every closing handshake.
        self._write(data, more=True)

    def _write_many(self, chunks: list[bytes]) -> None:
        pieces: list[bytes] = []
        small: list[bytes] = []
        for chunk in chunks:
            if len(chunk) < 65536:
                small.append(chunk)
                continue
            # Small frames are joined into one piece; a large payload is
            # handed over as it is (the kernel copies it; we need not).
            if small:
                pieces.append(b"".join(small) if len(small) > 1 else small[0])
                small = []
            pieces.append(chunk)
        if small:
            pieces.append(b"".join(small) if len(small) > 1 else small[0])
        if len(pieces) == 1:
            self._write(pieces[0])
        elif self._gather:
            self.transport.writelines(pieces)
        else:
            write = self.transport.write
            for piece in pieces:
                write(piece)

    def _end(self) -> None:
        self.transport.close()

    def _half_close(self) -> None:
        t = self.transport
        if t.can_write_eof():
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                t.close()

    def _kill(self) -> None:
        self.transport.abort()

    def _pause_reading(self) -> None:
        if self.transport.is_reading():
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.transport.is_closing() and not self.transport.is_reading():
            self.transport.resume_reading()

    def _buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def _socket_transport(self) -> asyncio.BaseTransport | None:
        return self.transport

    def _closes_by_itself(self) -> bool:
        t = self.transport
        return t.is_closing() and not t.get_write_buffer_size()

    # ------------------------------------- the transport's protocol (asyncio)

    def eof_received(self) -> bool:
        super().eof_received()
        return True  # the transport stays: our Close may still have to go out

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._connections is not None:
            self._connections.link_lost(self)

    def _large_frame_pending(self) -> None:
        reader = self._direct
        if reader is False:
            return
        buf = self.conn.direct_payload
        if buf is None or buf.total - buf.filled < _DIRECT_READ_MIN:
            return
        transport = self.transport
        if transport.is_closing():
            return
        if not isinstance(reader, _DirectReader):
            reader = self._direct = _DirectReader(self)
        transport.set_protocol(reader)
        reader.set_lowat()

    def end_direct(self) -> None:
        """The large frame is in: the transport reads into this link again."""
        transport = self.transport
        me = cast(asyncio.BaseProtocol, self)
        if transport.get_protocol() is not me:
            transport.set_protocol(me)
            reader = self._direct
            if isinstance(reader, _DirectReader):
                reader.set_lowat()


class _DirectReader(asyncio.BufferedProtocol):
    """Stands in for an :class:`Http1Link` as the transport's protocol while
    a large frame is read.

    The transport then receives straight into the buffer that becomes the
    message (``Connection.read_window``): no copy out of the event loop's
    read buffer, no list of chunks to join.  Once the frame is complete the
    protocol takes the transport back.
    """

    __slots__ = ("_link", "_lowat", "_sock", "_spare")

    def __init__(self, link: Http1Link) -> None:
        self._link = link
        self._spare: bytearray | None = None
        self._sock = link.transport.get_extra_info("socket")
        self._lowat = 1

    def set_lowat(self) -> None:
        """Have the socket report readable only once ``_LOWAT`` bytes of the
        frame (or all of its rest) are in, and as usual again after it.

        A 1 MiB frame then takes a handful of reads instead of dozens: fewer
        wakeups here, and fewer for the sender to pay (on loopback the
        sender's CPU delivers the data and wakes us).  The mark never
        exceeds what the frame still lacks, so the frame always completes;
        a FIN or an error is reported whatever the mark.
        """
        buf = self._link.conn.direct_payload
        left = 0 if buf is None else buf.total - buf.filled
        if self._lowat == 1:
            if left < _LOWAT:
                return  # not worth two system calls
            want = _LOWAT
        else:
            want = max(1, min(left, self._lowat))
            if want == self._lowat:
                return
        sock = self._sock
        if sock is None or _SO_RCVLOWAT is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, want)
        except OSError:  # not supported here: read as usual
            self._sock = None
            return
        self._lowat = want

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        window = self._link.conn.read_window()
        if window is not None:
            return window
        # The frame is over (this is not expected: we hand the transport
        # back as soon as it is): read as usual.
        if self._spare is None:
            self._spare = bytearray(65536)
        return self._spare

    def buffer_updated(self, nbytes: int) -> None:
        link = self._link
        if link.conn.direct_payload is None:
            assert self._spare is not None
            link.end_direct()
            link.data_received(bytes(self._spare[:nbytes]))
            return
        link.window_filled(nbytes)
        if link.conn.direct_payload is None:
            link.end_direct()
        else:
            self.set_lowat()

    def eof_received(self) -> bool | None:
        return self._link.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.connection_lost(exc)

    def pause_writing(self) -> None:
        self._link.pause_writing()

    def resume_writing(self) -> None:
        self._link.resume_writing()


# Hand the transport to a _DirectReader only for this much left to read.
_DIRECT_READ_MIN = 16384
# While it reads a frame with at least this much left, it asks the socket
# to report readable for no less than this much (or the frame's rest).
# Measured: 256 KiB beat 128 KiB and matched 512 KiB and 1 MiB in S3.
_LOWAT = 256 * 1024
_SO_RCVLOWAT: int | None = getattr(socket, "SO_RCVLOWAT", None)


class _ParsedRequest:
    __slots__ = ("body", "headers", "http_version", "keep_alive", "method", "target")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.http_version = "1.1"
        self.headers: Headers = {}
        self.body = bytearray()
        self.keep_alive = True


# While the hub's async handshake hook runs, bytes sent ahead of the 101
# are kept for the link up to this much; then reading pauses.
_EARLY_DATA_LIMIT = 64 * 1024


class _PendingUpgrade:
    """An upgrade waiting for the hub's ``async`` handshake hook."""

    __slots__ = ("head", "rest", "verdict")

    def __init__(self, verdict: PendingVerdict, head: RequestHead, rest: bytes) -> None:
        self.verdict = verdict
        self.head = head
        self.rest = rest  # what came after the request head: the link's first bytes


class Http1Protocol(asyncio.Protocol):
    """Serves one HTTP/1.1 connection until it is upgraded: then its
    :class:`Http1Link` takes the transport over."""

    __slots__ = (
        "_busy",
        "_bytes_in",
        "_closing",
        "_head_size",
        "_header_count",
        "_headers_done",
        "_parser",
        "_queue",
        "_raw_size",
        "_req",
        "_sniff",
        "_timer",
        "_write_mark",
        "_write_paused",
        "_write_timer",
        "ip_slot",
        "link",
        "peer",
        "server",
        "tls",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.link: Http1Link | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.tls = False
        self._parser: Any = None
        self._req: _ParsedRequest | None = None
        self._queue: list[_ParsedRequest] | None = None  # made by the first plain request
        # What holds the next request back: an async handler (True), or the
        # upgrade whose async handshake hook runs (its _PendingUpgrade).
        self._busy: bool | _PendingUpgrade = False
        self._bytes_in = 0  # bytes read before the upgrade (bytes_read counts them)
        self._closing = False
        self._head_size = 0
        self._raw_size = 0
        self._sniff: bytes | None = None
        self._header_count = 0
        self._headers_done = False
        self._timer: asyncio.TimerHandle | None = None
        # Plain HTTP: the transport's write buffer is over its high-water
        # mark (the peer does not read what we answered); the watch on it.
        self._write_paused = False
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_mark = 0
        # The key this connection is counted under in the hub's per-IP
        # table until it is upgraded or lost (see ServerConnections.opened).
        self.ip_slot: str | None = None

    # ----------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = self.server.connections.shared_host(str(peer[0]))
            self.peer = (host, int(peer[1]))
        # Only a server with an SSL context has TLS connections to look at.
        ssl_object = transport.get_extra_info("ssl_object") if self.server.connections.tls else None
        self.tls = ssl_object is not None
        h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        if not self.server.connections.opened(self):
            self._over_limit(h2)
            return
        if h2 and self.server.connections.switch_to_h2(self, b""):
            return
        # httptools' parser is made on first need: the usual upgrade request
        # is read by the C accelerator in one call (see data_received).
        self._parser = _LAZY
        self._sniff = b""
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        # (Until the upgrade: then the link is the transport's protocol.)
        self._bytes_in += len(data)
        if self._closing:
            return
        parser = self._parser
        if parser is None:
            upgrading = self._busy
            if isinstance(upgrading, _PendingUpgrade):
                # Frames sent ahead of the 101: kept for the link.  Reading
                # goes on (so that a client that leaves is noticed) up to a
                # bound, then pauses until the hook has answered.
                upgrading.rest += data
                transport = self.transport
                if (
                    len(upgrading.rest) >= _EARLY_DATA_LIMIT
                    and transport is not None
                    and transport.is_reading()
                ):
                    transport.pause_reading()
            return
        if parser is _LAZY and not self._sniff:
            # The first read: nearly always a whole, plain upgrade request,
            # read by one C call (httptools' parser is made only when not).
            if _parse_upgrade_head is not None:
                server = self.server
                head = _parse_upgrade_head(data, server.max_header_size, server.max_headers)
                if head is not None and is_websocket_upgrade(head[1]):
                    self._parser = None
                    self._handshake("GET", "1.1", head[0], head[1], data[head[2] :], True)
                    return
            parser = self._parser = httptools.HttpRequestParser(self)
        if not self._headers_done:
            self._raw_size += len(data)
            sniff = self._sniff
            if sniff is not None:
                # h2c with prior knowledge (RFC 9113 §3.3): the connection may
                # open with the HTTP/2 preface, possibly split across reads.
                data = sniff + data
                if len(data) < len(_H2_PREFACE) and _H2_PREFACE.startswith(data):
                    self._sniff = data
                    return
                self._sniff = None
                if data.startswith(_H2_PREFACE) and self.server.connections.switch_to_h2(
                    self, data
                ):
                    return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._on_upgrade(data[offset:])
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {_short(exc)}")
            return
        except _RequestRefused:
            return
        if not self._headers_done and self._raw_size > 2 * self.server.max_header_size + 65536:
            # Bytes that never form a request head (slowloris, garbage).  Looked
            # at after parsing: a complete request resets the count, so one read
            # of many small pipelined requests is not taken for one huge head.
            self._refuse(431, "request header too large")
            return
        self._process_queue()

    def pause_writing(self) -> None:
        # Plain HTTP: the peer does not read our answers as fast as it sends
        # requests (pipelining).  Answer no more and read no more until the
        # buffer drains, so what we hold is bounded by the buffer's limit,
        # not by the number of requests; and the peer must take some of it
        # within write_timeout.
        self._write_paused = True
        if not self._closing:
            self._cancel_timer()
            self._update_reading()
        self._watch_writes()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._closing:
            return
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._update_reading()
        if not self._busy:
            if self._queue:
                self._process_queue()
            if not self._queue and not self._busy and not self._closing:
                self._start_timer()  # idle (keep-alive) from here

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._closing = True
        self.server.connections.lost(self)
        upgrading = self._busy
        if isinstance(upgrading, _PendingUpgrade):
            self._busy = False
            discard_upgrade(upgrading.verdict)

    # ------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._req = _ParsedRequest()
        self._header_count = 0
        self._headers_done = False

    def on_url(self, url: bytes) -> None:
        assert self._req is not None
        self._count_head(len(url))
        self._req.target += url.decode("latin-1")

    def _count_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self.server.max_header_size:
            self._refuse(431, "request header too large")
            raise _RequestRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        self._count_head(len(name) + len(value) + 4)
        self._header_count += 1
        if self._header_count > self.server.max_headers:
            self._refuse(431, "too many request headers")
            raise _RequestRefused
        # OWS is SP and HTAB only (str.strip() would also take U+00A0 ...).
        add_header(req.headers, name.decode("latin-1"), value.decode("latin-1").strip(" \t"))

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None and self._parser is not None
        self._headers_done = True
        self._head_size = 0
        self._raw_size = 0
        req.method = self._parser.get_method().decode("latin-1")
        req.http_version = self._parser.get_http_version()
        req.keep_alive = bool(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        req = self._req
        assert req is not None
        if len(req.body) + len(body) > self.server.max_body_size:
            self._refuse(413, "request body too large", plain=True)
            raise _RequestRefused
        req.body += body

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        self._req = None
        queue = self._queue
        if queue is None:
            self._queue = queue = []
        queue.append(req)
        self._head_size = 0
        self._raw_size = 0
        self._headers_done = False

    # ------------------------------------------------------------- requests

    def _start_timer(self) -> None:
        """(Re)start the handshake_timeout for a complete request head."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.connections.arm_deadline(self)

    def deadline_passed(self) -> None:
        """The request head did not come within handshake_timeout (the server's sweep)."""
        # Called by the server's sweep.  On a busy loop the request may have
        # arrived in this very iteration, after the poll: look again once
        # pending reads have been handled (a timer due now runs after the
        # I/O callbacks of the next iteration), so a client that was on
        # time is not cut off.
        self._timer = self.server.connections.loop.call_later(0, self._timed_out)

    def hand_over(self) -> None:
        """HTTP/2 takes the transport: this object parses nothing more (it
        stays in the server's table so that ``close()`` finds the transport)."""
        self._cancel_timer()
        self._parser = None

    def _cancel_timer(self) -> None:
        self.server.connections.disarm_deadline(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        upgrading = self._busy
        if isinstance(upgrading, _PendingUpgrade) and not self._closing:
            # The hub's handshake hook is still running: give up on it.
            self._busy = False
            discard_upgrade(upgrading.verdict)
            timeout = self.server.handshake_timeout
            self._send_refusal(
                hook_timeout(upgrading.head, "http/1.1", timeout, handler=self.server.websocket)
            )
            return
        if self.link is None and not self._closing and not self._busy:
            if self._headers_done or self._raw_size:
                self._refuse(
                    408,
                    "request timeout",
                    what=f"request not complete within {self.server.handshake_timeout:.1f}s",
                )
            else:
                self.close_after_writes()

    def _process_queue(self) -> None:
        while self._queue and not self._busy and not self._closing and not self._write_paused:
            req = self._queue.pop(0)
            if is_websocket_upgrade(req.headers):
                # An upgrade that httptools did not flag (e.g. no "Connection:
                # upgrade"): judge it as a handshake all the same, so the
                # client gets a precise 400 instead of a page.
                self._handshake(req.method, req.http_version, req.target, req.headers, b"")
                return
            self._plain_request(req)

    def _on_upgrade(self, rest: bytes) -> None:
        # httptools stops at an Upgrade; the request is in the queue.
        if not self._queue:
            self._refuse(400, "malformed upgrade request")
            return
        req = self._queue.pop(0)
        if self._queue:
            self._refuse(400, "pipelined requests before an upgrade")
            return
        if not is_websocket_upgrade(req.headers):
            # Some other protocol (h2c upgrade ...): answer it as plain HTTP,
            # then close, since the parser cannot go on after an Upgrade.
            req.keep_alive = False
            self._plain_request(req)
            return
        self._handshake(req.method, req.http_version, req.target, req.headers, rest)

    def _handshake(
        self,
        method: str,
        http_version: str,
        target: str,
        headers: Headers,
        rest: bytes,
        is_upgrade: bool = False,
    ) -> None:
        # is_upgrade: is_websocket_upgrade(headers) is known to be true.
        server = self.server
        # From here the hub counts this connection as its client: the
        # connection's own count goes with the request (judge_upgrade), so
        # that it is counted once.
        ip_slot = self.ip_slot
        self.ip_slot = None
        transport = self.transport
        assert transport is not None
        head = RequestHead(
            method=method,
            target=target,
            http_version=http_version,
            headers=headers,
            peer=self.peer,
            scheme="wss" if self.tls else "ws",
            tls=transport.get_extra_info("ssl_object") if self.tls else None,
            ip_slot=ip_slot,
        )
        verdict = judge_upgrade(server.websocket, head, carrier="http/1.1", is_upgrade=is_upgrade)
        if isinstance(verdict, Refusal):
            self._send_refusal(verdict)
        elif isinstance(verdict, asyncio.Future):
            # The hub's hook is async: parse nothing more until it has
            # answered (the request-head deadline stays armed and bounds it).
            self._parser = None
            self._busy = _PendingUpgrade(verdict, head, rest)
            verdict.add_done_callback(self._verdict_ready)
        else:
            self._upgrade(verdict, headers, rest)

    def _verdict_ready(self, verdict: PendingVerdict) -> None:
        upgrading = self._busy
        if not isinstance(upgrading, _PendingUpgrade) or upgrading.verdict is not verdict:
            return  # given up on (connection lost, timeout): discard_upgrade cleans up
        self._busy = False
        answer = settle_upgrade(verdict, upgrading.head, "http/1.1", handler=self.server.websocket)
        if isinstance(answer, Refusal):
            self._send_refusal(answer)
            return
        transport = self.transport
        if transport is None or self._closing or transport.is_closing():
            answer.cancel()
            return
        if not transport.is_reading():
            transport.resume_reading()
        self._upgrade(answer, upgrading.head.headers, upgrading.rest)

    def _upgrade(self, admission: Admission, headers: Headers, rest: bytes) -> None:
        """Answer 101 and hand the connection to its link."""
        server = self.server
        transport = self.transport
        key = headers.get("sec-websocket-key")
        assert transport is not None and key is not None
        if transport.is_closing():
            admission.cancel()
            return
        self._cancel_timer()
        config = admission.config
        congestion = server.loopback_congestion
        connections = server.connections
        link = Http1Link(
            transport,
            new_connection(admission),
            config,
            connections.loop,
            bulk_congestion=None
            if congestion is None
            else bulk_congestion_for(congestion, self.peer[0]),
            connections=connections,
            direct_reads=not self.tls,
        )
        transport.set_write_buffer_limits(high=config.write_high, low=config.write_low)
        self.link = link
        self._parser = None
        # From here the link reads and is told of the connection's end.
        connections.upgraded(self, link)
        transport.set_protocol(cast(asyncio.BaseProtocol, link))
        link.queue_frame(
            switching_protocols(accept_key_bytes(key.strip()), admission.response_headers)
        )
        # Like bytes_written (which counts the 101), bytes_read counts the
        # request; ``rest`` is counted when the link reads it below.
        link.bytes_read = self._bytes_in - len(rest)
        admission.open(link)
        if rest:
            link.data_received(rest)

    def _plain_request(self, req: _ParsedRequest) -> None:
        if not valid_host(req.headers.get("host", "")):
            # RFC 9112 §3.2: 400 for an invalid Host (or several of them).
            self._refuse(400, "malformed Host header", plain=True)
            return
        handler = self.server.request_handler
        if handler is None:
            self._respond(req, Response.text(404, "Not Found\n"))
            return
        request = Request.from_target(
            method=req.method,
            target=req.target,
            headers=req.headers,
            body=bytes(req.body),
            client=self.peer,
            tls=self.tls,
            http_version=req.http_version,
        )
        answer = call_handler(handler, request)
        if isinstance(answer, Response):
            self._respond(req, answer)
            return
        # An async handler: read nothing more until it has answered.
        self._busy = True
        self._cancel_timer()
        self._update_reading()
        answer.add_done_callback(lambda task: self._handler_done(req, task))

    def _handler_done(self, req: _ParsedRequest, task: asyncio.Future[Response]) -> None:
        self._busy = False
        if self._closing:
            return
        self._respond(req, finished_response(task))
        if self.transport is not None and not self._closing:
            self._update_reading()
            self._process_queue()

    def _respond(self, req: _ParsedRequest, response: Response) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep_alive = req.keep_alive and req.http_version == "1.1"
        transport.write(
            frame_http1(
                response.status,
                response.headers,
                response.body,
                method=req.method,
                keep_alive=keep_alive,
            )
        )
        if not keep_alive:
            self.close_after_writes()
        elif not self._write_paused:
            self._start_timer()
        # else: the write watch runs; the idle timer starts once it drains

    def _refuse(
        self,
        status: int,
        reason: str,
        *,
        what: str = "refused request",
        logged: bool = False,
        plain: bool = False,
    ) -> None:
        """Answer with an error status and close (the connection is not reusable).

        Every refusal leaves exactly one log line (here, unless the caller
        already logged it with ``logged=True``), rate-limited with the other
        refusals.  Unless ``plain`` (the refusal of a request known not to
        be an upgrade), the hub counts it as a refused handshake: the
        request could not be read far enough to tell.
        """
        if self.transport is None or self._closing:
            return
        if not logged:
            self._log_refusal(status, f"{what}: {status} {reason}")
        if not plain:
            self._count_refusal(status)
        self._send_refusal(Refusal(status, reason))

    def _log_refusal(self, status: int, message: str) -> None:
        peer = self.peer[0]
        refusal_log.info(
            "%s: %s",
            peer,
            message,
            extra={"peer": peer, "status": status, "transport": "http/1.1"},
        )

    def _count_refusal(self, status: int) -> None:
        hub = self.server.websocket
        if hub is not None:
            hub.handshake_refused(status)

    def _send_refusal(self, refused: Refusal) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        self._closing = True
        self._parser = None
        transport.write(_refusal_bytes(refused))
        self.close_after_writes()

    def close_after_writes(self) -> None:
        """Close once what was written is sent, or abort after write_timeout."""
        self._closing = True
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self._watch_writes()

    def _over_limit(self, h2: bool) -> None:
        """Over the per-IP limit at connect: 429 (not over TLS h2) and close.

        Our side is shut at once, but what the client sends meanwhile is
        read and dropped for a moment: closing with unread input would make
        the kernel reset the connection, which can destroy the 429 in flight.
        """
        self._log_refusal(429, "refused connection: 429 too many connections from this address")
        self._count_refusal(429)
        self._closing = True
        self._parser = None
        transport = self.transport
        assert transport is not None
        if h2:
            self.close_after_writes()
            return
        transport.write(_refusal_bytes(Refusal(429, "too many connections from this address")))
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                self.close_after_writes()
                return
            linger = min(1.0, self.server.write_timeout)
            self._timer = self.server.connections.loop.call_later(linger, self.close_after_writes)
        else:
            self.close_after_writes()

    def _update_reading(self) -> None:
        """Plain HTTP: read while neither a handler nor a full write buffer holds us."""
        transport = self.transport
        if transport is None or self.link is not None or transport.is_closing():
            return
        want = not self._busy and not self._write_paused
        if want != transport.is_reading():
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _watch_writes(self) -> None:
        """The peer must take some of what we wrote within write_timeout
        (all of it, once we are closing), or the connection is aborted."""
        transport = self.transport
        if transport is None or self._write_timer is not None:
            return
        self._write_mark = transport.get_write_buffer_size()
        self._write_timer = self.server.connections.loop.call_later(
            self.server.write_timeout, self._write_check
        )

    def _write_check(self) -> None:
        self._write_timer = None
        transport = self.transport
        if transport is None or self.link is not None:
            return
        size = transport.get_write_buffer_size()
        if not self._closing:
            if not self._write_paused:
                return
            if size < self._write_mark:
                self._watch_writes()  # slow, but it reads: keep watching
                return
        elif not size and transport.is_closing():
            return  # sent: connection_lost is on its way
        refusal_log.info(  # a peer can cause this at will: rate-limited
            "%s: peer did not read what we sent within %.1fs (%d bytes left): aborted",
            self.peer[0],
            self.server.write_timeout,
            size,
        )
        self._closing = True
        transport.abort()


def _refusal_bytes(refused: Refusal) -> bytes:
    """A refusal on HTTP/1.1: the connection is not reused after it."""
    return frame_http1(refused.status, refused.headers, refused.body, keep_alive=False)


class _RequestRefused(WsHubError):
    """Raised inside a parser callback to stop parsing after a refusal."""


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]
