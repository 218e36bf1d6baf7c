"""The hub's clients: who is connected here, and routing to them.

:class:`Registry` keeps the local clients by ID (a :class:`Client` each, the
link's listener), opens and forgets them, broadcasts to them, and routes
what is not local through the backplane.  :class:`BackplanePort` is what
the backplane may call in return (deliver a routed send or broadcast, list
the local clients, ...): the :class:`~wshub.backplane.BackplaneHub`
interface, on its own small object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from ..backplane import Backplane
from ..encodings import check_encoding, encode_str
from ..errors import ClientNotFound, ConnectionClosedError
from ..policy import PerIpCounter
from ..protocol.frames import CloseCode
from ..transport.link import CloseInitiator, Link
from .events import CloseEvent, Events
from .fanout import queue_to_all, queue_to_links
from .handshake import ClientExtras, Handshake
from .history import Position
from .options import HubOptions
from .pings import PingTimer
from .protocol_v1 import SUBPROTOCOL, ProtocolV1
from .stats import HubStats
from .topics import Topics

__all__ = ["BackplanePort", "Client", "Registry", "encode_payload", "event_for_path"]

log = logging.getLogger("wshub")


def event_for_path(path: str) -> str:
    """The event a client of URL path ``path`` sends its messages to."""
    return "message" if path in ("", "/") else path


def encode_payload(data: str | bytes | bytearray | memoryview, encoding: str) -> tuple[bytes, bool]:
    """``(payload, is_text)`` of what a user sends: a ``str`` through ``encoding``."""
    if isinstance(data, str):
        if encoding == "utf8":
            # The common case without a further call (encode_str's first branch).
            try:
                return data.encode(), True
            except UnicodeEncodeError:
                pass  # lone surrogates: encode_str writes them as Node does
        return encode_str(data, encoding)
    if isinstance(data, bytes):
        return data, False
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data), False
    raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")


# A client's phases (Client.phase): listed in Registry.clients; in its
# closing handshake (Registry.closing: not listed, its "close" event due);
# its "close" event ran (the ID is free); its connection is gone.
OPEN, CLOSING, REPORTED, GONE = 0, 1, 2, 3
# Read on every close: an enum member looked up on its class (Python 3.11)
# costs about 100 ns more than a module global.
_BY_SERVER = CloseInitiator.SERVER
# The event of a client whose "close" ran: no handler is ever registered
# under it, so what its connection still delivers goes nowhere.
NO_EVENT = ""


class Client:
    """The hub's record of one connected client; the link's listener."""

    __slots__ = (
        "direct",
        "encoding",
        "event",
        "events",
        "extras",
        "id",
        "ip_key",
        "link",
        "opening",
        "own_encoding",
        "phase",
        "registry",
        "url_text",
    )

    def __init__(
        self,
        registry: Registry,
        events: Events,
        client_id: str,
        link: Link,
        url_text: str,
        path: str,
        ip_key: str,
        encoding: str,
        extras: Handshake | ClientExtras | None = None,
    ) -> None:
        self.registry = registry
        self.events = events
        self.id = client_id
        self.link = link
        self.url_text = url_text
        self.ip_key = ip_key
        self.event = event_for_path(path)
        self.encoding = encoding
        # False while the client follows the hub's encoding (set_encoding
        # gives it its own).
        self.own_encoding = False
        self.phase = OPEN
        # True until the "open" callbacks are done (ready_state "opening").
        self.opening = True
        # The handshake (when a hook saw it), or just the subprotocol and
        # data (ClientExtras), or None: nothing to keep.
        self.extras = extras
        #: The ``wshub.v1`` layer when the client speaks it: ``send`` goes
        #: through its direct stream (None: a raw client).
        self.direct: ProtocolV1 | None = None

    @property
    def url(self) -> SplitResult:
        return urlsplit(self.url_text)

    # LinkListener
    def on_message(self, data: str | bytes) -> bool:
        if self.direct is not None:  # wshub.v1: requests, not application messages
            self.direct.on_message(self, data)
            return True
        return self.events.deliver(self, data)

    def on_pong(self, rtt: float) -> None:
        self.registry.stats.pong_received(rtt)

    def on_error(self, exc: Exception) -> None:
        if self.phase < REPORTED:  # (after "close", nothing more: the ID may be reused)
            self.events.emit_error(self.id, exc)

    def on_closing(self, code: int, reason: str, initiator: CloseInitiator) -> None:
        self.registry.client_closing(self, code, reason, initiator)

    def on_close(self, code: int, reason: str, was_clean: bool) -> None:
        self.registry.client_closed(self, code, reason, was_clean)


class CountingClient(Client):
    """A client whose messages are counted: the hub's metrics are on
    (:meth:`HubStats.enable`); without them nothing is counted per
    message."""

    __slots__ = ()

    def on_message(self, data: str | bytes) -> bool:
        self.registry.stats.messages_received += 1
        if self.direct is None:  # (Client.on_message, without a call more)
            return self.events.deliver(self, data)
        return Client.on_message(self, data)


class Registry:
    """The clients of this process by ID; local and routed send/broadcast."""

    __slots__ = (
        "_all_closed",
        "_all_links",
        "_backplane",
        "_events",
        "_finishing",
        "_options",
        "_per_ip",
        "clients",
        "closing",
        "pings",
        "protocol_v1",
        "reporting",
        "stats",
        "topics",
    )

    def __init__(
        self,
        options: HubOptions,
        events: Events,
        per_ip: PerIpCounter,
        backplane: Backplane,
    ) -> None:
        #: Client ID → :class:`Client`, for every client open on this process.
        #: The dict itself is never replaced (the hub's ``send`` reads it).
        self.clients: dict[str, Client] = {}
        #: Client ID → :class:`Client`, for the clients in their closing
        #: handshake: no longer in ``clients``, their ``"close"`` event still
        #: due.  Their IDs stay taken, and the per-client methods still answer.
        self.closing: dict[str, Client] = {}
        #: Client ID → :class:`Client`, while its ``"close"`` callbacks run
        #: (an async one until it returns): its record (data, request, URL)
        #: stays readable to them, though the ID is no longer taken.
        self.reporting: dict[str, Client] = {}
        # Clients whose "close" ran when the server closed them (their ID is
        # free) but whose connection still finishes its closing handshake.
        self._finishing = 0
        #: The periodic ping of these clients.
        self.pings = PingTimer(self.clients, options)
        #: What metrics report (counted here, read when scraped).
        self.stats = HubStats(options, backplane)
        #: The topics these clients follow.
        self.topics = Topics(self.clients, events, backplane)
        #: The ``wshub.v1`` layer (None: the hub does not speak it).
        self.protocol_v1: ProtocolV1 | None = None
        self._options = options
        self._events = events
        self._per_ip = per_ip
        self._backplane = backplane
        self._all_closed: asyncio.Event | None = None
        # The links of ``clients``, as one tuple for broadcasts to all of
        # them (None: to be made again; a client came or went).
        self._all_links: tuple[Link, ...] | None = None

    def get(self, client_id: str) -> Client:
        """The local client ``client_id``, open or closing; ClientNotFound if
        it never was here or its ``"close"`` callbacks have finished."""
        try:
            return self.clients[client_id]
        except KeyError:
            client = self.closing.get(client_id) or self.reporting.get(client_id)
            if client is None:
                raise ClientNotFound(client_id) from None
            return client
        except TypeError:
            raise ClientNotFound(client_id) from None

    def default_encoding_changed(self) -> None:
        """The hub's ``encoding`` changed: clients without their own follow it."""
        encoding = self._options.encoding
        for table in (self.clients, self.closing):
            for client in table.values():
                if not client.own_encoding:
                    client.encoding = encoding

    # --------------------------------------------------------- coming and going

    def open(
        self,
        client_id: str,
        ip_key: str,
        url_text: str,
        path: str,
        link: Link,
        extras: Handshake | ClientExtras | None = None,
    ) -> None:
        """An admitted client is connected through ``link``: register it, run ``"open"``."""
        client = (CountingClient if self.stats.enabled else Client)(
            self,
            self._events,
            client_id,
            link,
            url_text,
            path,
            ip_key,
            self._options.encoding,
            extras,
        )
        self.clients[client_id] = client
        self._all_links = None
        self._backplane.client_added(client_id, ip_key, client.event)
        link.listener = client
        layer = self.protocol_v1
        if layer is not None and extras is not None and extras.subprotocol == SUBPROTOCOL:
            client.direct = layer
            layer.opened(client)
        stats = self.stats
        stats.accepted += 1
        if stats.enabled:
            stats.opened(link)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "client %s opened %s",
                client_id,
                path,  # not url_text: its query may carry a token
                extra={"client_id": client_id, "path": path, "address": ip_key},
            )
        self.pings.ensure_running()
        events = self._events
        if events.handlers.get("open") and not events.emit(
            "open", (client_id,), client_id, lambda: self._opened(client)
        ):
            # Messages wait until the "open" callbacks are done.
            link.hold()
            return
        client.opening = False

    def _opened(self, client: Client) -> None:
        client.opening = False
        if client.phase != GONE:
            # (A closing client too: the messages before its Close, and our
            # reply to it, wait for this.)
            client.link.release()

    def client_closing(
        self, client: Client, code: int, reason: str, initiator: CloseInitiator
    ) -> None:
        """``client``'s closing handshake started: it leaves ``clients`` (and
        its topics, and the cluster's registry).

        A close the server decided (a limit, a timeout, a protocol error) is
        reported now, with the code sent and ``was_clean=False``, and the ID
        is free at once; the connection finishes its closing handshake
        without further events.  A close the peer or the application
        started is reported when the connection is gone.
        """
        if client.phase != OPEN:
            return
        if self.clients.get(client.id) is client:
            del self.clients[client.id]
            self._all_links = None
        self.topics.client_closed(client.id)
        if client.direct is not None:
            client.direct.closed(client)
        self._backplane.client_removed(client.id, client.ip_key, client.event)
        if not self.clients:
            self.pings.stop()
        if initiator == _BY_SERVER:
            self._finishing += 1
            self._report(client, code, reason, False)
        else:
            client.phase = CLOSING
            self.closing[client.id] = client

    def client_closed(self, client: Client, code: int, reason: str, was_clean: bool) -> None:
        """``client``'s connection is gone: give back its per-IP slot, and run
        ``"close"`` unless it ran already."""
        phase = client.phase
        if phase == GONE:
            return
        if phase == OPEN:  # (a link tells on_closing first; be safe anyway)
            self.client_closing(client, code, reason, CloseInitiator.PEER)
            phase = client.phase
        # The socket counted under limit_by_ip until now, closing or not.
        self._per_ip.release(client.ip_key)
        if self.stats.enabled:
            self.stats.gone(client.link)
        if phase == CLOSING:
            if self.closing.get(client.id) is client:
                del self.closing[client.id]
            self._report(client, code, reason, was_clean)
        else:  # REPORTED: its connection finished in the background
            self._finishing -= 1
        client.phase = GONE
        if self._all_closed is not None:  # (close_all waits)
            self._check_all_closed()

    def _report(self, client: Client, code: int, reason: str, was_clean: bool) -> None:
        """Run ``"close"`` for ``client``: from now on its ID is unknown here,
        and its connection, if still there, delivers nothing.  (Its
        :class:`CloseEvent` is made only for the handlers.)"""
        client.phase = REPORTED
        client.event = NO_EVENT
        if self.stats.enabled:
            self.stats.closed_with(code)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "client %s closed: %d %s",
                client.id,
                code,
                reason,
                extra={"client_id": client.id, "address": client.ip_key, "close_code": code},
            )
        reporting = self.reporting
        client_id = client.id
        events = self._events
        if not events.handlers.get("close"):
            # No handler: the ID is not reporting, nothing runs.  (As the
            # path below ends: no entry under the ID.)
            if reporting:
                reporting.pop(client_id, None)
            return
        reporting[client_id] = client

        def reported() -> None:
            if reporting.get(client_id) is client:
                del reporting[client_id]

        if events.emit("close", (client_id, CloseEvent(code, reason, was_clean)), None, reported):
            reported()

    def _check_all_closed(self) -> None:
        if (
            self._all_closed is not None
            and not self.clients
            and not self.closing
            and not self._finishing
        ):
            self._all_closed.set()

    async def close_all(self, code: int, reason: str) -> None:
        """Close every client with ``code`` and wait until their connections
        are gone (those already closing included)."""
        if not (self.clients or self.closing or self._finishing):
            return
        self._all_closed = asyncio.Event()
        for client in list(self.clients.values()):
            client.link.close(code, reason)
        self._check_all_closed()
        await self._all_closed.wait()

    # ----------------------------------------------------------------- routing

    def send_remote(
        self, client_id: str, data: str | bytes | bytearray | memoryview, encoding: str | None
    ) -> bool:
        """``send`` to an ID that is not local: route it through the backplane.

        Whether the ID exists is decided at once from the backplane's cached
        cluster registry (ClientNotFound when no live node has it), so
        ``send`` stays synchronous.  If the client left meanwhile, its node
        answers and the ``"error"`` event reports ClientNotFound for that ID.
        """
        if isinstance(client_id, str) and client_id in self.closing:
            # Listed a moment ago, closing now: not sent, and no error.
            return False
        backplane = self._backplane
        layer = self.protocol_v1
        if layer is not None and layer.direct_cluster is not None and isinstance(client_id, str):
            # Direct streams in Redis: the script decides whether the ID has
            # one (a wshub.v1 client, here or away); a raw client's is routed.
            if encoding is not None:
                check_encoding(encoding)
            payload, text = encode_payload(data, encoding or self._options.encoding)
            routed = data if isinstance(data, str) and encoding is None else payload
            return layer.send_remote(client_id, payload, text, routed)
        if backplane.is_local or not isinstance(client_id, str):
            if layer is not None and isinstance(client_id, str):
                # A wshub.v1 client away within its session: kept for its resume.
                payload, text = encode_payload(data, encoding or self._options.encoding)
                if layer.keep_direct(client_id, payload, text):
                    return False
            raise ClientNotFound(client_id)
        if isinstance(data, str) and encoding is None:
            # The client's own encoding lives on its node: encode there.
            return backplane.send(client_id, data, True)
        if encoding is not None:
            check_encoding(encoding)
        payload, text = encode_payload(data, encoding or self._options.encoding)
        return backplane.send(client_id, payload, text)

    def broadcast(
        self,
        data: str | bytes | bytearray | memoryview,
        path: str | None,
        exclude: Iterable[str],
    ) -> int:
        """Send to every open client (or those of one ``path``), here and on other nodes."""
        payload, text = encode_payload(data, self._options.encoding)
        excluded = set(exclude) if exclude else None
        event = None if path is None else event_for_path(path)
        count = self.broadcast_local(payload, text, event, excluded)
        self.stats.messages_sent += count
        if not self._backplane.is_local:
            # The other nodes need only the excluded IDs that are not here.
            clients = self.clients
            remote_excluded = (
                frozenset(c for c in excluded if c not in clients) if excluded else frozenset()
            )
            self._backplane.broadcast(payload, text, event, remote_excluded)
        return count

    def broadcast_local(
        self,
        payload: bytes,
        text: bool,
        event: str | None,
        excluded: set[str] | frozenset[str] | None,
    ) -> int:
        """Queue one message for every open local client of ``event`` (None: all) but
        ``excluded``; return how many.  The frame is built once per group of links
        that can share it."""
        if excluded is None and event is None:
            # The same tuple for every broadcast until a client comes or
            # goes: a burst of them is queued once for all (queue_to_links).
            links = self._all_links
            if links is None:
                links = self._all_links = tuple(c.link for c in self.clients.values())
            return queue_to_links(links, payload, text)
        clients = self.clients.values()
        return queue_to_all(
            [
                c
                for c in clients
                if (excluded is None or c.id not in excluded)
                and (event is None or c.event == event)
            ],
            payload,
            text,
        )

    async def cluster_clients(self) -> list[str]:
        """IDs of the clients connected to every live node."""
        if self._backplane.is_local:
            return list(self.clients)
        return await self._backplane.cluster_clients()


