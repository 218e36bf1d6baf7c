"""HTTP/2 (RFC 9113) via ``h2``, with WebSockets over extended CONNECT (RFC 8441).

:class:`HttpServer` hands a connection here when TLS ALPN chose ``h2`` or the
first bytes are the HTTP/2 connection preface (h2c with prior knowledge).
One :class:`Http2Protocol` then owns the socket and multiplexes streams:

* an extended CONNECT with ``:protocol = websocket`` is judged by the hub
  exactly as an HTTP/1.1 upgrade is (origin, per-IP limit, cookies,
  permessage-deflate), answered ``200``, and the stream becomes an
  :class:`Http2Link` — a :class:`~wshub.transport.link.FramedLink`, so the
  RFC 6455 frames go through the same ``protocol/`` core as on HTTP/1.1;
* any other request goes to the server's plain-HTTP handler (404 without one).

Flow control is per stream in both directions.  Inbound, a stream's DATA is
acknowledged (its window reopened) only once the link consumed it, so
pausing one WebSocket closes that stream's window and no other.  Outbound,
each stream queues what the peer's window does not admit yet; that queue is
the link's write buffer (``send()``'s return value, ``drain()``, the
``write_limit`` cap).  The connection-level receive window is sized so that
paused streams can never starve their siblings.

Abuse (CVE-2023-44487 rapid reset, SETTINGS/PING/PRIORITY floods, too many
concurrent streams, a peer that does not read) ends the connection with a
GOAWAY and a log line; memory stays bounded by the windows and the stream
limit below.  A plain request must be complete within the server's
``handshake_timeout`` (408 + RST_STREAM), and the request bodies held by one
connection are capped (BODY_BUFFER_FACTOR), not each stream's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ..http import Request, Response, call_handler, finished_response
from ..logging import refusal_log
from ..policy import valid_host
from ..protocol.connection import Connection
from ..protocol.handshake import Headers, add_header
from ..protocol.http import frame_http2
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
    from .http1 import Http1Protocol
    from .server import HttpServer

__all__ = ["Http2Link", "Http2Protocol", "switch_to_h2"]

log = logging.getLogger("wshub")

# Limits.  Worst-case inbound memory per connection is about
# MAX_CONCURRENT_STREAMS * STREAM_WINDOW (+ what each WebSocket's own
# max_payload allows it to reassemble, as on HTTP/1.1).
MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 128 * 1024
# Every stream may hold its whole window unacknowledged (paused) without the
# connection window running dry for the others.
CONNECTION_WINDOW = MAX_CONCURRENT_STREAMS * STREAM_WINDOW
# The socket's write buffer: stream data stops flowing into it above HIGH.
TRANSPORT_HIGH = 256 * 1024
TRANSPORT_LOW = 64 * 1024
# Past this, the peer is not reading even our control frames: drop it.
TRANSPORT_HARD_LIMIT = 4 * 1024 * 1024
# After a connection error's GOAWAY, input is drained this long before closing.
ERROR_LINGER = 1.0
# A connection without streams for this long is closed (GOAWAY).
IDLE_TIMEOUT = 120.0
# Plain requests: the bodies being received on one connection are held up
# to this many times max_body_size in all; a stream whose DATA would pass
# that is refused (REFUSED_STREAM, which a client may retry), so many
# streams cannot each buffer max_body_size.
BODY_BUFFER_FACTOR = 2
# Token buckets (burst, per second) for frames that cost us work but carry
# nothing a well-behaved client sends in bulk.
RESET_BUDGET = (200.0, 100.0)  # RST_STREAM from the peer (rapid reset)
SETTINGS_BUDGET = (64.0, 10.0)
PING_BUDGET = (64.0, 10.0)
NOISE_BUDGET = (1000.0, 500.0)  # PRIORITY, empty DATA, unknown frames


def switch_to_h2(server: HttpServer, shell: Http1Protocol, data: bytes) -> bool:
    """The server's HTTP/2 take-over: ``shell``'s transport now speaks HTTP/2."""
    transport = shell.transport
    if transport is None or transport.is_closing():
        return False
    shell.hand_over()
    proto = Http2Protocol(server, shell, transport)
    transport.set_protocol(proto)
    server.connections.h2_sessions.add(proto)
    proto.start(data)
    return True


class _Budget:
    """A token bucket: ``spend`` is False once the peer is over its rate."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = burst
        self._stamp = now

    def spend(self, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


_REQUEST = 1  # a plain request: collecting its body, or answered by the handler
_WEBSOCKET = 2  # an open WebSocket (link attached)
_DONE = 3  # answered / link finished: inbound DATA is acknowledged and dropped
_PENDING = 4  # a WebSocket whose async handshake hook runs: inbound DATA waits


class _Stream:
    """One HTTP/2 stream as this server sees it."""

    __slots__ = (
        "body",
        "deadline",
        "end_pending",
        "eof_pending",
        "finish_link",
        "headers",
        "id",
        "inbox",
        "kind",
        "linger",
        "link",
        "local_ended",
        "method",
        "out",
        "out_size",
        "pseudo",
        "read_paused",
        "remote_ended",
        "responded",
        "task",
        "write_paused",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.kind = _REQUEST
        self.method = ""
        self.pseudo: dict[str, str] = {}
        self.headers: Headers = {}
        self.body = bytearray()
        self.responded = False
        # A plain request's async handler, or a WebSocket's pending verdict.
        self.task: asyncio.Future[Any] | None = None
        self.link: Http2Link | None = None
        # Outbound: what the peer's window does not admit yet.
        self.out: deque[memoryview] = deque()
        self.out_size = 0
        self.end_pending = False  # END_STREAM once ``out`` is empty
        self.local_ended = False
        self.remote_ended = False
        self.finish_link = False  # the link is done once END_STREAM is out
        self.write_paused = False
        # Inbound while the link is paused: (data, flow-controlled length).
        self.inbox: deque[tuple[bytes, int]] = deque()
        self.read_paused = False
        self.eof_pending = False
        self.linger: asyncio.TimerHandle | None = None
        # A plain request must be complete (END_STREAM) by then.
        self.deadline: asyncio.TimerHandle | None = None


class Http2Link(FramedLink):
    """A WebSocket on one HTTP/2 stream (after the 200 to an extended CONNECT)."""

    __slots__ = ("_proto", "_stream")

    carrier = "h2"

    def __init__(
        self,
        proto: Http2Protocol,
        stream: _Stream,
        conn: Connection,
        config: LinkConfig,
        *,
        bulk_congestion: str | None = None,
    ) -> None:
        super().__init__(conn, config, bulk_congestion=bulk_congestion)
        self._proto = proto
        self._stream = stream

    def _write(self, data: bytes) -> None:
        self._proto._queue(self._stream, data)

    def _write_many(self, chunks: list[bytes]) -> None:
        self._proto._queue(self._stream, b"".join(chunks))

    def _end(self) -> None:
        self._proto._end_stream(self._stream, finish=True)

    def _half_close(self) -> None:
        self._proto._end_stream(self._stream, finish=False)

    def _kill(self) -> None:
        self._proto._kill_stream(self._stream)

    def _pause_reading(self) -> None:
        self._stream.read_paused = True

    def _resume_reading(self) -> None:
        self._proto._resume_stream(self._stream)

    def _buffered(self) -> int:
        return self._stream.out_size

    def _socket_transport(self) -> asyncio.BaseTransport | None:
        # One TCP socket carries every stream of the connection.
        return self._proto.transport


class Http2Protocol(asyncio.Protocol):
    """Serves one HTTP/2 connection: WebSocket streams and plain requests."""

    def __init__(self, server: HttpServer, shell: Http1Protocol, transport: asyncio.Transport):
        self.server = server
        self.shell = shell
        self._websockets = 0  # WebSocket streams open on this connection
        self.transport = transport
        self.peer = shell.peer
        self.tls = shell.tls
        self.streams: dict[int, _Stream] = {}
        self._loop = asyncio.get_running_loop()
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self._lost = False  # the transport is gone (or going)
        self._dead = False  # we sent a GOAWAY for an error: ignore further input
        self._draining = False  # shutting down: no new streams
        self._goaway_reason = ""
        self._peer_gone = False
        self._write_paused = False
        self._receiving = False
        self._seen_request = False
        self._timer: asyncio.TimerHandle | None = None
        # Bytes of plain request bodies held by this connection's streams.
        self._body_held = 0
        now = self._loop.time()
        self._resets = _Budget(*RESET_BUDGET, now)
        self._settings = _Budget(*SETTINGS_BUDGET, now)
        self._pings = _Budget(*PING_BUDGET, now)
        self._noise = _Budget(*NOISE_BUDGET, now)

    # -------------------------------------------------------------- lifecycle

    def start(self, data: bytes) -> None:
        codes = h2.settings.SettingCodes
        values = {
            codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            codes.MAX_HEADER_LIST_SIZE: self.server.max_header_size,
        }
        # RFC 8441 §3: a promise that extended CONNECT works; browsers take
        # it at its word, so only make it when a hub is attached.
        if self.server.websocket is not None:
            values[codes.ENABLE_CONNECT_PROTOCOL] = 1
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.transport.set_write_buffer_limits(high=TRANSPORT_HIGH, low=TRANSPORT_LOW)
        self._transmit()
        self._arm_timer(self.server.handshake_timeout)
        if data:
            self.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        # Never called: the transport arrives through ``switch_to_h2``.
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        self.server.connections.lost(self.shell)
        self.server.connections.h2_sessions.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self._forget(stream)
            link = stream.link
            if link is not None and stream.kind == _WEBSOCKET:
                self._websocket_done(stream)
                link.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None  # the peer half-closed TCP: close our side too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            if stream.out or stream.end_pending:
                self._flush_stream(stream)
        self._transmit()

    def goaway(self, reason: str = "") -> None:
        """Graceful shutdown: refuse new streams, GOAWAY once the open ones end.

        The GOAWAY waits for the last stream because a peer built on h2
        accepts no frame after one (browsers would; h2 clients do not), and
        the open WebSocket streams still carry their 1001 close handshake.
        New streams meanwhile get REFUSED_STREAM, which a client may retry.
        """
        if self._draining or self._lost or self._dead:
            return  # (a failed connection sent its GOAWAY already)
        self._draining = True
        self._goaway_reason = reason
        self._maybe_finish()

    def _fail(self, error: ErrorCodes, why: str) -> None:
        """A connection error: GOAWAY with ``error``, then close."""
        if self._dead or self._lost:
            return
        self._dead = True
        refusal_log.warning("%s: HTTP/2 connection error (%s): %s", self.peer[0], error.name, why)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 queued its own GOAWAY
            self.conn.close_connection(error_code=error, additional_data=why.encode()[:64])
        self._close_after_error()

    def _close_after_error(self) -> None:
        """Send the GOAWAY h2 queued, then close without losing it to a TCP reset."""
        if self._lost:
            return
        self._dead = True
        self._transmit()
        transport = self.transport
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        # Closing with unread input makes the kernel answer with a RST, which
        # can destroy the GOAWAY in flight: read (and drop) for a moment first.
        self._cancel_timer()
        self._timer = self._loop.call_later(ERROR_LINGER, self._close_transport)

    def _close_transport(self) -> None:
        if not self._lost:
            self._transmit()
            self._lost = True
            transport = self.transport
            transport.close()
            if transport.get_write_buffer_size():
                # A peer that does not read: close() would wait for it forever.
                self._cancel_timer()
                self._timer = self._loop.call_later(self.server.write_timeout, transport.abort)

    def _maybe_finish(self) -> None:
        if self._lost:
            return
        if self._draining:
            streams = list(self.streams.values())
            if any(s.kind != _DONE or s.out or s.end_pending for s in streams):
                return  # a request or a WebSocket still running
            for stream in streams:
                # Finished but lingering for the peer's END_STREAM: cut short.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(stream.id, ErrorCodes.NO_ERROR)
                del self.streams[stream.id]
                self._forget(stream)
            # Written by hand: h2 allows nothing after a GOAWAY it sends, and
            # the streams refused meanwhile must still be answered.
            frame = GoAwayFrame(
                0,
                last_stream_id=self.conn.highest_inbound_stream_id,
                error_code=ErrorCodes.NO_ERROR,
                additional_data=self._goaway_reason.encode("utf-8", "replace")[:64],
            )
            self._transmit()
            self.transport.write(frame.serialize())
            self._close_transport()
        elif self._peer_gone and not self.streams:
            self._close_transport()

    # ----------------------------------------------------------------- timers

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        if delay > 0 and not self._lost:
            self._timer = self._loop.call_later(delay, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.streams or self._lost:
            return
        if not self._seen_request:
            refusal_log.info(
                "%s: no HTTP/2 request within %.1fs", self.peer[0], self.server.handshake_timeout
            )
        self.goaway("idle")

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        if self._dead or self._lost:
            return
        self._receiving = True
        try:
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # h2 queued a GOAWAY with the right error code.
                refusal_log.warning("%s: HTTP/2 protocol error: %s", self.peer[0], exc)
                self._close_after_error()
                return
            for event in events:
                if self._dead or self._lost:
                    break
                self._handle(event)
        except Exception:  # a bug here must not take the server down
            log.exception("%s: internal error in the HTTP/2 connection", self.peer[0])
            self._fail(ErrorCodes.INTERNAL_ERROR, "internal error")
        finally:
            self._receiving = False
            self._transmit()

    def _handle(self, event: h2.events.Event) -> None:
        now = self._loop.time()
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            if not event.data and event.stream_ended is None and not self._noise.spend(now):
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "empty DATA flood")
                return
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            if event.remote_reset and not self._resets.spend(now):
                # CVE-2023-44487: opening and cancelling streams costs the
                # peer nothing and us a request each.
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
                return
            self._on_reset(event)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._flush_stream(stream)
            else:
                self._flush_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self._settings.spend(now):
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "SETTINGS flood")
                return
            self._flush_all()  # the initial window may have grown
        elif isinstance(event, h2.events.PingReceived):
            if not self._pings.spend(now):
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "PING flood")
        elif isinstance(event, (h2.events.PriorityUpdated, h2.events.UnknownFrameReceived)):
            if not self._noise.spend(now):
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "frame flood")
        elif isinstance(event, h2.events.ConnectionTerminated):
            # h2 allows nothing more after a peer's GOAWAY: end every stream.
            self._peer_gone = True
            if event.error_code != ErrorCodes.NO_ERROR:
                log.info("%s: HTTP/2 GOAWAY from the peer: %s", self.peer[0], event.error_code)
            self._close_transport()

    # ---------------------------------------------------------------- requests

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        self._seen_request = True
        self._cancel_timer()
        stream = _Stream(stream_id)
        self.streams[stream_id] = stream
        if self._draining:
            # After our GOAWAY (RFC 9113 §6.8): refuse, the client may retry.
            self._reset(stream, ErrorCodes.REFUSED_STREAM)
            return
        server = self.server
        size = count = 0
        for raw_name, raw_value in event.headers or ():
            name = bytes(raw_name).decode("latin-1")
            value = bytes(raw_value).decode("latin-1")
            size += len(name) + len(value) + 4
            if name.startswith(":"):
                stream.pseudo[name] = value
                continue
            count += 1
            add_header(stream.headers, name, value)
        authority = stream.pseudo.get(":authority")
        if authority is not None:
            # The hub's origin check and ``url()`` read "host" (RFC 9113 §8.3.1).
            stream.headers["host"] = authority
        stream.method = stream.pseudo.get(":method", "")
        ended = event.stream_ended is not None
        if size > server.max_header_size:
            self._refuse(stream, 431, "request header too large")
        elif count > server.max_headers:
            self._refuse(stream, 431, "too many request headers")
        elif not valid_host(stream.headers.get("host", "")):
            self._refuse(stream, 400, "malformed :authority")
        elif stream.method == "CONNECT":
            self._connect(stream, ended)
        elif ended:
            self._dispatch(stream)
        elif _declared_length(stream.headers) > server.max_body_size:
            self._refuse(stream, 413, "request body too large")
        elif server.handshake_timeout > 0:
            # Like a request head on HTTP/1.1: the whole request in time.
            stream.deadline = self._loop.call_later(
                server.handshake_timeout, self._request_timed_out, stream
            )

    def _connect(self, stream: _Stream, ended: bool) -> None:
        head = RequestHead(
            method=stream.method,
            target=stream.pseudo.get(":path", "/"),
            http_version="2",
            headers=stream.headers,
            peer=self.peer,
            scheme="wss" if self.tls else "ws",
            protocol=stream.pseudo.get(":protocol"),
            tls=self.transport.get_extra_info("ssl_object") if self.tls else None,
        )
        if not self._websockets:
            # Like an HTTP/1.1 upgrade: the connection's own per-IP count
            # passes to its first WebSocket, which the hub counts; the
            # connection counts again once it has none left.
            self.server.connections.release_ip_slot(self.shell)
        verdict = judge_upgrade(self.server.websocket, head, carrier="h2", ended=ended)
        if isinstance(verdict, Refusal):
            self._send_refusal(stream, verdict)
            self._recount_if_idle()
        elif isinstance(verdict, asyncio.Future):
            # The hub's hook is async: this stream waits (its DATA unread),
            # the others go on.  Counted as a WebSocket meanwhile: the
            # connection's per-IP slot stays with the pending client.
            self._websockets += 1
            stream.kind = _PENDING
            stream.task = verdict
            timeout = self.server.handshake_timeout
            if timeout > 0:
                stream.deadline = self._loop.call_later(timeout, self._hook_timed_out, stream, head)
            verdict.add_done_callback(lambda done: self._verdict_ready(stream, head, done))
        else:
            self._websockets += 1
            self._accept(stream, verdict)

    def _verdict_ready(self, stream: _Stream, head: RequestHead, verdict: PendingVerdict) -> None:
        if stream.task is not verdict or stream.kind != _PENDING:
            return  # given up on (reset, connection lost, timeout): discard_upgrade cleans up
        stream.task = None
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        answer = settle_upgrade(verdict, head, "h2", handler=self.server.websocket)
        if self._lost or self._dead or self.streams.get(stream.id) is not stream:
            if not isinstance(answer, Refusal):
                answer.cancel()
            self._end_pending(stream)
            return
        if isinstance(answer, Refusal):
            self._end_pending(stream)
            self._send_refusal(stream, answer)
        else:
            self._accept(stream, answer)
            if stream.inbox or stream.eof_pending:
                self._drain_inbox(stream)
        self._transmit()

    def _hook_timed_out(self, stream: _Stream, head: RequestHead) -> None:
        stream.deadline = None
        if stream.kind != _PENDING or self.streams.get(stream.id) is not stream:
            return
        self._end_pending(stream)
        timeout = self.server.handshake_timeout
        self._send_refusal(stream, hook_timeout(head, "h2", timeout, handler=self.server.websocket))
        self._transmit()

    def _end_pending(self, stream: _Stream) -> None:
        """A pending WebSocket will not open (refused, reset, timed out, lost)."""
        stream.kind = _DONE
        verdict = stream.task
        if verdict is not None:
            stream.task = None
            discard_upgrade(verdict)
        self._websockets -= 1
        self._recount_if_idle()

    def _accept(self, stream: _Stream, admission: Admission) -> None:
        """Answer 200 and make the stream a WebSocket (counted in ``_websockets``)."""
        headers = [(":status", "200")]
        headers.extend((k.lower(), v) for k, v in admission.response_headers)
        if not self._send_headers(stream, headers, end=False):
            admission.cancel()
            stream.kind = _DONE
            self._websockets -= 1
            self._recount_if_idle()
            return
        stream.responded = True
        link = Http2Link(
            self,
            stream,
            new_connection(admission),
            admission.config,
            bulk_congestion=bulk_congestion_for(self.server.loopback_congestion, self.peer[0]),
        )
        stream.link = link
        stream.kind = _WEBSOCKET
        self._transmit()
        admission.open(link)

    def _dispatch(self, stream: _Stream) -> None:
        """The request is complete: ask the handler."""
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if stream.responded:
            return
        body = bytes(stream.body)
        self._release_body(stream)
        handler = self.server.request_handler
        if handler is None:
            self._respond(stream, Response.text(404, "Not Found\n"))
            return
        request = Request.from_target(
            method=stream.method,
            target=stream.pseudo.get(":path", "/"),
            headers=stream.headers,
            body=body,
            client=self.peer,
            tls=self.tls,
            http_version="2",
        )
        stream.responded = True  # from here the handler answers
        answer = call_handler(handler, request)
        if isinstance(answer, Response):
            self._respond(stream, answer)
            return
        stream.task = answer
        answer.add_done_callback(lambda task: self._handler_done(stream, task))

    def _request_timed_out(self, stream: _Stream) -> None:
        stream.deadline = None
        if self._lost or self._dead or self.streams.get(stream.id) is not stream:
            return
        if stream.responded or stream.kind != _REQUEST:
            return
        refusal_log.info(
            "%s: HTTP/2 request (stream %d) not complete within %.1fs: reset",
            self.peer[0],
            stream.id,
            self.server.handshake_timeout,
        )
        self._refuse(stream, 408, "request timeout")
        if self.streams.get(stream.id) is stream:
            # Its body may wait for a window the peer never opens: no more.
            self._reset(stream, ErrorCodes.CANCEL)
        if not self.streams:
            # Nothing else on this connection: close it (GOAWAY) now rather
            # than after IDLE_TIMEOUT, or it could go on doing just this.
            self.goaway("request timeout")
        self._transmit()

    def _release_body(self, stream: _Stream) -> None:
        self._body_held -= len(stream.body)
        stream.body = bytearray()

    def _handler_done(self, stream: _Stream, task: asyncio.Future[Response]) -> None:
        stream.task = None
        if self._lost or self.streams.get(stream.id) is not stream:
            return  # reset by the peer or the connection is gone
        self._respond(stream, finished_response(task))
        self._transmit()

    def _respond(self, stream: _Stream, response: Response) -> None:
        headers, body = frame_http2(
            response.status, response.headers, response.body, method=stream.method
        )
        self._answer(stream, headers, body)

    def _refuse(self, stream: _Stream, status: int, reason: str) -> None:
        """Answer a malformed or unwelcome request with an error status (one log line)."""
        peer = self.peer[0]
        refusal_log.info(
            "%s: refused HTTP/2 request: %d %s",
            peer,
            status,
            reason,
            extra={"peer": peer, "status": status, "transport": "h2"},
        )
        self._send_refusal(stream, Refusal(status, reason))

    def _send_refusal(self, stream: _Stream, refused: Refusal) -> None:
        headers, body = frame_http2(refused.status, refused.headers, refused.body)
        self._answer(stream, headers, body)

    def _answer(self, stream: _Stream, headers: list[tuple[str, str]], body: bytes) -> None:
        stream.responded = True
        stream.kind = _DONE
        if not self._send_headers(stream, headers, end=not body):
            return
        if not body:
            stream.local_ended = True
            self._after_local_end(stream)
            return
        self._queue(stream, body)
        self._end_stream(stream, finish=False)
        if stream.out and self.streams.get(stream.id) is stream:
            # The peer must take some of the response within write_timeout
            # (its stream window may stay shut): else the stream is reset.
            self._watch_response(stream)

    def _watch_response(self, stream: _Stream) -> None:
        if stream.deadline is not None:
            stream.deadline.cancel()
        stream.deadline = self._loop.call_later(
            self.server.write_timeout, self._response_stalled, stream
        )

    def _response_stalled(self, stream: _Stream) -> None:
        stream.deadline = None
        if self._lost or self.streams.get(stream.id) is not stream:
            return
        if not stream.out and not stream.end_pending:
            return
        log.info(
            "%s: HTTP/2 peer took nothing of a response within %.1fs (%d bytes left): reset",
            self.peer[0],
            self.server.write_timeout,
            stream.out_size,
        )
        self._reset(stream, ErrorCodes.CANCEL)
        self._transmit()

    def _send_headers(self, stream: _Stream, headers: list[tuple[str, str]], end: bool) -> bool:
        encoded = [
            (k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers
        ]
        try:
            self.conn.send_headers(stream.id, encoded, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            # Closed, or reset by the peer and already forgotten by h2 (a
            # rapid reset): nobody to answer, nothing to log.
            self._forget(stream)
            return False
        except h2.exceptions.ProtocolError as exc:
            log.error("%s: cannot send response headers: %s", self.peer[0], exc)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return False
        return True

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        data = event.data or b""
        size = event.flow_controlled_length or 0
        stream = self.streams.get(stream_id)
        if stream is None:
            self._ack(stream_id, size)
            return
        if stream.kind == _WEBSOCKET or stream.kind == _PENDING:
            if stream.read_paused or stream.inbox or stream.kind == _PENDING:
                # Not acknowledged: the peer's window for this stream shrinks.
                stream.inbox.append((data, size))
                return
            link = stream.link
            assert link is not None
            link.data_received(data)
            self._ack(stream_id, size)
            return
        self._ack(stream_id, size)
        if stream.kind == _REQUEST and not stream.responded:
            server = self.server
            if len(stream.body) + len(data) > server.max_body_size:
                self._release_body(stream)
                self._refuse(stream, 413, "request body too large")
                return
            if self._body_held + len(data) > BODY_BUFFER_FACTOR * server.max_body_size:
                refusal_log.info(
                    "%s: HTTP/2 request bodies over %d bytes on one connection: stream %d refused",
                    self.peer[0],
                    BODY_BUFFER_FACTOR * server.max_body_size,
                    stream_id,
                )
                self._reset(stream, ErrorCodes.REFUSED_STREAM)
                return
            stream.body += data
            self._body_held += len(data)

    def _ack(self, stream_id: int, size: int) -> None:
        if size > 0 and not self._lost:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # stream gone: nothing to reopen
                self.conn.acknowledge_received_data(size, stream_id)

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_ended = True
        if stream.kind == _PENDING:
            stream.eof_pending = True  # for the link, if the hook admits it
            return
        if stream.kind == _WEBSOCKET:
            if stream.inbox:
                stream.eof_pending = True
            else:
                assert stream.link is not None
                stream.link.eof_received()
            return
        if stream.kind == _REQUEST:
            self._dispatch(stream)
        if stream.local_ended:
            self._drop(stream)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        self._drop(stream)
        link = stream.link
        if link is not None and stream.kind == _WEBSOCKET:
            self._websocket_done(stream)
            link.connection_lost(
                ConnectionResetError(f"HTTP/2 stream reset by the peer ({event.error_code!r})")
            )

    def _resume_stream(self, stream: _Stream) -> None:
        stream.read_paused = False
        if stream.inbox or stream.eof_pending:
            # Not now: this may be called from inside a message callback.
            self._loop.call_soon(self._drain_inbox, stream)

    def _drain_inbox(self, stream: _Stream) -> None:
        link = stream.link
        if link is None or stream.kind != _WEBSOCKET or self._lost:
            return
        while stream.inbox and not stream.read_paused and stream.kind == _WEBSOCKET:
            data, size = stream.inbox.popleft()
            link.data_received(data)
            self._ack(stream.id, size)
        if not stream.inbox and stream.eof_pending and stream.kind == _WEBSOCKET:
            stream.eof_pending = False
            link.eof_received()
        self._transmit()

    # ----------------------------------------------------------------- output

    def _queue(self, stream: _Stream, data: bytes) -> None:
        if stream.local_ended or stream.end_pending or self._lost or self._dead:
            return
        if data:
            stream.out.append(memoryview(data))
            stream.out_size += len(data)
        self._flush_stream(stream)

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out or stream.end_pending:
                self._flush_stream(stream)

    def _flush_stream(self, stream: _Stream) -> None:
        conn = self.conn
        sent = 0
        progressed = False
        just_ended = False
        try:
            while stream.out and not self._write_paused and not self._lost:
                window = conn.local_flow_control_window(stream.id)
                if window <= 0:
                    break
                head = stream.out[0]
                n = min(window, len(head), conn.max_outbound_frame_size)
                if n == len(head):
                    stream.out.popleft()
                    chunk = head
                else:
                    chunk = head[:n]
                    stream.out[0] = head[n:]
                conn.send_data(stream.id, chunk.tobytes())
                stream.out_size -= n
                sent += n
                progressed = True
                if sent >= TRANSPORT_LOW:
                    # Hand it to the socket now so pause_writing can stop us.
                    self._transmit()
                    sent = 0
            if not stream.out and stream.end_pending and not stream.local_ended:
                stream.end_pending = False
                conn.end_stream(stream.id)
                stream.local_ended = just_ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            # The peer reset the stream under us (its RST is being processed).
            log.debug("HTTP/2 stream %d closed while sending: %s", stream.id, exc)
            self._drop(stream)
            self._lost_link(stream, exc)
            return
        if progressed and stream.deadline is not None and stream.kind == _DONE:
            self._watch_response(stream)  # it reads: a new write_timeout
        self._check_link_flow(stream)
        if not self._receiving:
            self._transmit()
        if just_ended:
            self._after_local_end(stream)

    def _check_link_flow(self, stream: _Stream) -> None:
        link = stream.link
        if link is None:
            return
        size = stream.out_size
        if not stream.write_paused and size > link.config.write_high:
            stream.write_paused = True
            link.pause_writing()
        elif stream.write_paused and size <= link.config.write_low:
            stream.write_paused = False
            link.resume_writing()

    def _transmit(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._lost:
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > TRANSPORT_HARD_LIMIT:
                log.warning("%s: HTTP/2 peer does not read: dropping the connection", self.peer[0])
                self._lost = True
                self.transport.abort()

    def _end_stream(self, stream: _Stream, finish: bool) -> None:
        """Send END_STREAM after what is queued (``finish``: the link is done then)."""
        if finish:
            stream.finish_link = True
        if stream.local_ended:
            self._after_local_end(stream)
            return
        stream.end_pending = True
        self._flush_stream(stream)

    def _after_local_end(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        if stream.kind == _WEBSOCKET:
            if not stream.finish_link:
                return  # a lingering close: keep reading until the peer ends
            self._websocket_done(stream)
            link = stream.link
            if link is not None:
                # The close handshake is over and our side has ended: the
                # WebSocket is closed now, whatever the peer does next.
                self._loop.call_soon(link.connection_lost, None)
            if not stream.remote_ended:
                timeout = link.config.close_timeout if link is not None else 10.0
                stream.linger = self._loop.call_later(timeout, self._linger_over, stream)
                if self._draining:
                    self._maybe_finish()
                return
        elif not stream.remote_ended:
            # We answered before the request ended (413, refusal): RFC 9113
            # §8.1 lets us cancel the rest with NO_ERROR.
            self._reset(stream, ErrorCodes.NO_ERROR)
            return
        self._drop(stream)

    def _linger_over(self, stream: _Stream) -> None:
        stream.linger = None
        if self.streams.get(stream.id) is stream:
            self._reset(stream, ErrorCodes.NO_ERROR)
            self._transmit()

    def _kill_stream(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            self._reset(stream, ErrorCodes.CANCEL)
            self._transmit()
        self._lost_link(stream, None)

    def _websocket_done(self, stream: _Stream) -> None:
        stream.kind = _DONE
        self._websockets -= 1
        self._recount_if_idle()

    def _recount_if_idle(self) -> None:
        """No WebSocket left on a live connection: it counts per IP again
        (over the limit or not: it was counted all along)."""
        if not self._websockets and not self._lost:
            self.server.connections.recount_ip_slot(self.shell)

    def _lost_link(self, stream: _Stream, exc: Exception | None) -> None:
        link = stream.link
        if link is not None and stream.kind == _WEBSOCKET:
            self._websocket_done(stream)
            self._loop.call_soon(link.connection_lost, exc)

    def _reset(self, stream: _Stream, code: ErrorCodes) -> None:
        if not self._lost:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed in h2
                self.conn.reset_stream(stream.id, code)
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        self._forget(stream)
        if not self.streams and not self._lost:
            self._maybe_finish()
            if not self._lost:
                self._arm_timer(IDLE_TIMEOUT)

    def _forget(self, stream: _Stream) -> None:
        if stream.linger is not None:
            stream.linger.cancel()
            stream.linger = None
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if stream.body:
            self._release_body(stream)
        if stream.kind == _PENDING:
            self._end_pending(stream)
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        stream.out.clear()
        stream.out_size = 0
        stream.inbox.clear()
        if stream.link is not None and stream.write_paused:
            stream.write_paused = False
            stream.link.resume_writing()


def _declared_length(headers: Headers) -> int:
    """A request's content-length, or -1 when it has none we can read."""
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 20 else -1
