"""``WebSocket``: clients by ID, events, send/broadcast, socket methods.

The API of the Node library ``@jadsonlucena/websocket``, in Python.

The hub never touches a socket or an HTTP version: it judges upgrades
(:meth:`WebSocket.admit`), then talks to each client through a
:class:`~wshub.transport.link.Link`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import SplitResult, urlsplit

from .backplane import Backplane, make_backplane
from .encodings import Encoding, check_encoding, decode_text, encode_str
from .errors import ClientNotFound, ConnectionClosedError, HandshakeError
from .policy import (
    ClientIds,
    OriginPolicy,
    PerIpCounter,
    SessionSigner,
    TrustedProxies,
    client_ip,
    ip_key,
    parse_cookie,
    valid_host,
)
from .protocol.connection import MessageCodec
from .protocol.deflate import DeflateOptions, negotiate_extensions
from .protocol.frames import CloseCode, is_valid_close_code
from .transport.link import Link, LinkConfig, UpgradeRequest

if TYPE_CHECKING:
    from .asgi import ASGIApp, AsgiApp

__all__ = ["CloseEvent", "WebSocket"]

log = logging.getLogger("wshub")

Callback = Callable[..., Any]
F = TypeVar("F", bound=Callback)

_RESERVED_EVENTS = ("open", "close", "error", "message")


class CloseEvent:
    """How a client's connection ended (the ``"close"`` event's second argument)."""

    __slots__ = ("code", "reason", "was_clean")

    def __init__(self, code: int, reason: str, was_clean: bool) -> None:
        self.code = code
        self.reason = reason
        self.was_clean = was_clean

    @property
    def message(self) -> str:
        """Alias of :attr:`reason`, as ``@jadsonlucena/websocket`` named it."""
        return self.reason

    def __repr__(self) -> str:
        return f"CloseEvent(code={self.code}, reason={self.reason!r}, was_clean={self.was_clean})"


def split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of a request target: they come from the target alone.

    Origin-form ``/path?query`` (what clients send) is read without
    urlsplit; absolute-form ``ws://host/path?query`` through it.  A fragment
    is dropped, and so are tabs and line breaks (as urlsplit does).  Raises
    ValueError for anything else (``*``, a bare word ...).
    """
    if "\t" in target or "\r" in target or "\n" in target:
        target = target.replace("\t", "").replace("\r", "").replace("\n", "")
    if target.startswith("/"):
        path, _, query = target.partition("#")[0].partition("?")
        return path, query
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme and parts.netloc:
            return parts.path or "/", parts.query
    raise ValueError("not an origin-form or absolute-form request target")


class _Client:
    """The hub's record of one connected client; the link's listener."""

    __slots__ = (
        "encoding",
        "event",
        "hub",
        "id",
        "ip_key",
        "link",
        "opening",
        "url_text",
    )

    def __init__(
        self, hub: WebSocket, client_id: str, link: Link, url_text: str, path: str, key: str
    ) -> None:
        self.hub = hub
        self.id = client_id
        self.link = link
        self.url_text = url_text
        self.ip_key = key
        self.event = "message" if path in ("", "/") else path
        self.encoding: str = hub._encoding
        self.opening = True

    @property
    def url(self) -> SplitResult:
        return urlsplit(self.url_text)

    # LinkListener
    def on_message(self, data: str | bytes) -> bool:
        return self.hub._deliver(self, data)

    def on_error(self, exc: Exception) -> None:
        self.hub._emit_error(self.id, exc)

    def on_close(self, code: int, reason: str, was_clean: bool) -> None:
        self.hub._client_closed(self, CloseEvent(code, reason, was_clean))


class _Admission:
    """A reserved slot (ID, per-IP count) waiting for its link."""

    __slots__ = (
        "_done",
        "client_id",
        "codec",
        "config",
        "hub",
        "ip_key",
        "path",
        "response_headers",
        "url_text",
    )

    def __init__(
        self,
        hub: WebSocket,
        client_id: str,
        key: str,
        url_text: str,
        path: str,
        headers: list[tuple[str, str]],
        codec: MessageCodec | None,
    ) -> None:
        self.hub = hub
        self.client_id = client_id
        self.ip_key = key
        self.url_text = url_text
        self.path = path
        self.response_headers = headers
        self.codec = codec
        self.config = hub._link_config
        self._done = False

    def open(self, link: Link) -> None:
        if self._done:
            raise RuntimeError("admission already used")
        self._done = True
        self.hub._open_client(self, link)

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.hub._reserved.discard(self.client_id)
            self.hub._per_ip.release(self.ip_key)


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    return float(value)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


