"""``wshub.client``: an asyncio client of the ``wshub.v1`` subprotocol.

::

    import wshub.client

    async with wshub.client.connect("ws://127.0.0.1:9001/") as client:
        await client.subscribe("news")
        await client.publish("news", "hello")
        async for topic, position, data in client:
            print(topic, position, data)

The client keeps the session cookie (so the server keeps its client ID),
the topics it follows and the last position it saw of each, and of its
direct messages.  When the connection drops it reconnects by itself
(exponential backoff with full jitter) and resumes: every message missed in
between comes once, in order, before new ones; when the server's history no
longer covers the gap, the iteration yields a :class:`Gap` in its place,
never a silent loss.  ``topic`` is None for a direct message (``ws.send``
on the server).  A topic the server cannot follow for the moment (the error
``unavailable``: its cluster's Redis is out of reach) when the client
resubscribes after a reconnect is asked again with backoff until it
succeeds, never dropped.

It runs on asyncio streams with wshub's own sans-I/O client protocol
(:mod:`wshub.protocol.client`): no dependency beyond the standard library.
It offers no compression.  The wire format is ``docs/protocol.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl as ssl_module
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .errors import WsHubError
from .hub.history import Position
from .protocol.client import (
    MAX_RESPONSE_HEAD,
    ClientProtocol,
    ClosedByPeer,
    HandshakeFailed,
    ProtocolViolation,
    check_upgrade_response,
    upgrade_request,
)

__all__ = [
    "Client",
    "Disconnected",
    "Gap",
    "HandshakeFailed",
    "RequestError",
    "Subscription",
    "connect",
]

log = logging.getLogger("wshub.client")

SUBPROTOCOL = "wshub.v1"

#: Statuses after which reconnecting cannot help (the server said no).
_FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 426})


class RequestError(WsHubError):
    """The server answered a request with an ``error`` (``code``: docs/protocol.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Disconnected(WsHubError, ConnectionError):
    """The connection dropped before the server answered (the request may or may not have run)."""


@dataclass(frozen=True)
class Gap:
    """Messages of ``topic`` (None: direct messages) that can no longer be delivered.

    ``reason`` is ``"truncated"`` (``first`` .. ``last`` were dropped by the
    server's history bounds; what follows is kept) or ``"reset"`` (the
    history the client knew is gone: what it missed is unknown).
    """

    topic: str | None
    reason: str
    first: int | None
    last: int | None
    position: Position | None


@dataclass(frozen=True)
class Subscription:
    """The answer to :meth:`Client.subscribe`."""

    topic: str
    #: The topic's latest position on the server (None: no history).
    position: Position | None
    #: True when every message after ``since`` is being replayed.
    recovered: bool


Item = tuple[str | None, Position | None, "str | bytes | Gap"]


def _position(value: Any) -> Position | None:
    if isinstance(value, dict) and isinstance(value.get("epoch"), str):
        seq = value.get("seq")
        if type(seq) is int:
            return Position(value["epoch"], seq)
    return None


class Client:
    """A ``wshub.v1`` connection that reconnects and resumes by itself."""

    def __init__(
        self,
        url: str,
        *,
        reconnect: bool = True,
        min_delay: float = 0.1,
        max_delay: float = 10.0,
        open_timeout: float = 10.0,
        max_size: int = 64 * 1024 * 1024,
        headers: tuple[tuple[str, str], ...] = (),
        ssl: ssl_module.SSLContext | None = None,
        queue_size: int = 10_000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._netloc = parts.netloc.rpartition("@")[2]
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl if ssl is not None else (True if parts.scheme == "wss" else None)
        self.reconnect = reconnect
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.open_timeout = open_timeout
        self.max_size = max_size
        self._headers = headers
        #: The session cookie (``name=value``) the server set, sent back on reconnects.
        self.cookie: str | None = None
        #: This client's ID on the server (from ``welcome``).
        self.client_id: str | None = None
        #: Topic → the last position seen (where a resume starts).
        self.positions: dict[str, Position] = {}
        #: The last position of a direct message seen.
        self.direct_position: Position | None = None
        #: How many times the connection was established (1 = never dropped).
        self.connections = 0
        self._wanted: dict[str, None] = {}  # the topics to follow, in order
        self._items: asyncio.Queue[Item | BaseException] = asyncio.Queue(queue_size)
        self._writer: asyncio.StreamWriter | None = None
        self._protocol: ClientProtocol | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscribing: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._resuming: set[str] = set()
        # Topics whose first subscribe asks for the last N messages.
        self._history_asked: dict[str, int] = {}
        self._subscribe_ids: dict[int, str] = {}
        # Topics refused "unavailable" on a resubscribe: attempts so far, and
        # the timer of the next one (cancelled when the connection ends).
        self._retries: dict[str, int] = {}
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}
        self._next_id = 0
        self._ready = asyncio.Event()
        self._welcomed: asyncio.Future[None] | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the context

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (the first attempt's error is raised here), then keep connected."""
        reader, writer = await self._open()
        self._task = asyncio.create_task(self._run(reader, writer))
        self._welcomed = asyncio.get_running_loop().create_future()
        welcomed = self._welcomed
        done, _ = await asyncio.wait(
            [welcomed, self._task], timeout=self.open_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if welcomed not in done:
            await self.close()
            raise HandshakeFailed("no welcome from the server")

    async def close(self) -> None:
        """Close the connection (1000) and stop reconnecting."""
        self._closing = True
        writer, protocol = self._writer, self._protocol
        if writer is not None and protocol is not None and not protocol.close_sent:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(protocol.send_close(1000))
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if writer is not None:
            writer.close()
        self._fail_pending(Disconnected("client closed"))
        with contextlib.suppress(asyncio.QueueFull):
            self._items.put_nowait(StopAsyncIteration())

    def abort(self) -> None:
        """Drop the connection without a Close (as a network failure would):
        the client reconnects and resumes.  For tests and demonstrations."""
        writer = self._writer
        if writer is not None:
            writer.transport.abort()

    # ---------------------------------------------------------------- requests

    async def subscribe(
        self, topic: str, since: Position | None = None, history: int = 0
    ) -> Subscription:
        """Follow ``topic`` (from now, or resuming after ``since``); followed
        again after every reconnect, from the last position seen.
        ``history``: without ``since``, first the last ``history`` messages
        the server keeps (at most 1,000)."""
        if since is not None:
            self.positions[topic] = since
        elif history:
            self._history_asked[topic] = history
        self._wanted[topic] = None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._subscribing.setdefault(topic, []).append(future)
        if self._ready.is_set():
            self._send_subscribe(topic)
        elif self._task is None or self._task.done():
            self._subscribing.pop(topic, None)
            raise Disconnected("not connected (the client has ended)")
        answer = await future
        return Subscription(topic, _position(answer.get("position")), bool(answer.get("recovered")))

    async def unsubscribe(self, topic: str) -> None:
        """Stop following ``topic``."""
        self._wanted.pop(topic, None)
        self.positions.pop(topic, None)
        await self._request({"type": "unsubscribe", "topic": topic})

    async def publish(self, topic: str, data: str | bytes) -> Position | None:
        """Publish ``data`` to ``topic``; its position (None without history).

        Waits for a connection if there is none; raises :class:`Disconnected`
        if the connection drops before the server acknowledged it (it may
        then have been published or not), :class:`RequestError` if refused.
        """
        message: dict[str, Any] = {"type": "publish", "topic": topic}
        if isinstance(data, str):
            message["data"] = data
        else:
            message["data"] = base64.b64encode(bytes(data)).decode("ascii")
            message["binary"] = True
        answer = await self._request(message)
        return _position(answer.get("position"))

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._wait_ready()
        self._next_id += 1
        request_id = message["id"] = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send(message)
            return await future
        finally:
            self._pending.pop(request_id, None)

    # --------------------------------------------------------------- iteration

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        item = await self._items.get()
        if isinstance(item, BaseException):
            self._items.put_nowait(item)  # every later call ends the same way
            if isinstance(item, StopAsyncIteration):
                raise StopAsyncIteration
            raise item
        return item

    # -------------------------------------------------------------- the wire

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        headers = list(self._headers)
        if self.cookie:
            headers.append(("Cookie", self.cookie))
        request = upgrade_request(
            self._netloc, self._target, subprotocols=(SUBPROTOCOL,), headers=tuple(headers)
        )
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=MAX_RESPONSE_HEAD),
            self.open_timeout,
        )
        try:
            writer.write(request.data)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.open_timeout)
            except asyncio.LimitOverrunError:
                raise HandshakeFailed("response head too long") from None
            except asyncio.IncompleteReadError:
                raise HandshakeFailed("connection closed during the handshake") from None
            fields = check_upgrade_response(request, head[:-4])
            if fields.get("sec-websocket-protocol") != [SUBPROTOCOL]:
                raise HandshakeFailed("the server does not speak wshub.v1")
            for value in fields.get("set-cookie", []):
                pair = value.split(";", 1)[0].strip()
                if "=" in pair:
                    self.cookie = pair
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempt = 0
        while True:
            error: BaseException | None = None
            try:
                await self._serve(reader, writer)
                attempt = 0
            except (OSError, asyncio.IncompleteReadError, ProtocolViolation) as exc:
                error = exc
            finally:
                self._ready.clear()
                self._writer = self._protocol = None
                self._subscribe_ids.clear()
                self._cancel_retries()  # the next connection resubscribes them all
                writer.close()
                self._fail_pending(Disconnected("connection lost"))
            if self._closing or not self.reconnect:
                await self._finish(StopAsyncIteration() if error is None else error)
                return
            while True:
                attempt += 1
                cap = min(self.max_delay, self.min_delay * 2 ** min(attempt, 30))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
                if self._closing:
                    await self._finish(StopAsyncIteration())
                    return
                try:
                    reader, writer = await self._open()
                    break
                except HandshakeFailed as exc:
                    if exc.status in _FINAL_STATUSES:
                        await self._finish(exc)
                        return
                    log.info("wshub.client: reconnect failed: %s", exc)
                except (OSError, asyncio.TimeoutError) as exc:
                    log.info("wshub.client: reconnect failed: %s", exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: hello, resubscribe, then read until it ends."""
        protocol = ClientProtocol(self.max_size)
        self._writer, self._protocol = writer, protocol
        self.connections += 1
        hello: dict[str, Any] = {"type": "hello", "since": None}
        if self.direct_position is not None:
            hello["since"] = dict(self.direct_position._asdict())
        self._send(hello)
        for topic in self._wanted:  # all written in this one step: no await between
            self._send_subscribe(topic)
        self._ready.set()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    events = protocol.receive_data(data)
                except ProtocolViolation as exc:
                    writer.write(protocol.send_close(exc.code, str(exc)[:100]))
                    raise
                out = protocol.data_to_send()
                if out:
                    writer.write(out)
                for event in events:
                    if isinstance(event, ClosedByPeer):
                        await asyncio.wait_for(writer.drain(), 2.0)
                        if event.code not in (1000, 1001, 1012, 1013) and not self._closing:
                            log.info("wshub.client: closed by the server: %s", event)
                        return
                    if isinstance(event, str):
                        await self._dispatch(event)
        finally:
            self._ready.clear()

    def _send(self, message: dict[str, Any]) -> None:
        writer, protocol = self._writer, self._protocol
        if writer is None or protocol is None:
            raise Disconnected("not connected")
        writer.write(protocol.send_text(json.dumps(message, separators=(",", ":"))))

    def _send_subscribe(self, topic: str) -> None:
        since = self.positions.get(topic)
        self._next_id += 1
        self._subscribe_ids[self._next_id] = topic
        message: dict[str, Any] = {"type": "subscribe", "topic": topic, "id": self._next_id}
        if since is not None:
            message["since"] = {"epoch": since.epoch, "seq": since.seq}
            self._resuming.add(topic)
        else:
            if topic in self._history_asked:  # the last N first (see _subscribed)
                message["history"] = self._history_asked[topic]
            self._resuming.discard(topic)
        self._send(message)

    async def _wait_ready(self) -> None:
        """Until connected; Disconnected if the client has ended instead."""
        if self._ready.is_set():
            return
        task = self._task
        if task is None or task.done():
            raise Disconnected("not connected (the client has ended)")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            raise Disconnected("not connected (the client has ended)")

    def _cancel_retries(self) -> None:
        for timer in self._retry_timers.values():
            timer.cancel()
        self._retry_timers.clear()

    def _retry_subscribe(self, topic: str, error: RequestError) -> None:
        """Ask for ``topic`` again later (full jitter, like the reconnects)."""
        attempt = self._retries[topic] = self._retries.get(topic, 0) + 1
        cap = min(self.max_delay, self.min_delay * 2 ** min(attempt, 30))
        delay = random.uniform(0, cap)
        log.info(
            "wshub.client: subscription to %r unavailable (%s); retry %d in %.2fs",
            topic,
            error,
            attempt,
            delay,
        )
        old = self._retry_timers.pop(topic, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._retry_timers[topic] = loop.call_later(delay, self._retry_now, topic)

    def _retry_now(self, topic: str) -> None:
        self._retry_timers.pop(topic, None)
        if topic in self._wanted and self._ready.is_set() and not self._closing:
            with contextlib.suppress(Disconnected, OSError, RuntimeError):
                self._send_subscribe(topic)

    async def _finish(self, item: BaseException) -> None:
        """The client ends: the iteration ends with ``item``, waiting requests fail."""
        self._fail_pending(Disconnected("the client has ended"))
        self._cancel_retries()
        for futures in self._subscribing.values():
            for future in futures:
                if not future.done():
                    future.set_exception(Disconnected("the client has ended"))
        self._subscribing.clear()
        await self._items.put(item)

    def _fail_pending(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    # ---------------------------------------------------------- what arrives

    async def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("wshub.client: not a wshub.v1 message: %.80r", text)
            return
        if kind == "message" or kind == "direct":
            await self._deliver(message, message.get("topic") if kind == "message" else None)
        elif kind == "subscribed":
            self._subscribed(message)
        elif kind == "gap":
            topic = message.get("topic")
            position = _position(message.get("position"))
            last = message.get("to")
            if message.get("reason") == "truncated" and position is not None and type(last) is int:
                # The kept messages after the hole follow: resume from before them.
                self._moved(topic, Position(position.epoch, last))
            elif position is None and topic is not None:
                self.positions.pop(topic, None)  # nothing kept there: start afresh
            else:
                self._moved(topic, position)  # a reset: nothing is replayed
            gap = Gap(
                topic, str(message.get("reason")), message.get("from"), message.get("to"), position
            )
            await self._items.put((topic, position, gap))
        elif kind == "welcome":
            self.client_id = message.get("client_id")
            if self.direct_position is None:
                # A fresh session: the direct messages that follow come after it.
                self.direct_position = _position(message.get("position"))
            if self._welcomed is not None and not self._welcomed.done():
                self._welcomed.set_result(None)
        elif kind in ("published", "unsubscribed", "error"):
            request_id = message.get("id")
            topic = self._subscribe_ids.pop(request_id, None) if type(request_id) is int else None
            if topic is not None:
                self._subscribe_refused(topic, message)
                return
            future = self._pending.get(request_id) if type(request_id) is int else None
            if future is None or future.done():
                if kind == "error":
                    log.warning("wshub.client: server error: %s", message)
                return
            if kind == "error":
                future.set_exception(
                    RequestError(str(message.get("code")), str(message.get("message")))
                )
            else:
                future.set_result(message)

    def _subscribed(self, message: dict[str, Any]) -> None:
        topic = message.get("topic")
        if not isinstance(topic, str):
            return
        request_id = message.get("id")
        if type(request_id) is int:
            self._subscribe_ids.pop(request_id, None)
        self._retries.pop(topic, None)
        asked = self._history_asked.pop(topic, 0)
        position = _position(message.get("position"))
        if asked and position is not None and topic not in self._resuming:
            # The replay of the last ``asked`` messages follows: from before them.
            self.positions[topic] = Position(position.epoch, max(0, position.seq - asked))
        elif topic not in self._resuming and position is not None:
            # A fresh subscription: what comes next is after this position.
            self.positions[topic] = position
        self._resuming.discard(topic)
        for future in self._subscribing.pop(topic, []):
            if not future.done():
                future.set_result(message)

    def _subscribe_refused(self, topic: str, message: dict[str, Any]) -> None:
        if message.get("code") == "already_subscribed":
            # Followed already (a second subscribe() of one topic): not an error.
            for future in self._subscribing.pop(topic, []):
                if not future.done():
                    future.set_result({"topic": topic, "position": None, "recovered": False})
            return
        error = RequestError(str(message.get("code")), str(message.get("message")))
        futures = self._subscribing.pop(topic, [])
        if error.code == "unavailable" and not futures and topic in self._wanted:
            # A resubscribe (after a reconnect, or a retry): kept, asked again.
            self._retry_subscribe(topic, error)
            return
        self._wanted.pop(topic, None)
        self._resuming.discard(topic)
        if not futures:
            log.warning("wshub.client: subscription to %r refused: %s", topic, error)
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _moved(self, topic: str | None, position: Position | None) -> None:
        if position is None:
            return
        if topic is None:
            self.direct_position = position
        else:
            self.positions[topic] = position

    async def _deliver(self, message: dict[str, Any], topic: str | None) -> None:
        data: str | bytes = message.get("data", "")
        if message.get("binary") is True and isinstance(data, str):
            data = base64.b64decode(data)
        position = None
        epoch, seq = message.get("epoch"), message.get("seq")
        if isinstance(epoch, str) and type(seq) is int:
            position = Position(epoch, seq)
            last = self.direct_position if topic is None else self.positions.get(topic)
            if last is not None and last.epoch == epoch and seq <= last.seq:
                return  # seen already (a replay overlapping what came live)
            self._moved(topic, position)
        await self._items.put((topic, position, data))


def connect(url: str, **options: Any) -> Client:
    """A :class:`Client` for ``url``; use it as ``async with connect(url) as client``."""
    return Client(url, **options)
