"""Topics: which local clients follow which topic; publishing; presence.

:class:`Topics` keeps, for this process, every followed topic (a
:class:`Topic` with its subscribers) and every client's topics, and keeps
the two in step: ``subscribe`` / ``unsubscribe`` / a client's close.  A
publication is queued for the topic's subscribers with the frame built once
per compression group (:func:`~wshub.hub.fanout.queue_to_all`, as
``broadcast`` does), then handed to the backplane for the other nodes.

The backplane is told when this process starts or stops following a topic
(its first subscriber comes, its last one goes), so that a node listens in
the cluster only to the topics its clients follow, and of every join and
leave (cluster-wide presence).  :class:`TopicsPort` is what the backplane
calls in return (:class:`~wshub.backplane.TopicHub`).

A :class:`Topic` is the one place per topic where its state lives.

With a history in the cluster (``cluster``: Redis Streams), a publication is
not delivered here when it is made: the backplane writes it to the topic's
stream and every node, this one included, delivers it when it comes back
from Redis with its position (:meth:`Topics.deliver_kept`), so that all
nodes deliver in one order.  Each topic remembers the last position it
delivered (``Topic.cursor``) to tell ``wshub.v1`` subscribers of a new epoch
or of publications this node missed, and may hold a resuming subscriber's
live messages while its replay is read (:meth:`Topics.hold`).  A replay can
reach further than this node has delivered (its pub/sub connection lags
behind the read, or it is reading back what it missed): the subscriber then
keeps that position (``Topic.replayed``) until live delivery passes it, and
is not sent those publications a second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

from ..backplane import Backplane, HistoryRead, KeptDone
from ..errors import ClientNotFound, HistoryUnavailable, TopicLimitError
from ..transport.link import Link
from .cluster_history import ClusterHistory
from .events import Events
from .fanout import queue_to_all
from .history import HistoryStore, Position
from .options import check_int
from .stats import HubStats

__all__ = [
    "MAX_TOPIC_BYTES",
    "PresenceInfo",
    "Subscriber",
    "Topic",
    "Topics",
    "TopicsPort",
    "check_topic",
]

log = logging.getLogger("wshub")

#: The longest topic name, in bytes of UTF-8.
MAX_TOPIC_BYTES = 256


def check_topic(name: object) -> str:
    """``name`` if it is a valid topic name; TypeError or ValueError saying why not."""
    if not isinstance(name, str):
        raise TypeError(f"topic must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("topic must not be empty")
    try:
        size = len(name) if name.isascii() else len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("topic is not valid Unicode (it has a lone surrogate)") from None
    if size > MAX_TOPIC_BYTES:
        raise ValueError(f"topic longer than {MAX_TOPIC_BYTES} bytes of UTF-8")
    return name


def path_of(event: str) -> str:
    """The URL path of a client whose messages go to ``event``."""
    return "/" if event == "message" else event


class Subscriber(Protocol):
    """A local client as the topics see it (the registry's ``Client``)."""

    @property
    def id(self) -> str: ...

    @property
    def event(self) -> str: ...

    @property
    def link(self) -> Link: ...


class PresenceInfo(NamedTuple):
    """Where a subscriber of a topic is connected (a value of ``presence()``)."""

    #: The node it is connected to (``ws.backplane.node_id`` of that node).
    node: str
    #: The URL path it connected to.
    path: str


#: Builds the message a ``wshub.v1`` subscriber receives for a publication:
#: ``(topic, position or None, payload, is_text) -> JSON text`` (UTF-8).
Envelope = Callable[[str, "Position | None", bytes, bool], bytes]

#: Builds the notice a ``wshub.v1`` subscriber receives when this node's
#: delivery of a topic jumped: ``(topic, last delivered, new position,
#: (first, last) missed or None for a new epoch) -> JSON text``.
GapNotice = Callable[[str, Position, Position, "tuple[int, int] | None"], bytes]

#: A live message held for a resuming subscriber: its position and its envelope.
Held = list[tuple[Position, bytes]]


class Kept(NamedTuple):
    """A publication that came back from the cluster's history, to deliver."""

    payload: bytes
    text: bool
    excluded: frozenset[str] | None
    position: Position


class Topic:
    """One topic that clients of this process follow."""

    __slots__ = ("catching_up", "cursor", "framed", "holding", "name", "replayed", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        #: With a history in the cluster: the last position delivered here.
        self.cursor: Position | None = None
        #: While the publications this node missed are read back from the
        #: cluster's history: the live ones that came meanwhile (else None).
        self.catching_up: list[Kept] | None = None
        #: Framed subscribers whose live messages are held while their replay
        #: is read from the cluster's history (client ID → what came).
        self.holding: dict[str, Held] = {}
        #: Framed subscribers that were sent the history up to a position this
        #: node has not delivered yet (client ID → that position): publications
        #: at or below it are not sent to them again.  Empty but from such a
        #: resume until the next publication passes that position.
        self.replayed: dict[str, Position] = {}
        #: Client ID → client, in the order they subscribed.
        self.subscribers: dict[str, Subscriber] = {}
        #: The subscribers (a subset) that get publications wrapped in the
        #: ``wshub.v1`` envelope, with their position.
        self.framed: dict[str, Subscriber] = {}


class Topics:
    """The topics of this process's clients."""

    __slots__ = (
        "_backplane",
        "_catch_ups",
        "_clients",
        "_events",
        "by_client",
        "by_name",
        "cluster",
        "envelope",
        "gap_notice",
        "history",
        "limit",
    )

    def __init__(
        self,
        clients: Mapping[str, Subscriber],
        events: Events,
        backplane: Backplane,
        limit: int = 1000,
    ) -> None:
        self._clients = clients
        self._events = events
        self._backplane = backplane
        #: Topic name → :class:`Topic`, for every topic with a local subscriber.
        self.by_name: dict[str, Topic] = {}
        #: Client ID → its topics (name → :class:`Topic`), in subscription order;
        #: only clients with at least one.
        self.by_client: dict[str, dict[str, Topic]] = {}
        #: The most topics one client may follow (``max_topics_per_client``).
        self.limit = limit
        #: Where publications get their position and are kept (None: no history).
        self.history: HistoryStore | None = None
        #: How ``wshub.v1`` subscribers get a publication (set by that layer).
        self.envelope: Envelope | None = None
        #: How they are told of a jump in a topic's positions (set by that layer).
        self.gap_notice: GapNotice | None = None
        #: The topic histories of the cluster (Redis Streams), instead of
        #: ``history``: publications are delivered as they come back from Redis.
        self.cluster: ClusterHistory | None = None
        self._catch_ups: set[asyncio.Future[None]] = set()

    @staticmethod
    def check_limit(value: object) -> int:
        limit = check_int("max_topics_per_client", value)
        if limit < 1:
            raise ValueError("max_topics_per_client must be >= 1")
        return limit

    def _client(self, client_id: str) -> Subscriber:
        try:
            return self._clients[client_id]
        except (KeyError, TypeError):
            raise ClientNotFound(client_id) from None

    # ----------------------------------------------------------- subscriptions

    def subscribe(self, client_id: str, name: str, *, framed: bool = False) -> bool:
        """Add ``client_id`` to topic ``name``; False if it was already there.

        ``framed``: the client gets publications in the ``wshub.v1`` envelope.
        """
        client = self._client(client_id)
        check_topic(name)
        followed = self.by_client.get(client_id)
        if followed is not None and name in followed:
            return False
        if followed is None:
            followed = {}
        elif len(followed) >= self.limit:
            raise TopicLimitError(client_id, self.limit)
        topic = self.by_name.get(name)
        if topic is None:
            topic = self.by_name[name] = Topic(name)
            self._backplane.topic_followed(name)
        topic.subscribers[client_id] = client
        if framed:
            topic.framed[client_id] = client
        # Keyed by the topic's own name object: one string per topic, however
        # many clients follow it.
        followed[topic.name] = topic
        self.by_client[client_id] = followed
        self._backplane.topic_joined(client_id, name, path_of(client.event))
        self._events.emit("join", (client_id, name), client_id)
        return True

    def unsubscribe(self, client_id: str, name: str) -> bool:
        """Remove ``client_id`` from topic ``name``; False if it was not there."""
        self._client(client_id)
        if not isinstance(name, str):
            raise TypeError(f"topic must be a str, not {type(name).__name__}")
        followed = self.by_client.get(client_id)
        topic = followed.pop(name, None) if followed is not None else None
        if topic is None:
            return False
        if not followed:
            del self.by_client[client_id]
        self._leave(topic, client_id)
        return True

    def client_closed(self, client_id: str) -> None:
        """``client_id`` is gone: it leaves every topic it followed."""
        followed = self.by_client.pop(client_id, None)
        if followed:
            for topic in followed.values():
                self._leave(topic, client_id)

    def _leave(self, topic: Topic, client_id: str) -> None:
        subscribers = topic.subscribers
        del subscribers[client_id]
        topic.framed.pop(client_id, None)
        topic.holding.pop(client_id, None)
        topic.replayed.pop(client_id, None)
        name = topic.name
        self._backplane.topic_left(client_id, name)
        if not subscribers:
            del self.by_name[name]
            self._backplane.topic_unfollowed(name)
        self._events.emit("leave", (client_id, name), client_id)

    def topics_of(self, client_id: str) -> list[str]:
        """The topics of local client ``client_id``, in the order it subscribed."""
        self._client(client_id)
        followed = self.by_client.get(client_id)
        return list(followed) if followed else []

    def subscribers(self, name: str) -> list[str]:
        """IDs of the local subscribers of ``name``, in the order they subscribed."""
        topic = self.by_name.get(name) if isinstance(name, str) else None
        if topic is None:
            check_topic(name)
            return []
        return list(topic.subscribers)

    # --------------------------------------------------------------- publishing

    def publish(
        self,
        name: str,
        payload: bytes,
        text: bool,
        exclude: Iterable[str],
        done: KeptDone | None = None,
    ) -> int:
        """Queue a message for the subscribers of ``name`` here, hand it to the other
        nodes; return how many local subscribers it was queued for.

        With ``cluster`` (a history in Redis): hand it to the backplane, which
        raises HistoryUnavailable if it cannot send it now, and return how many
        local subscribers it is for; ``done`` hears its position.
        """
        topic = self.by_name.get(name) if type(name) is str else None
        if topic is None:
            check_topic(name)
        excluded = set(exclude) if exclude else None
        if self.cluster is not None:
            self._backplane.publish_kept(
                name, payload, text, frozenset(excluded) if excluded else frozenset(), done
            )
            if topic is None:
                return 0
            if not excluded:
                return len(topic.subscribers)
            return sum(1 for cid in topic.subscribers if cid not in excluded)
        history = self.history
        position = (
            None if history is None else history.append(name, payload, text, time.monotonic())
        )
        count = 0 if topic is None else self.deliver(topic, payload, text, excluded, position)
        backplane = self._backplane
        if not backplane.is_local:
            # The other nodes need only the excluded IDs that are not here.
            clients = self._clients
            remote_excluded = (
                frozenset(c for c in excluded if c not in clients) if excluded else frozenset()
            )
            backplane.publish_topic(name, payload, text, remote_excluded)
        return count

    def deliver(
        self,
        topic: Topic,
        payload: bytes,
        text: bool,
        excluded: set[str] | frozenset[str] | None,
        position: Position | None = None,
    ) -> int:
        """Queue one message for the subscribers of ``topic`` but ``excluded``
        (``wshub.v1`` ones get it in their envelope, with ``position``)."""
        subscribers = topic.subscribers
        framed = topic.framed
        if framed and self.envelope is not None:
            plain = [
                c
                for cid, c in subscribers.items()
                if cid not in framed and not (excluded and cid in excluded)
            ]
            wrapped = [c for cid, c in framed.items() if not (excluded and cid in excluded)]
            count = queue_to_all(plain, payload, text) if plain else 0
            if wrapped:
                message = self.envelope(topic.name, position, payload, text)
                if position is not None and (topic.holding or topic.replayed):
                    wrapped, kept = self._past_replays(topic, wrapped, position, message)
                    count += kept
                count += queue_to_all(wrapped, message, True)
            return count
        if excluded:
            receivers = [c for cid, c in subscribers.items() if cid not in excluded]
        else:
            receivers = list(subscribers.values())
        return queue_to_all(receivers, payload, text)

    @staticmethod
    def _past_replays(
        topic: Topic, wrapped: list[Subscriber], position: Position, message: bytes
    ) -> tuple[list[Subscriber], int]:
        """Of the framed receivers of the publication at ``position``: those it
        goes to now, and how many hold it until their replay is sent; those
        whose replay sent it already get nothing (their mark goes once a
        publication passes it, or another epoch comes)."""
        holding = topic.holding
        replayed = topic.replayed
        live = []
        held_count = 0
        for client in wrapped:
            cid = client.id
            held = holding.get(cid)
            if held is not None:  # resuming: kept until its replay is sent
                held.append((position, message))
                held_count += 1
                continue
            mark = replayed.get(cid)
            if mark is not None:
                if mark.epoch == position.epoch and position.seq <= mark.seq:
                    continue  # in its replay
                del replayed[cid]
            live.append(client)
        return live, held_count

    def deliver_kept(
        self,
        topic: Topic,
        payload: bytes,
        text: bool,
        excluded: frozenset[str] | None,
        position: Position,
    ) -> int:
        """Deliver a publication that came back from the cluster's history
        with ``position``; tell ``wshub.v1`` subscribers first when the
        topic's positions jumped (a new epoch, or publications this node did
        not hear while its link to Redis was down)."""
        if topic.catching_up is not None:
            topic.catching_up.append(Kept(payload, text, excluded, position))
            return 0
        last = topic.cursor
        if last is not None:
            if position.epoch == last.epoch:
                if position.seq <= last.seq:
                    return 0  # delivered already
                if position.seq > last.seq + 1 and self.cluster is not None:
                    # Missed while this node's link to Redis was down: read
                    # them back, holding what comes meanwhile.
                    topic.catching_up = [Kept(payload, text, excluded, position)]
                    task = asyncio.ensure_future(self._catch_up(topic, last))
                    self._catch_ups.add(task)
                    task.add_done_callback(self._catch_ups.discard)
                    return 0
            else:
                self._notify_gap(topic, last, position, None)
        topic.cursor = position
        return self.deliver(topic, payload, text, excluded, position)

    async def _catch_up(self, topic: Topic, last: Position) -> None:
        """Deliver what ``topic``'s history keeps after ``last``, then what came
        live meanwhile; a gap notice for what it no longer keeps."""
        cluster = self.cluster
        assert cluster is not None
        read: HistoryRead | None
        try:
            read = await cluster.read(topic.name, last.seq)
        except HistoryUnavailable as exc:
            log.warning("topic %r: cannot read back what this node missed: %s", topic.name, exc)
            read = None
        else:
            log.info(
                "topic %r: read back %d publications after %d that this node missed",
                topic.name,
                len(read.entries),
                last.seq,
            )
        held, topic.catching_up = topic.catching_up or [], None
        if self.by_name.get(topic.name) is not topic:
            return  # nobody here follows it any more
        if read is not None and read.epoch == last.epoch:
            if read.oldest > last.seq + 1:
                missed = (last.seq + 1, read.oldest - 1)
                self._notify_gap(topic, last, Position(last.epoch, read.oldest), missed)
            for entry in read.entries:
                if entry.seq > last.seq:
                    position = Position(last.epoch, entry.seq)
                    topic.cursor = position
                    self.deliver(topic, entry.payload, entry.text, entry.exclude or None, position)
        elif held:
            first = held[0].position
            if first.epoch == last.epoch:
                self._notify_gap(topic, last, first, (last.seq + 1, first.seq - 1))
            topic.cursor = Position(first.epoch, first.seq - 1)
        for kept in held:
            self.deliver_kept(topic, kept.payload, kept.text, kept.excluded, kept.position)

    def _notify_gap(
        self, topic: Topic, last: Position, position: Position, missed: tuple[int, int] | None
    ) -> None:
        notice = self.gap_notice
        if notice is None or not topic.framed:
            return
        holding = topic.holding
        replayed = topic.replayed
        receivers = [
            c
            for cid, c in topic.framed.items()
            if cid not in holding and not _replayed_to(replayed.get(cid), position)
        ]
        if receivers:
            queue_to_all(receivers, notice(topic.name, last, position, missed), True)

    def hold(self, client_id: str, name: str) -> Held:
        """Hold the live messages of framed subscriber ``client_id`` of ``name``
        (it subscribed a moment ago) until :meth:`release`."""
        held: Held = []
        self.by_name[name].holding[client_id] = held
        return held

    def release(self, client_id: str, name: str, held: Held, sent: Position | None = None) -> bool:
        """Stop holding (``held``, from :meth:`hold`); False if the client left
        the topic meanwhile (or subscribed again).

        ``sent``: the position the client was given its history up to (its
        replay, or where it starts).  If this node has not delivered that far
        yet (it reads back what it missed, or its pub/sub connection lags
        behind the read), the publications up to there are not sent to the
        client again when they come."""
        topic = self.by_name.get(name)
        if topic is None or topic.holding.get(client_id) is not held:
            return False
        del topic.holding[client_id]
        if sent is not None and sent.seq:  # (at seq 0 nothing came yet)
            cursor = topic.cursor
            if cursor is None or cursor.epoch != sent.epoch or cursor.seq < sent.seq:
                topic.replayed[client_id] = sent
        return True

    def position(self, name: str) -> Position | None:
        """The latest position of ``name`` known here: in this process's history,
        or (with ``cluster``) the last one delivered here."""
        history = self.history
        if history is not None:
            return history.position(name, time.monotonic())
        topic = self.by_name.get(name)
        return None if topic is None else topic.cursor

    # ----------------------------------------------------------------- presence

    def local_presence(self, name: str) -> dict[str, PresenceInfo]:
        """The local subscribers of ``name`` with where they are."""
        topic = self.by_name.get(name)
        if topic is None:
            return {}
        node = self._backplane.node_id
        return {cid: PresenceInfo(node, path_of(c.event)) for cid, c in topic.subscribers.items()}

    async def presence(self, name: str) -> dict[str, PresenceInfo]:
        """Every subscriber of ``name`` on every live node, local ones first."""
        check_topic(name)
        found = self.local_presence(name)
        backplane = self._backplane
        if not backplane.is_local:
            remote = await backplane.topic_presence(name)
            for client_id, (node, path) in remote.items():
                found.setdefault(client_id, PresenceInfo(node, path))
        return found


def _replayed_to(mark: Position | None, position: Position) -> bool:
    """Whether a subscriber whose replay went up to ``mark`` has everything
    before ``position`` (so that a gap notice up to it is not for it)."""
    return mark is not None and mark.epoch == position.epoch and mark.seq >= position.seq - 1


class TopicsPort:
    """What the backplane calls on the topics it serves (:class:`~wshub.backplane.TopicHub`)."""

    __slots__ = ("_events", "_stats", "_topics")

    def __init__(self, topics: Topics, events: Events, stats: HubStats) -> None:
        self._topics = topics
        self._events = events
        self._stats = stats

    def follows(self, name: str) -> bool:
        return name in self._topics.by_name

    def followed_topics(self) -> list[str]:
        return list(self._topics.by_name)

    def subscriptions(self, name: str) -> dict[str, str]:
        topic = self._topics.by_name.get(name)
        if topic is None:
            return {}
        return {cid: path_of(c.event) for cid, c in topic.subscribers.items()}

    def deliver_publication(
        self,
        name: str,
        payload: bytes,
        text: bool,
        exclude: frozenset[str],
        position: tuple[str, int] | None = None,
    ) -> int:
        topic = self._topics.by_name.get(name)
        if topic is None:
            return 0
        topics = self._topics
        if position is not None and topics.cluster is not None:
            kept = topics.deliver_kept(topic, payload, text, exclude or None, Position(*position))
            self._stats.messages_sent += kept
            return kept
        history = topics.history
        # Without a history in the cluster (a backplane that keeps none, or a
        # node of the cluster without history_size): a position given here,
        # per node, if this node keeps a history in memory.
        position = (
            None if history is None else history.append(name, payload, text, time.monotonic())
        )
        count = topics.deliver(topic, payload, text, exclude or None, position)
        self._stats.messages_sent += count
        return count

    def remote_joined(self, client_id: str, name: str) -> None:
        if name in self._topics.by_name:
            self._events.emit("join", (client_id, name), None)

    def remote_left(self, client_id: str, name: str) -> None:
        if name in self._topics.by_name:
            self._events.emit("leave", (client_id, name), None)