class BackplanePort:
    """What the backplane calls on the hub it serves (:class:`~wshub.backplane.BackplaneHub`)."""

    __slots__ = ("_events", "_options", "_registry")

    def __init__(self, registry: Registry, events: Events, options: HubOptions) -> None:
        self._registry = registry
        self._events = events
        self._options = options

    def cluster_key(self, label: bytes) -> bytes | None:
        signer = self._options.signer
        return None if signer.ephemeral else signer.derive(label)

    def deliver_send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        registry = self._registry
        client = registry.clients.get(client_id)
        if client is None:
            # Closing here: it was listed when the sender looked; not an error.
            return client_id in registry.closing
        try:
            if isinstance(data, str):
                payload, text = encode_str(data, client.encoding)
            else:
                payload = data
            if client.direct is not None:
                client.direct.send_direct(client, payload, text)
            else:
                client.link.send_message(payload, text)
            self._registry.stats.messages_sent += 1
        except ValueError as exc:
            log.warning("routed send to %s: cannot encode: %s", client_id, exc)
            self._events.emit_error(client_id, exc)
        except ConnectionClosedError:
            pass
        return True

    def deliver_broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> int:
        registry = self._registry
        count = registry.broadcast_local(payload, text, event, exclude or None)
        registry.stats.messages_sent += count
        return count

    def local_clients(self) -> list[tuple[str, str, str]]:
        return [(c.id, c.ip_key, c.event) for c in self._registry.clients.values()]

    def client_missing(self, client_id: str) -> None:
        self._events.emit_error(client_id, ClientNotFound(client_id))

    def deliver_direct(
        self, client_id: str, payload: bytes, text: bool, position: tuple[str, int]
    ) -> None:
        layer = self._registry.protocol_v1
        if layer is not None:
            layer.deliver_kept_direct(client_id, payload, text, Position(*position))

    def close_duplicate(self, client_id: str) -> bool:
        client = self._registry.clients.get(client_id)
        if client is None:
            return False
        client.link.close(CloseCode.TRY_AGAIN_LATER, "session ID opened on another node")
        return True
