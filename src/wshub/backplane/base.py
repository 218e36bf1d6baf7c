"""The backplane interface: what a hub asks of one, what one calls on the hub.

:class:`Backplane` is the base (its methods are the single-process answers),
:class:`LocalBackplane` the default, :func:`make_backplane` turns the hub's
``backplane=`` argument into one.  The package docstring of
:mod:`wshub.backplane` says how the Redis backplane works.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from ..errors import ClientNotFound, HistoryUnavailable


class BackplaneHub(Protocol):
    """What a backplane calls on the hub it serves.

    Implemented by a small object the hub hands to :meth:`Backplane.bind`
    (``wshub.hub.registry.BackplanePort``), not by ``WebSocket`` itself.
    """

    def deliver_send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        """Deliver a routed ``send`` to a local client; False if it is not here."""
        ...

    def deliver_broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> int:
        """Deliver a routed broadcast to the local clients; return how many."""
        ...

    def local_clients(self) -> list[tuple[str, str, str]]:
        """``(client_id, ip_key, event)`` of every local client."""
        ...

    def client_missing(self, client_id: str) -> None:
        """A routed ``send`` found no client with this ID on its node."""
        ...

    def deliver_direct(
        self, client_id: str, payload: bytes, text: bool, position: tuple[str, int]
    ) -> None:
        """A direct message of a ``wshub.v1`` client's stream in the cluster
        (:meth:`Backplane.send_direct`), with its position, for a local client."""
        ...

    def close_duplicate(self, client_id: str) -> bool:
        """Another node admitted this ID at the same moment: close ours; False if none."""
        ...

    def cluster_key(self, label: bytes) -> bytes | None:
        """HMAC-SHA256(the hub's secret, ``label``); None when that secret is
        random to this process (no ``secret`` and no ``WSHUB_SECRET``)."""
        ...


class TopicHub(Protocol):
    """What a backplane calls on the topics of the hub it serves.

    Implemented by ``wshub.hub.topics.TopicsPort``, handed to
    :meth:`Backplane.bind_topics`.
    """

    def follows(self, name: str) -> bool:
        """Whether a local client follows topic ``name``."""
        ...

    def followed_topics(self) -> list[str]:
        """Every topic that a local client follows."""
        ...

    def subscriptions(self, name: str) -> dict[str, str]:
        """The local subscribers of ``name``: client ID → URL path."""
        ...

    def deliver_publication(
        self,
        name: str,
        payload: bytes,
        text: bool,
        exclude: frozenset[str],
        position: tuple[str, int] | None = None,
    ) -> int:
        """Deliver a publication of another node to the local subscribers; return how many.

        ``position``: ``(epoch, seq)`` of a publication kept in the cluster's
        history (then it comes from every node, this one included, in order).
        """
        ...

    def remote_joined(self, client_id: str, name: str) -> None:
        """A client of another node subscribed to ``name`` (the ``"join"`` event)."""
        ...

    def remote_left(self, client_id: str, name: str) -> None:
        """A client of another node left ``name`` (the ``"leave"`` event)."""
        ...


#: Why an incoming message or registry entry was dropped: the keys of
#: ``stats().rejected``, fixed so that metrics can label by them.
REJECT_REASONS = (
    "malformed",  # too short, lengths that do not add up, an origin that is not ASCII
    "unknown_key",  # signed with a key this node does not have (another cluster secret?)
    "bad_mac",  # forged or altered
    "bad_version",  # a format this node does not speak
    "unknown_kind",  # a kind not expected on its channel
    "bad_content",  # signed, but not what its kind needs: bad JSON, unknown or missing fields
    "stale",  # timestamp outside the replay window (a replay, or clocks out of sync)
    "replay",  # a counter this node already accepted from that sender
    "bad_entry",  # a registry hash entry without a valid MAC
)
_NO_REJECTIONS: Mapping[str, int] = MappingProxyType(dict.fromkeys(REJECT_REASONS, 0))


class KeptEntry(NamedTuple):
    """One publication read back from a topic's history in the cluster."""

    seq: int
    payload: bytes
    text: bool
    #: The client IDs the publisher excluded.
    exclude: frozenset[str]


class HistoryRead(NamedTuple):
    """What a topic's history in the cluster holds (:meth:`Backplane.read_history`)."""

    #: The stream's epoch (None: no history kept for the topic).
    epoch: str | None
    #: Its latest sequence number (0 with no epoch).
    seq: int
    #: The kept publications after the asked sequence number, oldest first.
    entries: list[KeptEntry]
    #: The oldest sequence number still kept (``seq + 1`` when none is).
    oldest: int


#: Called with the position ``(epoch, seq)`` a kept publication got, or the
#: exception that says why it got none.
KeptDone = Callable[["tuple[str, int] | BaseException"], None]


class BackplaneStats(NamedTuple):
    """A backplane's figures for metrics (:meth:`Backplane.stats`)."""

    connected: bool
    queued_messages: int  # waiting to be published
    queued_bytes: int
    dropped_messages: int  # cross-node messages lost since start (queue full, link down)
    reconnects: int  # sessions opened after a lost or failed one
    accepted: int = 0  # messages from Redis that passed every check
    rejected: Mapping[str, int] = _NO_REJECTIONS  # dropped messages and entries, by reason


class Backplane:
    """The interface between a hub and the rest of its cluster.

    The hub calls :meth:`bind` once, :meth:`start` when its server starts
    serving and :meth:`stop` when it shuts down; in between it reports every
    client that opens or closes, and hands over what it cannot deliver
    locally.  All methods but ``start``/``stop``/``cluster_clients`` are
    synchronous and never block: a backplane buffers and sends in the
    background.
    """

    #: True when there is no other node (the hub then skips the routing work).
    is_local: bool = False

    def __init__(self) -> None:
        self.node_id = uuid.uuid4().hex[:16]
        self._hub: BackplaneHub | None = None
        self._topic_hub: TopicHub | None = None

    def bind(self, hub: BackplaneHub) -> None:
        """Called once by the hub: ``hub`` is where routed work is delivered."""
        if self._hub is not None and self._hub is not hub:
            raise RuntimeError("this backplane already serves another hub")
        self._hub = hub

    def bind_topics(self, topics: TopicHub) -> None:
        """Called once by the hub: where publications of other nodes are delivered."""
        self._topic_hub = topics

    @property
    def connected(self) -> bool:
        """Whether this node is joined to its cluster right now (a local one always is)."""
        return True

    async def start(self) -> None:
        """Connect; return once the registry is loaded (or the first attempt failed)."""

    async def stop(self) -> None:
        """Leave the cluster: withdraw this node's registrations, disconnect."""

    def client_added(self, client_id: str, ip_key: str, event: str) -> None:
        """A client opened on this node."""

    def client_removed(self, client_id: str, ip_key: str, event: str) -> None:
        """A client of this node closed."""

    def owner(self, client_id: str) -> str | None:
        """The other node that has ``client_id`` connected (per the registry), or None."""
        return None

    def ip_count(self, key: str) -> int:
        """Connections from IP key ``key`` on the other live nodes."""
        return 0

    def send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        """Route a message to a client of another node.

        ``data`` is a ``str`` to be encoded with the client's encoding on its
        node, or payload bytes with ``text`` saying which frame type.  Raises
        :class:`ClientNotFound` when no live node has that ID; returns False
        when the outgoing buffer is above its high-water mark (slow down) or
        the message had to be dropped.
        """
        raise ClientNotFound(client_id)

    def broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> None:
        """Hand a broadcast to every other node (this node has already delivered it).

        ``exclude`` holds only the excluded IDs that are not connected here.
        """

    async def cluster_clients(self) -> list[str]:
        """Every live node's client IDs."""
        hub = self._hub
        return [c[0] for c in hub.local_clients()] if hub is not None else []

    def stats(self) -> BackplaneStats:
        """The figures metrics report (read when scraped)."""
        return BackplaneStats(True, 0, 0, 0, 0)

    # Topics: this node's part of every topic, told as it changes.

    def topic_followed(self, name: str) -> None:
        """A local client now follows ``name``, and none did before."""

    def topic_unfollowed(self, name: str) -> None:
        """The last local subscriber of ``name`` left."""

    def topic_joined(self, client_id: str, name: str, path: str) -> None:
        """Local client ``client_id`` (connected to ``path``) subscribed to ``name``."""

    def topic_left(self, client_id: str, name: str) -> None:
        """Local client ``client_id`` left ``name`` (unsubscribed or closed)."""

    def publish_topic(self, name: str, payload: bytes, text: bool, exclude: frozenset[str]) -> None:
        """Hand a publication to the other nodes that follow ``name`` (this node
        has already delivered it); ``exclude`` holds only IDs not connected here."""

    async def topic_presence(self, name: str) -> dict[str, tuple[str, str]]:
        """The subscribers of ``name`` on the other live nodes: client ID → (node, path)."""
        return {}

    # Topic histories kept by the cluster (Redis Streams): positions are given
    # where the history is, and every node delivers in its order.

    def keep_history(self, size: int, ttl: float) -> bool:
        """Keep each topic's last ``size`` publications (for ``ttl`` seconds, 0:
        no age limit) in the cluster; False if this backplane cannot."""
        return False

    def publish_kept(
        self,
        name: str,
        payload: bytes,
        text: bool,
        exclude: frozenset[str],
        done: KeptDone | None = None,
    ) -> None:
        """Keep a publication in ``name``'s history and hand it to every node that
        follows ``name``, this one included; :class:`HistoryUnavailable` if it
        cannot be sent now.  ``done`` hears its position (or why it got none)."""
        raise HistoryUnavailable("this backplane keeps no history")

    async def topic_ready(self, name: str) -> None:
        """Return once this node receives every publication of ``name`` kept from now on."""

    async def read_history(self, name: str, after: int) -> HistoryRead:
        """``name``'s history: its position and what it keeps after sequence ``after``."""
        raise HistoryUnavailable("this backplane keeps no history")

    async def history_position(self, name: str) -> tuple[str, int]:
        """``name``'s latest position ``(epoch, seq)``, its epoch made (seq 0) if it has none."""
        raise HistoryUnavailable("this backplane keeps no history")

    # The direct streams of wshub.v1 clients (one per client ID), kept where
    # the topic histories are (keep_history) and heard by the client's node.

    def follow_direct(self, client_id: str) -> None:
        """A ``wshub.v1`` client opened here: hear its direct stream."""

    def unfollow_direct(self, client_id: str) -> None:
        """The ``wshub.v1`` client left this node."""

    async def direct_ready(self, client_id: str) -> None:
        """Until this node hears ``client_id``'s direct stream."""
        raise HistoryUnavailable("this backplane keeps no history")

    def send_direct(
        self, client_id: str, payload: bytes, text: bool, ttl: float, routed: bytes | str | None
    ) -> bool:
        """Keep a direct message in ``client_id``'s stream; its node delivers it.

        ``routed`` None: the client is connected here (its stream is made if
        it has none).  Otherwise the message as a raw ``send`` would route it,
        for an ID without a direct stream (a raw client).  False: slow down."""
        raise HistoryUnavailable("this backplane keeps no history")

    async def read_direct(self, client_id: str, after: int, ttl: float) -> HistoryRead:
        """``client_id``'s direct stream: its position and what it keeps after ``after``."""
        raise HistoryUnavailable("this backplane keeps no history")

    async def direct_position(self, client_id: str, ttl: float) -> tuple[str, int]:
        """``client_id``'s direct stream's position, its epoch made (seq 0) if it has none."""
        raise HistoryUnavailable("this backplane keeps no history")


class LocalBackplane(Backplane):
    """The default: this process is the whole cluster."""

    is_local = True


def make_backplane(value: object) -> Backplane:
    """``None`` → :class:`LocalBackplane`; ``"redis://…"`` → :class:`RedisBackplane`."""
    if value is None:
        return LocalBackplane()
    if isinstance(value, Backplane):
        return value
    if isinstance(value, str):
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("redis", "rediss", "unix"):
            from .redis import RedisBackplane

            return RedisBackplane(value)
        raise ValueError(f"unsupported backplane URL {value!r}: use redis://host:port/db")
    raise TypeError(f"backplane must be None, a redis:// URL or a Backplane, not {type(value)}")
