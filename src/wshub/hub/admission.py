"""Admission: the hub's yes or no to an upgrade, and the per-IP count.

:class:`AdmissionControl` judges a well-formed upgrade (Host, target,
origin, per-IP limit, here or over the cluster), negotiates the extension,
picks the client ID (the session cookie's, when valid and free) and answers
with a :class:`PendingClient`: the response headers and a reserved slot
that ``open(link)`` turns into a client of the registry.  It also counts
every TCP connection of the attached server under ``limit_by_ip``.

The hub's ``on_handshake`` hook runs after the guards (Host and target,
origin, per IP) and before the rest (extension, client ID, cookie), with
the client's per-IP slot held.  Without a hook, admission is synchronous
as it always was; with a hook returning an awaitable, :meth:`admit`
answers with a task whose result is the :class:`PendingClient` (the
carrier waits for it; cancelling it frees the slot).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

from ..backplane import Backplane
from ..errors import HandshakeError
from ..http import Response
from ..policy import ClientIds, PerIpCounter, client_ip, ip_key, parse_cookie, valid_host
from ..protocol.connection import MessageCodec
from ..protocol.deflate import negotiate_extensions
from ..protocol.handshake import select_subprotocol
from ..protocol.http import reason_phrase
from ..transport.link import Admission, Link, LinkConfig, UpgradeRequest
from .handshake import ClientExtras, Handshake, check_fields
from .options import COOKIE_TAIL, HubOptions
from .registry import Registry

__all__ = ["AdmissionControl", "PendingClient", "split_target"]


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


class PendingClient:
    """A reserved slot (ID, per-IP count) waiting for its link: the hub's
    :class:`~wshub.transport.link.Admission`."""

    __slots__ = (
        "_control",
        "_done",
        "client_id",
        "codec",
        "config",
        "extras",
        "ip_key",
        "path",
        "response_headers",
        "subprotocol",
        "url_text",
    )

    def __init__(
        self,
        control: AdmissionControl,
        client_id: str,
        key: str,
        url_text: str,
        path: str,
        headers: list[tuple[str, str]],
        codec: MessageCodec | None,
        config: LinkConfig,
        subprotocol: str | None = None,
        extras: Handshake | ClientExtras | None = None,
    ) -> None:
        self._control = control
        self.client_id = client_id
        self.ip_key = key
        self.url_text = url_text
        self.path = path
        self.response_headers = headers
        self.codec = codec
        self.config = config
        self.subprotocol = subprotocol
        # What the client record keeps of the handshake (None: nothing).
        self.extras = extras
        self._done = False

    def open(self, link: Link) -> None:
        if self._done:
            raise RuntimeError("admission already used")
        self._done = True
        control = self._control
        control.reserved.discard(self.client_id)
        control.registry.open(
            self.client_id, self.ip_key, self.url_text, self.path, link, self.extras
        )

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            control = self._control
            control.reserved.discard(self.client_id)
            control.per_ip.release(self.ip_key)


class AdmissionControl:
    """Origin, per-IP limits, client IDs and cookies, extension negotiation."""

    __slots__ = (
        "_backplane",
        "_ids",
        "_last_url",
        "_options",
        "_valid_host",
        "per_ip",
        "registry",
        "reserved",
    )

    def __init__(
        self,
        options: HubOptions,
        registry: Registry,
        per_ip: PerIpCounter,
        backplane: Backplane,
    ) -> None:
        self._options = options
        self._backplane = backplane
        self._ids = ClientIds()
        #: Where admitted clients are opened.
        self.registry = registry
        #: Connections and clients per IP key (released by the registry
        #: when a client closes).
        self.per_ip = per_ip
        #: IDs admitted but not yet open (or cancelled).
        self.reserved: set[str] = set()
        # The target, Host and scheme of the last admission, and its URL,
        # path and query (see _url).
        self._last_url = ("", "", "", "", "", "")
        # The last Host found valid: the same one comes on nearly every
        # upgrade, and is then not parsed again.
        self._valid_host = ""

    def admit(self, request: UpgradeRequest) -> PendingClient | asyncio.Future[Admission]:
        """Judge a well-formed upgrade; raise HandshakeError to refuse it.

        With an ``async`` hook: a task of the :class:`PendingClient` (its
        exception: the refusal).
        """
        options = self._options
        headers = request.headers
        # The URL's path and query come from the target, the host from Host
        # (":authority"), which must be a host and nothing more: a Host of
        # "x/admin?" must not turn "/public" into "/admin".
        host = headers.get("host", "")
        if host != self._valid_host and not valid_host(host):
            raise HandshakeError(400, "malformed Host header")
        self._valid_host = host
        # Nearly every upgrade asks for the URL of the last one: then the
        # target is not split nor the URL built again (see _url).
        last = self._last_url
        target = request.target
        if target == last[0] and host == last[1] and request.scheme == last[2]:
            url_text, path, query = last[3], last[4], last[5]
        else:
            url_text, path, query = self._url(request.scheme, host, target)
        if not options.origin_policy.allows(
            request.info.origin, headers.get("host"), request.scheme == "wss"
        ):
            raise HandshakeError(403, "origin not allowed")
        key = request.ip_slot
        if key is None:
            client = client_ip(request.peer[0], headers, options.trusted)
            key = ip_key(client)
            if (
                options.cluster_limit_by_ip and self._cluster_ip_full(key)
            ) or not self.per_ip.try_acquire(key, options.limit_by_ip):
                raise HandshakeError(429, "too many connections from this address")
        else:
            # Counted since its accept under the peer's key (so the peer is
            # not a trusted proxy: it is the client): the count becomes the
            # client's if the limits allow it as a new one, else it is given back.
            request.ip_slot = None
            client = request.peer[0]
            if (
                options.cluster_limit_by_ip and self._cluster_ip_full(key, held=1)
            ) or not self.per_ip.may_keep(key, options.limit_by_ip):
                self.per_ip.release(key)
                raise HandshakeError(429, "too many connections from this address")
        try:
            offered = request.info.subprotocols
            chosen = select_subprotocol(offered, options.subprotocols) if offered else None
            hook = options.on_handshake
            if hook is None:
                extras = None if chosen is None else ClientExtras(chosen)
                return self._complete(request, key, url_text, path, chosen, extras, ())
            handshake = Handshake(
                request, client=client, path=path, query=query, url=url_text, subprotocol=chosen
            )
            result = hook(handshake)
            if inspect.isawaitable(result):
                return self._await_hook(handshake, result, request, key, path)
            return self._after_hook(handshake, result, request, key, path)
        except BaseException:
            self.per_ip.release(key)
            raise

    def _url(self, scheme: str, host: str, target: str) -> tuple[str, str, str]:
        """The URL, path and query of a request for ``target`` on ``host``,
        remembered for the next admission.  An equal URL gives the previous
        strings: the clients of one URL keep one copy of them, not one each.
        (An equal URL has an equal path: a valid Host has no "/".)"""
        try:
            path, query = split_target(target)
        except ValueError:
            raise HandshakeError(400, "malformed request target") from None
        url_text = f"{scheme}://{host}{path}"
        if query:
            url_text += "?" + query
        last = self._last_url
        if url_text == last[3]:
            url_text, path = last[3], last[4]
        self._last_url = (target, host, scheme, url_text, path, query)
        return url_text, path, query

    def _complete(
        self,
        request: UpgradeRequest,
        key: str,
        url_text: str,
        path: str,
        subprotocol: str | None,
        extras: Handshake | ClientExtras | None,
        fields: list[tuple[str, str]] | tuple[()],
    ) -> PendingClient:
        """After the guards and the hook: extension, client ID, session cookie."""
        options = self._options
        response_headers: list[tuple[str, str]] = []
        if subprotocol is not None:
            response_headers.append(("Sec-WebSocket-Protocol", subprotocol))
        codec: MessageCodec | None = None
        deflate = options.per_message_deflate
        if request.info.extensions and deflate is not False:
            accepted = negotiate_extensions(request.info.extensions, deflate)
            if accepted is not None:
                response_headers.append(("Sec-WebSocket-Extensions", accepted[0]))
                codec = accepted[1]
        client_id, expiry = self._pick_id(request.headers.get("cookie"))
        self.reserved.add(client_id)
        expires = options.session_expires
        if expires > 0:
            if expiry is None:  # a new session
                expiry = time.time() + expires
                attributes = options.cookie_attributes
            else:
                # What is left of the session, rounded up (Max-Age=0 would
                # delete the cookie); wshub checks the exact expiry inside it.
                remaining = math.ceil(expiry - time.time())
                attributes = f"; Max-Age={max(1, remaining)}{COOKIE_TAIL}"
            cookie = f"{options.cookie_name}={options.signer.sign(client_id, expiry)}{attributes}"
            if request.scheme == "wss":
                cookie += "; Secure"
            response_headers.append(("Set-Cookie", cookie))
        if fields:
            response_headers.extend(fields)
        return PendingClient(
            self,
            client_id,
            key,
            url_text,
            path,
            response_headers,
            codec,
            options.link_config,
            subprotocol,
            extras,
        )

    def _after_hook(
        self, handshake: Handshake, result: object, request: UpgradeRequest, key: str, path: str
    ) -> PendingClient:
        """What the hook answered: None admits (with its choices), a Response refuses."""
        if result is not None:
            raise _refusal(result)
        fields = check_fields(handshake.response_headers, answer=True)
        return self._complete(
            request, key, handshake.url, path, handshake.subprotocol, handshake, fields
        )

    def _await_hook(
        self,
        handshake: Handshake,
        awaitable: Awaitable[object],
        request: UpgradeRequest,
        key: str,
        path: str,
    ) -> asyncio.Future[Admission]:
        async def finish() -> Admission:
            result = await awaitable
            return self._after_hook(handshake, result, request, key, path)

        task = asyncio.ensure_future(finish())

        def ended(task: asyncio.Future[Admission]) -> None:
            # Refused, failed or cancelled (by the carrier: connection lost,
            # stream reset, handshake timeout): the slot is free again.
            if task.cancelled() or task.exception() is not None:
                self.per_ip.release(key)
                if inspect.iscoroutine(awaitable):
                    awaitable.close()  # cancelled before it ever ran

        task.add_done_callback(ended)
        return task

    def connection_opened(self, peer_ip: str, *, force: bool = False) -> str | None:
        """Count a TCP connection under ``limit_by_ip``; the key, or None if not counted.

        A trusted proxy's connections are not counted here (its clients are
        told apart by their forwarding headers, at the upgrade).  Raises
        HandshakeError(429) past the limit.
        """
        options = self._options
        if options.trusted.trusts(peer_ip):
            return None
        key = ip_key(peer_ip)
        if not self.per_ip.try_acquire(key, 0 if force else options.limit_by_ip):
            raise HandshakeError(429, "too many connections from this address")
        return key

    def connection_closed(self, key: str) -> None:
        """The connection counted under ``key`` is gone (or became a client)."""
        self.per_ip.release(key)

    def _cluster_ip_full(self, key: str, held: int = 0) -> bool:
        """Whether ``key`` has reached the limit over the cluster, not
        counting the ``held`` slot this node already has for the client."""
        options = self._options
        limit = options.limit_by_ip
        if not options.cluster_limit_by_ip or limit < 1 or self._backplane.is_local:
            return False
        return self.per_ip.count(key) - held + self._backplane.ip_count(key) >= limit

    def _pick_id(self, cookie_header: str | None) -> tuple[str, float | None]:
        """The client's ID, and the end of its session if a cookie gave it.

        A valid cookie whose ID is free gives that ID back with the expiry
        it was first issued with: a session lasts ``session_expires`` from
        its first connection, however often the client reconnects.  A new
        ID comes with None (its session starts now).
        """
        options = self._options
        if options.session_expires > 0 and cookie_header:
            value = parse_cookie(cookie_header, options.cookie_name)
            session = options.signer.session(value, time.time())
            if (
                session is not None
                and session[0] not in self.registry.clients
                and session[0] not in self.registry.closing
                and session[0] not in self.reserved
                and self._backplane.owner(session[0]) is None
            ):
                return session
        return self._ids.new(), None


def _refusal(result: Any) -> HandshakeError:
    """The refusal a hook answered with (a Response of status 300-599)."""
    if not isinstance(result, Response):
        raise TypeError(
            f"on_handshake must return None or a wshub.Response, not {type(result).__name__}"
        )
    status = result.status
    if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 599:
        raise ValueError(f"on_handshake refused with status {status!r}; it must be 300-599")
    body = result.body
    if not isinstance(body, bytes):
        raise TypeError("the body of on_handshake's Response must be bytes or str")
    fields = check_fields(result.headers, answer=False)
    return HandshakeError(status, f"{reason_phrase(status)} (on_handshake)", fields, body)