class WebSocket:
    """A WebSocket hub attached to an :class:`~wshub.HttpServer`.

    See ``spec/API.md`` (and the README) for every option, event and method.
    Durations are in seconds.
    """

    def __init__(
        self,
        server: Any = None,
        *,
        allow_origin: str | list[str] | None = None,
        encoding: Encoding = "utf8",
        limit_by_ip: int = 256,
        max_payload: int = 131072 * 20,
        ping_delay: float = 180.0,
        pong_timeout: float = 5.0,
        session_expires: float = 43200.0,
        per_message_deflate: bool | DeflateOptions = True,
        secret: bytes | str | None = None,
        trusted_proxies: Iterable[str] = (),
        cookie_name: str = "wshub",
        close_timeout: float = 10.0,
        write_high: int = 64 * 1024,
        write_low: int = 16 * 1024,
        write_limit: int = 1024 * 1024,
        backplane: str | Backplane | None = None,
        cluster_limit_by_ip: bool = False,
    ) -> None:
        self._handlers: dict[str, list[Callback]] = {}
        self._clients: dict[str, _Client] = {}
        self._reserved: set[str] = set()
        self._per_ip = PerIpCounter()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_seq = 0
        self._all_closed: asyncio.Event | None = None
        self._link_config = LinkConfig()
        self._signer = SessionSigner(secret)
        self._ids = ClientIds()
        self._origin = OriginPolicy(allow_origin)
        self._encoding: str = check_encoding(encoding)
        self._trusted = TrustedProxies(trusted_proxies)
        if not isinstance(cookie_name, str) or not cookie_name or not cookie_name.isidentifier():
            raise ValueError("cookie_name must be a simple token")
        self._cookie_name = cookie_name
        self.limit_by_ip = limit_by_ip
        self.max_payload = max_payload
        self.ping_delay = ping_delay
        self.pong_timeout = pong_timeout
        self.session_expires = session_expires
        self.per_message_deflate = per_message_deflate
        self.close_timeout = close_timeout
        self._set_write_limits(write_high, write_low, write_limit)
        self._backplane: Backplane = make_backplane(backplane)
        self._backplane.bind(self)
        self._cluster_limit_by_ip = bool(cluster_limit_by_ip)
        self._server = server
        if server is not None:
            server.attach(self)
            if not self._backplane.is_local:
                server.add_shutdown_hook(self._backplane_stop)

    # ================================================================ options

    @property
    def allow_origin(self) -> str | list[str] | None:
        return self._origin.value

    @allow_origin.setter
    def allow_origin(self, value: str | list[str] | None) -> None:
        self._origin = OriginPolicy(value)

    @property
    def encoding(self) -> str:
        return self._encoding

    @encoding.setter
    def encoding(self, value: Encoding) -> None:
        self._encoding = check_encoding(value)

    @property
    def limit_by_ip(self) -> int:
        return self._limit_by_ip

    @limit_by_ip.setter
    def limit_by_ip(self, value: int) -> None:
        self._limit_by_ip = _check_int("limit_by_ip", value)

    @property
    def max_payload(self) -> int:
        return self._link_config.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self._link_config.max_payload = _check_int("max_payload", value)

    @property
    def ping_delay(self) -> float:
        return self._ping_delay

    @ping_delay.setter
    def ping_delay(self, value: float) -> None:
        self._ping_delay = _check_number("ping_delay", value)
        self._restart_ping_timer()

    @property
    def pong_timeout(self) -> float:
        return self._pong_timeout

    @pong_timeout.setter
    def pong_timeout(self, value: float) -> None:
        self._pong_timeout = _check_number("pong_timeout", value)

    @property
    def session_expires(self) -> float:
        return self._session_expires

    @session_expires.setter
    def session_expires(self, value: float) -> None:
        self._session_expires = _check_number("session_expires", value)
        # What follows the value in every Set-Cookie, made once.
        self._cookie_attrs = (
            f"; Max-Age={int(self._session_expires)}; Path=/; HttpOnly; SameSite=Lax"
        )

    @property
    def per_message_deflate(self) -> bool | DeflateOptions:
        return self._deflate

    @per_message_deflate.setter
    def per_message_deflate(self, value: bool | DeflateOptions) -> None:
        if not isinstance(value, (bool, DeflateOptions)):
            raise TypeError("per_message_deflate must be a bool or DeflateOptions")
        self._deflate = value

    @property
    def secret(self) -> None:
        """Write-only: the key that signs session cookies."""
        return None

    @secret.setter
    def secret(self, value: bytes | str | None) -> None:
        self._signer = SessionSigner(value)

    @property
    def trusted_proxies(self) -> list[str]:
        return list(self._trusted.value)

    @trusted_proxies.setter
    def trusted_proxies(self, value: Iterable[str]) -> None:
        self._trusted = TrustedProxies(value)

    @property
    def close_timeout(self) -> float:
        return self._link_config.close_timeout

    @close_timeout.setter
    def close_timeout(self, value: float) -> None:
        v = _check_number("close_timeout", value)
        if v <= 0:
            raise ValueError("close_timeout must be > 0")
        self._link_config.close_timeout = v

    def _set_write_limits(self, high: int, low: int, limit: int) -> None:
        for name, v in (("write_high", high), ("write_low", low), ("write_limit", limit)):
            _check_int(name, v)
        if not 0 <= low <= high <= limit:
            raise ValueError("need 0 <= write_low <= write_high <= write_limit")
        cfg = self._link_config
        cfg.write_high, cfg.write_low, cfg.write_limit = high, low, limit

    @property
    def clients(self) -> list[str]:
        """IDs of the clients connected to this process."""
        return list(self._clients)

    # ================================================================= events

    @overload
    def on(self, name: str) -> Callable[[F], F]: ...

    @overload
    def on(self, name: str, callback: F) -> F: ...

    def on(self, name: str, callback: F | None = None) -> F | Callable[[F], F]:
        """Register ``callback`` for event ``name`` (or use as ``@ws.on(name)``).

        Names: ``"open"``, ``"message"``, ``"close"``, ``"error"``, or a URL
        path such as ``"/chat"`` for messages from clients connected there.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("event name must be a non-empty str")
        if name not in _RESERVED_EVENTS and not name.startswith("/"):
            raise ValueError(f"unknown event {name!r}: use open, message, close, error or a /path")
        if name == "/":
            name = "message"

        def register(cb: F) -> F:
            if not callable(cb):
                raise TypeError("callback must be callable")
            self._handlers.setdefault(name, []).append(cb)
            return cb

        if callback is None:
            return register
        return register(callback)

    def off(self, name: str, callback: Callback) -> None:
        """Remove one registration of ``callback`` for ``name``."""
        if name == "/":
            name = "message"
        handlers = self._handlers.get(name)
        if not handlers or callback not in handlers:
            raise ValueError(f"{callback!r} is not registered for {name!r}")
        handlers.remove(callback)
        if not handlers:
            del self._handlers[name]

    def _run_handlers(
        self,
        client: _Client | None,
        name: str,
        handlers: list[Callback],
        args: tuple[Any, ...],
        done: Callable[[], None] | None,
    ) -> bool:
        """Call ``handlers`` in order; True if all finished synchronously.

        An awaitable result makes the rest run in a task; ``done`` is called
        when that task ends (that is how a client's next message waits).
        """
        for i, cb in enumerate(handlers):
            try:
                result = cb(*args)
            except Exception as exc:
                self._callback_failed(client, name, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(
                    self._finish_handlers(client, name, result, handlers[i + 1 :], args)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                if done is not None:
                    task.add_done_callback(lambda _t: done())
                return False
        return True

    async def _finish_handlers(
        self,
        client: _Client | None,
        name: str,
        first: Awaitable[Any],
        rest: list[Callback],
        args: tuple[Any, ...],
    ) -> None:
        try:
            await first
        except Exception as exc:
            self._callback_failed(client, name, exc)
        for cb in rest:
            try:
                result = cb(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._callback_failed(client, name, exc)

    def _callback_failed(self, client: _Client | None, name: str, exc: Exception) -> None:
        log.error("exception in the %r callback", name, exc_info=exc)
        if name != "error" and client is not None:
            self._emit_error(client.id, exc)

    def _emit_error(self, client_id: str, exc: Exception) -> None:
        handlers = self._handlers.get("error")
        if handlers:
            client = self._clients.get(client_id)
            self._run_handlers(client, "error", list(handlers), (client_id, exc), None)

    # ============================================================== admission

    def admit(self, request: UpgradeRequest) -> _Admission:
        """Judge a well-formed upgrade (transport → hub); raise HandshakeError to refuse."""
        headers = request.headers
        tls = request.scheme == "wss"
        # The URL's path and query come from the target, the host from Host
        # (":authority"), which must be a host and nothing more: a Host of
        # "x/admin?" must not turn "/public" into "/admin".
        host = headers.get("host", "")
        if not valid_host(host):
            raise HandshakeError(400, "malformed Host header")
        try:
            path, query = split_target(request.target)
        except ValueError:
            raise HandshakeError(400, "malformed request target") from None
        if not self._origin.allows(request.info.origin, headers.get("host"), tls):
            raise HandshakeError(403, "origin not allowed")
        peer_ip = request.peer[0]
        key = ip_key(client_ip(peer_ip, headers, self._trusted))
        if self._cluster_ip_full(key) or not self._per_ip.try_acquire(key, self._limit_by_ip):
            raise HandshakeError(429, "too many connections from this address")
        try:
            url_text = f"{request.scheme}://{host}{path}"
            if query:
                url_text += "?" + query
            response_headers: list[tuple[str, str]] = []
            codec: MessageCodec | None = None
            if request.info.extensions and self._deflate is not False:
                accepted = negotiate_extensions(request.info.extensions, self._deflate)
                if accepted is not None:
                    response_headers.append(("Sec-WebSocket-Extensions", accepted[0]))
                    codec = accepted[1]
            client_id = self._pick_id(headers.get("cookie"))
            self._reserved.add(client_id)
            if self._session_expires > 0:
                expiry = int(time.time() + self._session_expires)
                cookie = (
                    f"{self._cookie_name}={self._signer.sign(client_id, expiry)}"
                    f"{self._cookie_attrs}"
                )
                if tls:
                    cookie += "; Secure"
                response_headers.append(("Set-Cookie", cookie))
        except Exception:
            self._per_ip.release(key)
            raise
        return _Admission(self, client_id, key, url_text, path, response_headers, codec)

    def connection_opened(self, peer_ip: str) -> str | None:
        """Count a TCP connection of the attached server (transport → hub).

        Every connection counts under ``limit_by_ip`` from the moment it is
        accepted, plain HTTP included; a trusted proxy's are not counted
        here (its clients are told apart by their forwarding headers, at
        the upgrade).  Raises HandshakeError(429) past the limit.  This
        guards this process: ``cluster_limit_by_ip`` applies at the upgrade.
        """
        if self._trusted.trusts(peer_ip):
            return None
        key = ip_key(peer_ip)
        if not self._per_ip.try_acquire(key, self._limit_by_ip):
            raise HandshakeError(429, "too many connections from this address")
        return key

    def connection_closed(self, key: str) -> None:
        """The connection counted under ``key`` is gone (or became a client)."""
        self._per_ip.release(key)

    def _pick_id(self, cookie_header: str | None) -> str:
        if self._session_expires > 0:
            value = parse_cookie(cookie_header, self._cookie_name)
            client_id = self._signer.verify(value, time.time())
            if (
                client_id is not None
                and client_id not in self._clients
                and client_id not in self._reserved
                and self._backplane.owner(client_id) is None
            ):
                return client_id
        return self._ids.new()

    def _open_client(self, admission: _Admission, link: Link) -> None:
        self._reserved.discard(admission.client_id)
        client = _Client(
            self, admission.client_id, link, admission.url_text, admission.path, admission.ip_key
        )
        self._clients[client.id] = client
        self._backplane.client_added(client.id, client.ip_key, client.event)
        link.listener = client
        if self._ping_timer is None and self._ping_delay > 0:
            self._restart_ping_timer()
        handlers = self._handlers.get("open")
        if handlers and not self._run_handlers(
            client, "open", list(handlers), (client.id,), lambda: self._opened(client)
        ):
            # Messages wait until the "open" callbacks are done.
            link.hold()
            return
        client.opening = False

    def _opened(self, client: _Client) -> None:
        client.opening = False
        if self._clients.get(client.id) is client:
            client.link.release()

    def _client_closed(self, client: _Client, event: CloseEvent) -> None:
        if self._clients.get(client.id) is not client:
            return
        del self._clients[client.id]
        self._backplane.client_removed(client.id, client.ip_key, client.event)
        self._per_ip.release(client.ip_key)
        if not self._clients:
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = None
            if self._all_closed is not None:
                self._all_closed.set()
        handlers = self._handlers.get("close")
        if handlers:
            self._run_handlers(None, "close", list(handlers), (client.id, event), None)

    # ============================================================== delivery

    def _deliver(self, client: _Client, data: str | bytes) -> bool:
        handlers = self._handlers.get(client.event)
        if not handlers:
            return True
        if type(data) is str and client.encoding != "utf8":
            try:
                data = decode_text(data, client.encoding)
            except ValueError as exc:
                self._emit_error(client.id, exc)
                return True
        if len(handlers) == 1:
            cb = handlers[0]
            try:
                result = cb(client.id, data)
            except Exception as exc:
                self._callback_failed(client, client.event, exc)
                return True
            if result is None or not inspect.isawaitable(result):
                return True
            task = asyncio.ensure_future(
                self._finish_handlers(client, client.event, result, [], (client.id, data))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _t: client.link.release())
            return False
        return self._run_handlers(
            client, client.event, list(handlers), (client.id, data), client.link.release
        )

    # =============================================================== methods

    def _get(self, client_id: str) -> _Client:
        try:
            return self._clients[client_id]
        except (KeyError, TypeError):
            raise ClientNotFound(client_id) from None

    @staticmethod
    def _payload(data: str | bytes | bytearray | memoryview, encoding: str) -> tuple[bytes, bool]:
        if isinstance(data, str):
            return encode_str(data, encoding)
        if isinstance(data, bytes):
            return data, False
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data), False
        raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")

    def send(
        self,
        client_id: str,
        data: str | bytes | bytearray | memoryview,
        encoding: str | None = None,
    ) -> bool:
        """Send one message; False means "slow down" (the buffer is above its high-water mark).

        With a backplane, an ID connected to another node is routed there (see
        :meth:`_send_remote`).
        """
        try:
            client = self._clients[client_id]
        except (KeyError, TypeError):
            return self._send_remote(client_id, data, encoding)
        if encoding is not None:
            check_encoding(encoding)
        payload, text = self._payload(data, encoding or client.encoding)
        return client.link.send_message(payload, text)

    async def drain(self, client_id: str) -> None:
        """Wait until the client's write buffer is under its low-water mark."""
        await self._get(client_id).link.drain()

    def broadcast(
        self,
        data: str | bytes | bytearray | memoryview,
        *,
        path: str | None = None,
        exclude: Iterable[str] = (),
    ) -> int:
        """Send to every open client (or those of one ``path``); return how many.

        A ``str`` is encoded with the hub's ``encoding``.  The frame is built
        once per group of connections that can share it.
        """
        payload, text = self._payload(data, self._encoding)
        excluded = set(exclude) if exclude else None
        event = None
        if path is not None:
            event = "message" if path in ("", "/") else path
        count = self._broadcast_local(payload, text, event, excluded)
        if not self._backplane.is_local:
            self._broadcast_remote(payload, text, event, excluded)
        return count

    def _broadcast_local(
        self,
        payload: bytes,
        text: bool,
        event: str | None,
        excluded: set[str] | frozenset[str] | None,
    ) -> int:
        frames: dict[Hashable, bytes] = {}
        # Nearly every receiver shares one key (same extension settings):
        # the last key and frame are kept at hand.
        last_key: Hashable | None = None
        last_frame = b""
        count = 0
        for client in list(self._clients.values()):
            if excluded is not None and client.id in excluded:
                continue
            if event is not None and client.event != event:
                continue
            link = client.link
            key = link.broadcast_key
            try:
                if key is None:
                    link.send_message(payload, text)
                elif key is last_key:
                    link.queue_prepared(last_frame)  # raises if the client is closing
                else:
                    frame = frames.get(key)
                    if frame is None:
                        if not link.is_open:
                            continue
                        frame = frames[key] = link.prepare(payload, text)
                    link.queue_prepared(frame)
                    last_key, last_frame = key, frame
            except ConnectionClosedError:
                continue
            count += 1
        return count

    def close(self, client_id: str, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake; False if it had already started."""
        client = self._get(client_id)
        if not isinstance(code, int) or not is_valid_close_code(code):
            raise ValueError(f"{code!r} is not a close code that may be sent")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason longer than 123 bytes")
        return client.link.close(code, reason)

    def ping(self, client_id: str, pong_timeout: float | None = None) -> bool:
        """Ping now; close with 1011 if the pong does not come within ``pong_timeout``."""
        client = self._get(client_id)
        timeout = (
            self._pong_timeout
            if pong_timeout is None
            else _check_number("pong_timeout", pong_timeout)
        )
        return self._ping_client(client, timeout)

    def _ping_client(self, client: _Client, timeout: float) -> bool:
        link = client.link
        if not link.is_open or not link.can_ping:
            return False  # an ASGI link cannot ping (see wshub.asgi)
        self._ping_seq += 1
        try:
            # The connection closes with 1011 if the pong does not come in time.
            return link.ping(self._ping_seq.to_bytes(8, "big"), timeout)
        except ConnectionClosedError:
            return False

    def _restart_ping_timer(self) -> None:
        timer = self._ping_timer
        if timer is not None:
            timer.cancel()
            self._ping_timer = None
        if self._ping_delay > 0 and self._clients:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._ping_timer = loop.call_later(self._ping_delay, self._ping_all)

    def _ping_all(self) -> None:
        self._ping_timer = None
        for client in list(self._clients.values()):
            if not client.link.awaiting_pong:
                # A ping still waiting for its pong keeps its deadline: a new
                # ping would restart the timer, and with ping_delay <
                # pong_timeout a dead client would never be closed.
                self._ping_client(client, self._pong_timeout)
        self._restart_ping_timer()

    def url(self, client_id: str) -> SplitResult:
        """The URL the client asked for (``ws://host/path?query``, ``wss`` under TLS)."""
        return self._get(client_id).url

    def bytes_read(self, client_id: str) -> int:
        return self._get(client_id).link.bytes_read

    def bytes_written(self, client_id: str) -> int:
        return self._get(client_id).link.bytes_written

    def pause(self, client_id: str) -> bool:
        """Stop reading from this client; returns the new paused state (True)."""
        link = self._get(client_id).link
        link.pause()
        return link.is_paused

    def resume(self, client_id: str) -> bool:
        """Read from this client again; returns the new paused state (False)."""
        link = self._get(client_id).link
        link.resume()
        return link.is_paused

    def is_paused(self, client_id: str) -> bool:
        return self._get(client_id).link.is_paused

    def ready_state(self, client_id: str) -> str:
        """``"opening"``, ``"open"``, ``"readOnly"`` or ``"writeOnly"`` (Node's socket states)."""
        client = self._get(client_id)
        state = client.link.ready_state
        if state == "open" and client.opening:
            return "opening"
        return state

    def set_encoding(self, client_id: str, encoding: Encoding = "utf8") -> bool:
        self._get(client_id).encoding = check_encoding(encoding)
        return True

    def set_keep_alive(
        self, client_id: str, enable: bool = False, initial_delay: float = 0.0
    ) -> bool:
        return self._get(client_id).link.set_keep_alive(bool(enable), float(initial_delay))

    def set_no_delay(self, client_id: str, no_delay: bool = True) -> bool:
        return self._get(client_id).link.set_no_delay(bool(no_delay))

    # ================================================================== ASGI

    def asgi(self, app: ASGIApp | None = None) -> AsgiApp:
        """This hub as an ASGI 3 application (for uvicorn, Hypercorn, Starlette, FastAPI).

        ``"websocket"`` scopes become clients of this hub, with the same
        admission, events and methods; other scopes go to ``app`` (an ASGI
        application, e.g. a FastAPI app), or get 404 without one.  What ASGI
        cannot express is listed in :mod:`wshub.asgi`.
        """
        from .asgi import AsgiApp

        return AsgiApp(self, app)

    # ============================================ cluster (see wshub.backplane)

    @property
    def backplane(self) -> Backplane:
        """The backplane that joins this hub to its cluster (read-only)."""
        return self._backplane

    @property
    def cluster_limit_by_ip(self) -> bool:
        """Count ``limit_by_ip`` over every live node of the cluster, not just this one."""
        return self._cluster_limit_by_ip

    @cluster_limit_by_ip.setter
    def cluster_limit_by_ip(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError("cluster_limit_by_ip must be a bool")
        self._cluster_limit_by_ip = value

    async def cluster_clients(self) -> list[str]:
        """IDs of the clients connected to every live node (just :attr:`clients` without one)."""
        if self._backplane.is_local:
            return list(self._clients)
        return await self._backplane.cluster_clients()

    def _cluster_ip_full(self, key: str) -> bool:
        limit = self._limit_by_ip
        if not self._cluster_limit_by_ip or limit < 1 or self._backplane.is_local:
            return False
        return self._per_ip.count(key) + self._backplane.ip_count(key) >= limit

    def _send_remote(
        self, client_id: str, data: str | bytes | bytearray | memoryview, encoding: str | None
    ) -> bool:
        """``send`` to an ID that is not local: route it through the backplane.

        Whether the ID exists is decided at once from the backplane's cached
        cluster registry (ClientNotFound when no live node has it), so
        ``send`` stays synchronous.  If the client left meanwhile, its node
        answers and the ``"error"`` event reports ClientNotFound for that ID.
        """
        if self._backplane.is_local or not isinstance(client_id, str):
            raise ClientNotFound(client_id)
        if isinstance(data, str) and encoding is None:
            # The client's own encoding lives on its node: encode there.
            return self._backplane.send(client_id, data, True)
        if encoding is not None:
            check_encoding(encoding)
        payload, text = self._payload(data, encoding or self._encoding)
        return self._backplane.send(client_id, payload, text)

    def _broadcast_remote(
        self, payload: bytes, text: bool, event: str | None, excluded: set[str] | None
    ) -> None:
        # Local delivery is done; the other nodes need only the excluded IDs
        # that are not here.
        remote_excluded = (
            frozenset(c for c in excluded if c not in self._clients) if excluded else frozenset()
        )
        self._backplane.broadcast(payload, text, event, remote_excluded)

    # BackplaneHub: what the backplane calls.

    def _backplane_send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        client = self._clients.get(client_id)
        if client is None:
            return False
        try:
            if isinstance(data, str):
                payload, text = encode_str(data, client.encoding)
            else:
                payload = data
            client.link.send_message(payload, text)
        except ValueError as exc:
            log.warning("routed send to %s: cannot encode: %s", client_id, exc)
            self._emit_error(client_id, exc)
        except ConnectionClosedError:
            pass
        return True

    def _backplane_broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> int:
        return self._broadcast_local(payload, text, event, exclude or None)

    def _backplane_local_clients(self) -> list[tuple[str, str, str]]:
        return [(c.id, c.ip_key, c.event) for c in self._clients.values()]

    def _backplane_missing(self, client_id: str) -> None:
        self._emit_error(client_id, ClientNotFound(client_id))

    def _backplane_duplicate(self, client_id: str) -> bool:
        client = self._clients.get(client_id)
        if client is None:
            return False
        client.link.close(CloseCode.TRY_AGAIN_LATER, "session ID opened on another node")
        return True

    async def _backplane_start(self) -> None:
        """Awaited by ``HttpServer.serve`` before it listens (the ASGI adapter: at startup)."""
        if not self._backplane.is_local:
            await self._backplane.start()

    async def _backplane_stop(self, code: int = 1001, reason: str = "") -> None:
        """A shutdown hook: leave the cluster before the clients are closed."""
        if not self._backplane.is_local:
            await self._backplane.stop()

    # ============================================================ lifecycle

    def _server_started(self) -> None:
        self._restart_ping_timer()

    async def _shutdown(self, code: int, reason: str) -> None:
        """Close every client with ``code`` and wait until they are gone."""
        if not self._clients:
            return
        self._all_closed = asyncio.Event()
        for client in list(self._clients.values()):
            client.link.close(code, reason)
        await self._all_closed.wait()
