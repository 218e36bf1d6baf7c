"""The hub as an ASGI 3 application: ``ws.asgi(app=None)``.

Under an ASGI server (uvicorn, Hypercorn, Daphne ...) the server owns the
socket, the HTTP version and the RFC 6455 framing; the application sees
messages.  :class:`AsgiApp` turns each ``"websocket"`` scope into a client of
the same hub that serves :class:`~wshub.HttpServer`: the same admission
(origin check, per-IP limit, session cookie and client ID), the same events
(``"open"``, ``"message"``, ``"/path"``, ``"close"``, ``"error"``) and the
same methods.  Other scopes go to the wrapped ``app`` (404 without one).

What the ASGI interface cannot express, per hub method:

``ping(id)``
    ASGI has no ping message; keep-alive pings are the ASGI server's job
    (uvicorn ``--ws-ping-interval``, Hypercorn ``websocket_ping_interval``).
    ``ping`` returns ``False`` and starts no pong timer; the hub's periodic
    ``ping_delay`` pings skip ASGI clients.
``set_no_delay(id)``, ``set_keep_alive(id)``
    ASGI gives no access to the socket: both return ``False`` and change
    nothing.
``bytes_read(id)``, ``bytes_written(id)``
    Count message payload bytes (UTF-8 for text), not bytes on the wire:
    frame headers, masking and compression are invisible under ASGI.
``per_message_deflate``
    Compression is negotiated by the ASGI server (uvicorn ``--ws-per-message-deflate``);
    the hub's option has no effect here and the hub never answers
    ``Sec-WebSocket-Extensions``.
``max_payload``
    The ASGI server buffers whole messages up to its own limit (uvicorn
    ``--ws-max-size``, Hypercorn ``websocket_max_message_size``); the hub then
    closes with 1009 a message above ``max_payload``.  Set the server's limit
    no higher than ``max_payload`` so an oversized message is refused before
    it is buffered.
``pause(id)``, ``resume(id)``
    Pausing stops delivering messages; the link keeps calling ``receive()``
    until 64 KiB (:data:`READ_AHEAD`) are read ahead, so that a disconnect
    still fires ``"close"``, then stops, and the ASGI server's own buffer
    fills and it stops reading the socket.  What was read ahead is delivered,
    in order, on resume.
``ready_state(id)``
    ``"open"``, then ``"readOnly"`` once our close was sent; ASGI does not
    report the peer's Close frame before the whole handshake is over, so
    ``"writeOnly"`` never appears.
``close(id, code, reason)``
    Sends ``websocket.close``; the ASGI server runs the closing handshake.
    If the server does not report the disconnect within ``close_timeout``,
    the application returns and the server drops the connection.
``"close"`` event
    ``code`` and ``was_clean`` are what the ASGI server reports in
    ``websocket.disconnect`` (after our own close: our code and reason); a
    close the hub decides (1009 over ``max_payload``, 1008 over
    ``write_limit``) is reported at once with its code, unclean.
    uvicorn reports a dropped connection as 1005 without a reason; the hub
    turns that into 1006, unclean.  Hypercorn 0.18 reports every close the
    client starts as 1006, whatever code the client sent.
``send(id)``/``drain(id)``
    Messages go through a per-connection queue to a sender task, so ``send``
    never blocks; ``False`` and ``drain`` follow the queued payload bytes
    against ``write_high``/``write_low``, and a queue above ``write_limit``
    closes the client with 1008.

Refusals (403 origin, 429 per-IP, ...) use the WebSocket Denial Response
extension (``websocket.http.response``) when the server offers it, so the
client sees the HTTP status; otherwise the handshake is closed, which ASGI
servers answer with HTTP 403.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import ConnectionClosedError, WebSocketProtocolError
from .logging import refusal_log
from .protocol.connection import Connection, ConnectionState, EndMode
from .protocol.frames import CloseCode
from .protocol.handshake import Headers, add_header
from .transport.link import (
    Admission,
    CloseInitiator,
    ClosingReporter,
    LinkConfig,
    LinkListener,
    ReadyState,
)
from .transport.upgrade import (
    PendingVerdict,
    Refusal,
    RequestHead,
    discard_upgrade,
    hook_timeout,
    judge_upgrade,
    settle_upgrade,
)

if TYPE_CHECKING:
    from .hub import WebSocket

__all__ = ["ASGIApp", "AsgiApp", "AsgiLink", "Receive", "Scope", "Send"]

log = logging.getLogger("wshub")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DENIAL_EXTENSION = "websocket.http.response"
# Close codes for a refused handshake when the server cannot send an HTTP
# status (the server answers 403 whatever the code; the code is for logs).
_REFUSAL_CLOSE_CODES = {429: CloseCode.TRY_AGAIN_LATER}
# While a client is held or paused, messages are read ahead up to this many
# payload bytes (plus one message), so that its disconnect is still noticed.
READ_AHEAD = 64 * 1024
_TEXT_TAG = b"t"
_BINARY_TAG = b"b"


def _request_from_scope(scope: Scope) -> RequestHead:
    """What the upgrade pipeline needs of an ASGI ``websocket`` scope."""
    headers: Headers = {}
    for raw_name, raw_value in scope.get("headers") or ():
        name = bytes(raw_name).decode("latin-1").lower()
        value = bytes(raw_value).decode("latin-1")
        if name == ":authority":
            name = "host"
        elif name.startswith(":"):
            continue
        add_header(headers, name, value)
    raw_path = scope.get("raw_path")
    if raw_path:
        target = bytes(raw_path).decode("latin-1")
    else:
        target = quote(str(scope.get("path") or "/"), safe="/:@!$&'()*+,;=-._~")
    query = scope.get("query_string") or b""
    if query:
        target += "?" + bytes(query).decode("latin-1")
    client = scope.get("client")
    peer = (str(client[0]), int(client[1])) if client else ("", 0)
    scheme = "wss" if scope.get("scheme") == "wss" else "ws"
    tls = None
    if scheme == "wss":
        # The TLS extension (when the server has it) tells the version.
        tls = (scope.get("extensions") or {}).get("tls")
    return RequestHead(
        method="GET",
        target=target,
        http_version=str(scope.get("http_version") or "1.1"),
        headers=headers,
        peer=peer,
        scheme=scheme,
        tls=tls,
    )


class AsgiLink(ClosingReporter):
    """One client's connection through an ASGI server (a :class:`~wshub.transport.link.Link`).

    Created by :class:`AsgiApp` after ``websocket.accept``; :meth:`run` is the
    connection's life: it reads with ``receive()`` and hands messages to the
    listener, while a sender task writes what the hub queued.

    The ASGI server frames the messages; the lifecycle (the closing
    handshake, its timeout, how the close is reported) is the same
    :class:`~wshub.protocol.connection.Connection` core that HTTP/1.1 and
    HTTP/2 drive, fed the Close the ASGI server decoded.
    """

    can_ping = False  # ASGI has no ping: the hub sends none, the ASGI server keeps alive
    awaiting_pong = False
    carrier = "asgi"

    def __init__(self, receive: Receive, send: Send, config: LinkConfig) -> None:
        self.listener: LinkListener | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        self.config = config
        self._receive = receive
        self._send = send
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._wake_sender = asyncio.Event()
        self._go = asyncio.Event()  # set while messages may be delivered
        self._go.set()
        self._held = False
        self._user_paused = False
        self.conn = Connection(limits=config)
        self._finished = False
        self.closing_reported = False  # listener.on_closing was called
        self._send_failed = False
        # What our Close said: some ASGI servers (Hypercorn) report the
        # peer's echo of it without its code.
        self._sent_code: int = CloseCode.NORMAL
        self._sent_reason = ""
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._done = asyncio.Event()  # the connection is over (on_close was called)
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: deque[tuple[str | bytes, int]] = deque()  # read ahead while held
        self._backlog_bytes = 0

    # ------------------------------------------------------------------ output

    @property
    def broadcast_key(self) -> Hashable | None:
        # The ASGI server frames (and maybe compresses) each message itself:
        # there is no frame to share between connections.
        return None

    def prepare(self, payload: bytes, text: bool) -> bytes:
        # Never called by the hub (broadcast_key is None); kept consistent
        # with send_prepared for any other caller.
        return (_TEXT_TAG if text else _BINARY_TAG) + payload

    def send_prepared(self, frame: bytes) -> bool:
        return self.send_message(frame[1:], frame[:1] == _TEXT_TAG)

    def queue_prepared(self, frame: bytes) -> None:
        self.send_prepared(frame)

    @property
    def _close_sent(self) -> bool:
        state = self.conn.state
        return state == ConnectionState.CLOSE_SENT or state == ConnectionState.CLOSED

    def send_message(self, payload: bytes, text: bool) -> bool:
        if self._close_sent or self._finished:
            raise ConnectionClosedError("the closing handshake has started")
        if text:
            message: Message = {"type": "websocket.send", "text": payload.decode("utf-8")}
        else:
            message = {"type": "websocket.send", "bytes": payload}
        size = len(payload)
        self.bytes_written += size
        return self._enqueue(message, size)

    @property
    def buffered_amount(self) -> int:
        return self._queued_bytes

    def _enqueue(self, message: Message, size: int) -> bool:
        if self._send_failed:
            return False
        self._queue.append(message)
        self._queued_bytes += size
        self._wake_sender.set()
        if self._queued_bytes > self.config.write_limit and not self._close_sent:
            log.warning(
                "closing an ASGI client whose send queue reached %d bytes (write_limit %d)",
                self._queued_bytes,
                self.config.write_limit,
            )
            self._send_close(
                CloseCode.POLICY_VIOLATION, "write buffer limit exceeded", CloseInitiator.SERVER
            )
            return False
        return self._queued_bytes <= self.config.write_high

    async def _sender(self) -> None:
        queue = self._queue
        while True:
            while not queue:
                if self._finished:
                    return
                self._wake_sender.clear()
                await self._wake_sender.wait()
            message = queue.popleft()
            try:
                await self._send(message)
            except Exception as exc:  # the server says the client is gone
                log.debug("ASGI send failed: %r", exc)
                self._send_failed = True
                queue.clear()
                self._queued_bytes = 0
                self._wake_drain_waiters()
                return
            if message["type"] == "websocket.close":
                queue.clear()
                self._queued_bytes = 0
            else:
                data = message.get("bytes")
                if data is None:
                    data = message.get("text", "")
                self._queued_bytes -= _payload_size(data)
            if self._queued_bytes <= self.config.write_low:
                self._wake_drain_waiters()

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def drain(self) -> None:
        if self._finished or self._send_failed or self._queued_bytes <= self.config.write_low:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def ping(self, payload: bytes, pong_timeout: float = 0.0) -> bool:
        """ASGI cannot send a ping: always False (the ASGI server does keep-alive)."""
        return False

    def close(self, code: int = 1000, reason: str = "") -> bool:
        if self._close_sent or self._finished:
            return False
        self._send_close(code, reason, CloseInitiator.APPLICATION)
        return True

    def _send_close(self, code: int, reason: str, initiator: CloseInitiator) -> None:
        # The core starts the closing handshake and its deadline; the ASGI
        # server makes the frame from this message.
        self.conn.send_close(code, reason, asyncio.get_running_loop().time())
        self._sent_code = code
        self._sent_reason = reason
        self._enqueue({"type": "websocket.close", "code": code, "reason": reason}, 0)
        self.report_closing(code, reason, initiator)
        self._follow_core()

    def _follow_core(self) -> None:
        """Keep the one timer at the core's deadline; end when it says abort."""
        conn = self.conn
        if conn.end == EndMode.ABORT:
            if not self._finished:
                log.info("close timeout: the ASGI server did not report the disconnect")
                self._finish()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn.deadline is not None and not self._finished:
            self._timer = asyncio.get_running_loop().call_at(conn.deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        if not self._finished:
            self.conn.on_deadline(asyncio.get_running_loop().time())
            self._follow_core()

    def abort(self) -> None:
        """Give the connection back to the ASGI server now (it drops it)."""
        if not self._finished:
            self._finish()

    # ------------------------------------------------------------------- input

    def hold(self) -> None:
        self._held = True
        self._go.clear()

    def release(self) -> None:
        self._held = False
        if not self._user_paused:
            self._go.set()

    def pause(self) -> None:
        self._user_paused = True
        self._go.clear()

    def resume(self) -> None:
        self._user_paused = False
        if not self._held:
            self._go.set()

    @property
    def is_paused(self) -> bool:
        return self._user_paused

    @property
    def is_open(self) -> bool:
        return not self._close_sent and not self._finished

    @property
    def ready_state(self) -> ReadyState:
        if self._finished:
            return "closed"
        return "readOnly" if self._close_sent else "open"

    def set_no_delay(self, no_delay: bool) -> bool:
        """ASGI gives no access to the socket: False, nothing changed."""
        return False

    def set_keep_alive(self, enable: bool, initial_delay: float) -> bool:
        """ASGI gives no access to the socket: False, nothing changed."""
        return False

    async def run(self) -> None:
        """Read until the client is gone; then flush and return."""
        sender = asyncio.ensure_future(self._sender())
        reader = asyncio.ensure_future(self._read_loop())
        done_wait = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({reader, done_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, done_wait):
                task.cancel()
            if not self._finished:  # cancelled from outside (server shutdown)
                self._finish()
            self._wake_sender.set()
            if not sender.done():
                # A close we queued still goes out; anything else is moot.
                try:
                    await asyncio.wait_for(sender, self.config.close_timeout)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    sender.cancel()

    async def _read_loop(self) -> None:
        receive = self._receive
        backlog = self._backlog
        pending: asyncio.Future[Message] | None = None
        try:
            while not self._finished:
                if self._go.is_set():
                    if backlog:
                        data, size = backlog.popleft()
                        self._backlog_bytes -= size
                        self._deliver(data, size)
                        continue
                    if pending is not None:
                        message = await pending
                        pending = None
                    else:
                        message = await receive()
                    self._on_event(message)
                    continue
                # Held or paused.  Keep reading ahead (up to READ_AHEAD bytes)
                # so that a disconnect is still seen, and "close" fires, while
                # we wait; past that, stop calling receive() and let the ASGI
                # server push back on the client.
                if self._backlog_bytes >= READ_AHEAD:
                    await self._go.wait()
                    continue
                if pending is None:
                    pending = asyncio.ensure_future(receive())
                go: asyncio.Future[Any] = asyncio.ensure_future(self._go.wait())
                waiting: set[asyncio.Future[Any]] = {pending, go}
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    go.cancel()
                if pending.done():
                    message = pending.result()
                    pending = None
                    received = self._data_of(message)
                    if received is None:
                        self._on_event(message)
                    else:
                        backlog.append(received)
                        self._backlog_bytes += received[1]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("ASGI receive failed: %r", exc)
            self._finish()
        finally:
            if pending is not None and not pending.done():
                pending.cancel()

    def _data_of(self, message: Message) -> tuple[str | bytes, int] | None:
        """The payload of a ``websocket.receive`` (counted in bytes_read), else None."""
        if message.get("type") != "websocket.receive":
            return None
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes")
        if data is None:
            data = b""
        size = _payload_size(data)
        self.bytes_read += size
        return data, size

    def _on_event(self, message: Message) -> None:
        received = self._data_of(message)
        if received is not None:
            self._deliver(*received)
        elif message.get("type") == "websocket.disconnect":
            code = message.get("code")
            if not isinstance(code, int) or (
                # uvicorn reports a dropped TCP connection as 1005 without a
                # "reason" key; a real Close frame always comes with one.
                code == CloseCode.NO_STATUS and "reason" not in message
            ):
                code = CloseCode.ABNORMAL
            reason = str(message.get("reason") or "")
            if code != CloseCode.ABNORMAL:
                # Both Close frames passed (the ASGI server answered the
                # peer's, or the peer answered ours).
                conn = self.conn
                if conn.state == ConnectionState.CLOSE_SENT:
                    # Report our code and reason, which the peer echoes (RFC
                    # 6455 §5.5.1) and some servers (Hypercorn) do not pass on.
                    code, reason = self._sent_code, self._sent_reason
                conn.receive_close(code, reason, asyncio.get_running_loop().time())
                conn.data_to_send()  # the reply: the ASGI server sent it already
            self._finish()

    def _deliver(self, data: str | bytes, size: int) -> None:
        listener = self.listener
        if listener is None or self._finished:
            return
        limit = self.config.max_payload
        if 0 < limit < size:
            # A peer can cause this on every connection: rate-limited like refusals.
            refusal_log.info(
                "message of %d bytes over max_payload %d: closing with 1009", size, limit
            )
            listener.on_error(WebSocketProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big"))
            if not self._close_sent:
                self._send_close(
                    CloseCode.MESSAGE_TOO_BIG, "message too big", CloseInitiator.SERVER
                )
            return
        if not listener.on_message(data):
            self.hold()

    def _finish(self) -> None:
        """The connection is over: report it as the core says."""
        if self._finished:
            return
        self._finished = True
        result = self.conn.connection_lost()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Whatever is still queued can no longer reach the client; what was
        # read ahead is dropped, as a socket's unread input is.
        self._backlog.clear()
        self._queue.clear()
        self._queued_bytes = 0
        self._go.set()
        self._wake_sender.set()
        self._wake_drain_waiters()
        self._done.set()
        # (A close the peer started, or the peer gone: the ASGI server
        # reports both only now.)
        self.report_closing(result.code, result.reason, CloseInitiator.PEER)
        listener = self.listener
        if listener is not None:
            self.listener = None  # the client record points back at us: no cycle
            listener.on_close(result.code, result.reason, result.was_clean)


def _payload_size(data: str | bytes) -> int:
    if isinstance(data, str):
        return len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    return len(data)


class AsgiApp:
    """The ASGI 3 application returned by :meth:`wshub.WebSocket.asgi`.

    ``"websocket"`` scopes become clients of ``hub``; ``"http"`` and
    ``"lifespan"`` scopes go to ``app`` when there is one.  Without ``app``,
    HTTP requests get 404 and lifespan events are acknowledged.
    """

    def __init__(
        self, hub: WebSocket, app: ASGIApp | None = None, *, handshake_timeout: float = 10.0
    ) -> None:
        if isinstance(handshake_timeout, bool) or not isinstance(handshake_timeout, (int, float)):
            raise TypeError("handshake_timeout must be a number")
        if not handshake_timeout >= 0:
            raise ValueError("handshake_timeout must be >= 0")
        self.hub = hub
        self.app = app
        #: The bound of an ``async`` handshake hook, in seconds (0: none).
        self.handshake_timeout = float(handshake_timeout)
        self._links: set[AsgiLink] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http" and self._is_scrape(scope):
            await self._scrape(scope, send)
        elif kind == "lifespan" and self.app is not None:
            await self.app(scope, receive, self._lifespan_send(send))
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"Not Found\n"})
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    def _is_scrape(self, scope: Scope) -> bool:
        metrics = self.hub.metrics
        return metrics is not None and scope.get("path") == metrics.path

    async def _scrape(self, scope: Scope, send: Send) -> None:
        """The hub's ``metrics_path``, answered before the wrapped app sees it."""
        metrics = self.hub.metrics
        assert metrics is not None
        response = metrics.respond(str(scope.get("method") or "GET"))
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if scope.get("method") != "HEAD":
            headers.append((b"content-length", str(len(response.body)).encode("ascii")))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                await self.hub.start()
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _lifespan_send(self, send: Send) -> Send:
        """The wrapped app's lifespan ``send``: the hub starts and stops with it.

        The backplane joins the cluster before the app reports its startup
        complete (so the first handshake already sees the cluster registry),
        and leaves it, closing our clients, before the app reports shutdown.
        """

        async def wrapped(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                await self.hub.start()
            elif kind == "lifespan.shutdown.complete":
                await self._shutdown()
            await send(message)

        return wrapped

    async def _shutdown(self) -> None:
        await self.hub.stop()
        await self._close_all(CloseCode.GOING_AWAY, "server shutting down")

    async def _close_all(self, code: int, reason: str) -> None:
        links = list(self._links)
        for link in links:
            link.close(code, reason)
        if links:
            waits = [asyncio.ensure_future(link._done.wait()) for link in links]
            _, pending = await asyncio.wait(waits, timeout=self.hub.close_timeout)
            for w in pending:
                w.cancel()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first.get("type") != "websocket.connect":
            return  # disconnected before the handshake: nothing to do
        try:
            head = _request_from_scope(scope)
        except Exception:
            log.exception("malformed ASGI websocket scope")
            await self._refuse(scope, send, Refusal(400, "malformed request"))
            return
        judged = judge_upgrade(self.hub, head, carrier="asgi")
        verdict = await self._settle(judged, head) if isinstance(judged, asyncio.Future) else judged
        if isinstance(verdict, Refusal):
            await self._refuse(scope, send, verdict)
            return
        admission = verdict
        peer = head.peer[0] or "?"
        # The subprotocol goes in its own field: the ASGI server writes
        # the Sec-WebSocket-Protocol header from it.
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in admission.response_headers
            if name.lower() != "sec-websocket-protocol"
        ]
        try:
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": admission.subprotocol,
                    "headers": headers,
                }
            )
        except Exception as exc:
            log.info("%s: the ASGI server could not accept the WebSocket: %r", peer, exc)
            admission.cancel()
            return
        link = AsgiLink(receive, send, admission.config)
        self._links.add(link)
        try:
            admission.open(link)
            await link.run()
        finally:
            self._links.discard(link)

    async def _settle(self, verdict: PendingVerdict, head: RequestHead) -> Admission | Refusal:
        """Wait for the hub's async handshake hook, at most ``handshake_timeout``."""
        timeout = self.handshake_timeout
        try:
            done, _ = await asyncio.wait({verdict}, timeout=timeout if timeout > 0 else None)
        except BaseException:  # cancelled: the ASGI server gave up on the connection
            discard_upgrade(verdict)
            raise
        if not done:
            discard_upgrade(verdict)
            return hook_timeout(head, "asgi", timeout, handler=self.hub)
        return settle_upgrade(verdict, head, "asgi", handler=self.hub)

    async def _refuse(self, scope: Scope, send: Send, refused: Refusal) -> None:
        extensions = scope.get("extensions") or {}
        if _DENIAL_EXTENSION in extensions:
            # The same answer as over HTTP/1.1 and HTTP/2, framed by the ASGI server.
            headers = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refused.headers
            ]
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refused.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": refused.body})
        else:
            code = _REFUSAL_CLOSE_CODES.get(refused.status, CloseCode.POLICY_VIOLATION)
            await send({"type": "websocket.close", "code": int(code), "reason": refused.reason})
