"""The ``wshub.v1`` subprotocol, server side (``docs/protocol.md``).

A client that offers ``wshub.v1`` (and gets it: the hub lists it in
``subprotocols`` when the pub/sub layer is on) talks JSON text frames to
this module instead of to the application's ``"message"`` handlers: it
subscribes (optionally resuming after a position), publishes, unsubscribes,
and receives publications and direct messages wrapped in an envelope with
their position.  Raw clients never reach this module.

Everything a client sends is parsed, validated and bounded here; a malformed
request is answered with an ``error`` message (the connection stays) and
anything that is not a JSON object closes the connection (1003 for a binary
frame, 1008 otherwise), each with one log line.

Ordering of a resume.  A ``subscribe`` with ``since`` is handled in one
synchronous step of the event loop: the replay is read from the history,
the ``subscribed`` answer and the replayed messages are queued on the
connection, and only then is the client added to the topic's subscribers.
No publication can run in between, so every later publication is queued
after the replay: in order, none twice.  A store that answers
asynchronously (Redis Streams) must keep that property by subscribing
first, holding live messages while the replay comes, and dropping those at
or below the last replayed sequence number.

With a history in the cluster (``Topics.cluster``) that is what happens: the
client is subscribed and its live messages held (``Topics.hold``); once this
node hears the topic's channel the history is read from Redis; then the
``subscribed`` answer, the gap (if any), the replay, and the held messages
above the position the read answered go out, in that order.  The node may
not have delivered that far yet (it is reading back what it missed while
its link to Redis was down, or its pub/sub connection lags behind the
read): ``Topics.release`` marks the client, so those publications are not
sent to it a second time when they come.  A publication
is answered (``published``, with its position) when Redis has kept it; if
Redis cannot be reached, a ``publish`` or ``subscribe`` is answered with
the error ``unavailable`` (the client is not subscribed).  The direct
streams are then in Redis too (``direct_cluster``): see "direct streams in
the cluster" below.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..encodings import encode_str
from ..errors import (
    ClientNotFound,
    ConnectionClosedError,
    HistoryUnavailable,
    TopicLimitError,
)
from ..logging import refusal_log
from ..protocol.frames import CloseCode
from .cluster_history import ClusterDirect
from .history import HistoryStore, Position, Replay
from .stats import HubStats
from .topics import Topics, check_topic

if TYPE_CHECKING:
    from .registry import Client

__all__ = ["SUBPROTOCOL", "Authorize", "ProtocolV1"]

log = logging.getLogger("wshub")

#: The subprotocol name a client offers in ``Sec-WebSocket-Protocol``.
SUBPROTOCOL = "wshub.v1"
#: The protocol version in ``welcome``.
VERSION = 1

#: ``authorize(client_id, action, topic) -> bool``; action is
#: ``"subscribe"`` or ``"publish"``.
Authorize = Callable[[str, str, str], bool]

# Bounds of the fields a client sends (topics: check_topic's 256 bytes).
MAX_EPOCH_CHARS = 64
MAX_SEQ = 2**63 - 1
MAX_REQUEST_ID_CHARS = 64
#: The most messages a ``subscribe`` may ask for with ``"history": N``.
MAX_HISTORY_REQUEST = 1000

#: The most ``{``, ``[`` and ``,`` a request may hold outside its strings (a
#: request is one object of a few members).  A frame of many small values
#: (``[[],[],...]``) takes about 25 times its size in memory to parse, and
#: seconds of the event loop for a few MiB: it is refused before parsing.
MAX_REQUEST_ITEMS = 256

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# A JSON string literal (RFC 8259 section 7), in one pass.
_json_string = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


class BadRequest(ValueError):
    """A well-formed JSON object that is not a valid request (answered with ``error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def default_authorize(client_id: str, action: str, topic: str) -> bool:
    """Without an ``authorize`` hook: anyone may subscribe, nobody may publish."""
    return action == "subscribe"


def position_json(position: Position | None) -> dict[str, Any] | None:
    return None if position is None else {"epoch": position.epoch, "seq": position.seq}


def data_fields(payload: bytes, text: bool) -> str:
    """The JSON of ``"data"`` (and ``"binary"``) for a payload, without braces."""
    if text:
        try:
            return '"data":' + _dumps(payload.decode("utf-8"))
        except UnicodeDecodeError:
            pass  # a text message in another encoding: sent as its bytes
    return '"data":"' + base64.b64encode(payload).decode("ascii") + '","binary":true'


def envelope(
    kind: str, topic: str | None, position: Position | None, payload: bytes, text: bool
) -> bytes:
    """One ``message`` (a publication) or ``direct`` envelope, as UTF-8 JSON."""
    head = '{"type":"' + kind + '"'
    if topic is not None:
        head += ',"topic":' + _dumps(topic)
    if position is not None:
        head += ',"epoch":' + _dumps(position.epoch) + ',"seq":' + str(position.seq)
    return (head + "," + data_fields(payload, text) + "}").encode("utf-8")


def publication(topic: str, position: Position | None, payload: bytes, text: bool) -> bytes:
    return envelope("message", topic, position, payload, text)


def gap_notice(
    topic: str | None, last: Position, position: Position, missed: tuple[int, int] | None
) -> bytes:
    """The ``gap`` a subscriber gets when this node's delivery of ``topic``
    (None: the client's direct stream) jumped from ``last`` to ``position``
    (a cluster's history)."""
    gap: dict[str, Any] = {"type": "gap"}
    if topic is not None:
        gap["topic"] = topic
    if missed is None:
        gap["reason"] = "reset"
    else:
        gap.update(reason="truncated", **{"from": missed[0], "to": missed[1]})
    gap["since"] = position_json(last)
    gap["position"] = position_json(Position(position.epoch, position.seq - 1))
    return _dumps(gap).encode("utf-8")


def items(text: str) -> int:
    return text.count("{") + text.count("[") + text.count(",")


def too_many_items(text: str) -> bool:
    """Whether the JSON ``text`` holds more than MAX_REQUEST_ITEMS objects,
    arrays and commas outside its strings (a published text may be JSON)."""
    return items(text) > MAX_REQUEST_ITEMS and items(_json_string.sub("", text)) > MAX_REQUEST_ITEMS


def parse_since(value: object) -> Position | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("bad_request", '"since" must be an object {"epoch", "seq"} or null')
    epoch = value.get("epoch")
    seq = value.get("seq")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
        raise BadRequest(
            "bad_request", f'"since.epoch" must be a string of 1-{MAX_EPOCH_CHARS} characters'
        )
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise BadRequest("bad_request", '"since.seq" must be an integer >= 0')
    return Position(epoch, seq)


def parse_history(request: dict[str, Any], since: Position | None) -> int:
    """``"history": N`` of a ``subscribe``: the last N messages (0: none)."""
    value = request.get("history")
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_HISTORY_REQUEST:
        raise BadRequest(
            "bad_request", f'"history" must be an integer from 0 to {MAX_HISTORY_REQUEST}'
        )
    if value and since is not None:
        raise BadRequest("bad_request", '"history" and "since" cannot go together')
    return value


def last_messages(position: Position, count: int) -> Position:
    """Where a replay of the last ``count`` messages up to ``position`` starts."""
    return Position(position.epoch, max(0, position.seq - count))


def parse_data(request: dict[str, Any]) -> tuple[bytes, bool]:
    data = request.get("data")
    binary = request.get("binary", False)
    if not isinstance(data, str):
        raise BadRequest("bad_request", '"data" must be a string')
    if binary is True:
        try:
            return base64.b64decode(data, validate=True), False
        except (binascii.Error, ValueError):
            raise BadRequest("bad_request", '"data" is not valid base64') from None
    if binary is not False:
        raise BadRequest("bad_request", '"binary" must be true or false')
    # A lone surrogate (valid JSON: "\\ud800") becomes U+FFFD, as the hub's
    # publish of such a str: every subscriber gets valid UTF-8.
    return encode_str(data, "utf8")


class Session:
    """What the layer keeps of one ``wshub.v1`` connection."""

    __slots__ = ("client", "greeted", "held", "last", "open_position", "opening")

    def __init__(self, client: Client, open_position: Position | None) -> None:
        self.client = client
        #: True once ``hello`` was answered: direct messages go out live.
        self.greeted = False
        #: The direct stream's position when the connection opened.
        self.open_position = open_position
        # With the direct streams in the cluster: the last direct position
        # sent, the live ones held while the stream is read (else None), and
        # the task asking for the stream's position at the opening.
        self.last: Position | None = None
        self.held: list[tuple[Position, bytes, bool]] | None = None
        self.opening: asyncio.Future[None] | None = None


class ProtocolV1:
    """The ``wshub.v1`` layer of one hub: sessions, requests, direct streams."""

    __slots__ = (
        "_tasks",
        "authorize",
        "direct_cluster",
        "direct_history",
        "sessions",
        "stats",
        "stats_errors",
        "topics",
    )

    def __init__(
        self,
        topics: Topics,
        direct_history: HistoryStore | None,
        direct_cluster: ClusterDirect | None = None,
        stats: HubStats | None = None,
    ) -> None:
        self.topics = topics
        #: Where resumes are counted (for metrics); None: not counted.
        self.stats = stats
        #: Client ID → its direct messages (None: no positions for them).
        self.direct_history = direct_history
        #: The direct streams kept by the cluster (Redis), instead of
        #: ``direct_history``: see "Direct streams in the cluster" below.
        self.direct_cluster = direct_cluster
        self.authorize: Authorize = default_authorize
        #: Client ID → :class:`Session`, for the open ``wshub.v1`` clients.
        self.sessions: dict[str, Session] = {}
        #: How many requests were answered with an error or a close.
        self.stats_errors = 0
        # The resumes waiting for the cluster's history (kept referenced).
        self._tasks: set[asyncio.Future[None]] = set()
        topics.envelope = publication
        topics.gap_notice = gap_notice

    # ------------------------------------------------------------ connections

    def opened(self, client: Client) -> None:
        """``client`` connected speaking ``wshub.v1`` (its messages come here)."""
        cluster = self.direct_cluster
        if cluster is not None:
            session = self.sessions[client.id] = Session(client, None)
            cluster.follow(client.id)
            session.opening = self._spawn(self._open_kept(session, cluster))
            return
        history = self.direct_history
        # The stream exists from now on, so that what is sent while the
        # client is away is kept for it even if nothing was sent before.
        position = None if history is None else history.ensure(client.id, time.monotonic())
        self.sessions[client.id] = Session(client, position)

    def closed(self, client: Client) -> None:
        session = self.sessions.get(client.id)
        if session is not None and session.client is client:
            del self.sessions[client.id]
            if self.direct_cluster is not None:
                self.direct_cluster.unfollow(client.id)

    # --------------------------------------------------------- direct messages

    def send_direct(self, client: Client, payload: bytes, text: bool) -> bool:
        """``ws.send`` to a ``wshub.v1`` client: kept with a position (if
        enabled) and sent in a ``direct`` envelope once the client said hello."""
        cluster = self.direct_cluster
        if cluster is not None:  # delivered when it comes back from Redis
            return cluster.send(client.id, payload, text, None)
        history = self.direct_history
        position = (
            None if history is None else history.append(client.id, payload, text, time.monotonic())
        )
        session = self.sessions.get(client.id)
        if position is not None and (session is None or not session.greeted):
            return False  # kept: the client's hello replays it
        try:
            return client.link.send_message(envelope("direct", None, position, payload, text), True)
        except ConnectionClosedError:
            return False

    def keep_direct(self, client_id: str, payload: bytes, text: bool) -> bool:
        """``ws.send`` to an ID not connected here: kept if it has a direct
        stream (a ``wshub.v1`` client within its session); False otherwise."""
        history = self.direct_history
        now = time.monotonic()
        if history is None or history.position(client_id, now) is None:
            return False
        history.append(client_id, payload, text, now)
        return True

    # ------------------------------------------ direct streams in the cluster
    #
    # With direct_cluster, a direct message gets its position in Redis
    # (ClusterDirect.send, from any node) and comes back on the client's
    # direct channel, which the node the client is on hears from its
    # opening.  Before hello nothing is sent (the hello's read takes what
    # was kept); while a read is in flight (hello, or a catch-up after a
    # jump) the live ones are held, and those the read covered are dropped.

    def send_remote(self, client_id: str, payload: bytes, text: bool, routed: bytes | str) -> bool:
        """``ws.send`` to an ID not connected here, with direct streams in the
        cluster: kept in its stream if it has one, else routed as a raw send
        (``ClientNotFound`` now, or as an ``"error"`` event, if nobody has it)."""
        cluster = self.direct_cluster
        assert cluster is not None
        return cluster.send(client_id, payload, text, routed)

    def deliver_kept_direct(
        self, client_id: str, payload: bytes, text: bool, position: Position
    ) -> None:
        """A direct message that came back from the cluster's stream."""
        session = self.sessions.get(client_id)
        if session is None or not session.greeted:
            return  # kept in the stream: the hello's read takes it
        if session.held is not None:
            session.held.append((position, payload, text))
            return
        self._deliver_direct(session, position, payload, text)

    def _deliver_direct(
        self, session: Session, position: Position, payload: bytes, text: bool
    ) -> None:
        cluster = self.direct_cluster
        assert cluster is not None
        last = session.last
        client = session.client
        if last is not None and last.epoch == position.epoch:
            if position.seq <= last.seq:
                return  # sent already (the read covered it)
            if position.seq > last.seq + 1:
                # Missed here (this node's link to Redis was down): read back first.
                session.held = [(position, payload, text)]
                self._spawn(self._catch_up(session, cluster, last))
                return
        elif last is not None:  # a new epoch: Redis lost the stream
            with contextlib.suppress(ConnectionClosedError):
                client.link.send_message(gap_notice(None, last, position, None), True)
        session.last = position
        with contextlib.suppress(ConnectionClosedError):
            client.link.send_message(envelope("direct", None, position, payload, text), True)

    async def _open_kept(self, session: Session, cluster: ClusterDirect) -> None:
        """The direct stream's position at the opening (made if it has none)."""
        try:
            session.open_position = await cluster.ensure(session.client.id)
        except HistoryUnavailable as exc:
            log.info("wshub.v1 client %s: direct stream not readable: %s", session.client.id, exc)

    async def _catch_up(self, session: Session, cluster: ClusterDirect, last: Position) -> None:
        try:
            replay: Replay | None = await cluster.replay(session.client.id, last)
        except HistoryUnavailable:
            replay = None
        if self.sessions.get(session.client.id) is not session:
            return
        if replay is None:  # unreadable: the hole is said, then what came
            held = session.held or []
            first = held[0][0]
            missed = (last.seq + 1, first.seq - 1)
            with contextlib.suppress(ConnectionClosedError):
                session.client.link.send_message(gap_notice(None, last, first, missed), True)
            session.last = Position(first.epoch, first.seq - 1)
        else:
            self._send_replay(session.client, None, last, replay, replay.position)
            session.last = replay.position
        self._release(session)

    async def _hello_kept(
        self, session: Session, cluster: ClusterDirect, since: Position | None
    ) -> None:
        """``hello`` with the direct stream in the cluster (see ``_hello``)."""
        client = session.client
        if session.opening is not None:
            await session.opening
        start = since if since is not None else session.open_position
        replay: Replay | None = None
        if start is not None:
            try:
                replay = await cluster.replay(client.id, start)
            except HistoryUnavailable as exc:
                log.info("wshub.v1 client %s: direct stream not readable: %s", client.id, exc)
        if self.sessions.get(client.id) is not session:
            return
        latest = None if replay is None else replay.position
        self._welcome(client, since, replay, latest if since is not None else session.open_position)
        if since is not None:
            self._count_resume(replay)
            self._send_replay(client, None, since, replay, latest)
        elif replay is not None and start is not None:
            self._send_replay(client, None, start, replay, latest)
        session.last = latest
        self._release(session)

    def _release(self, session: Session) -> None:
        """Send the live direct messages held while the stream was read."""
        held, session.held = session.held or [], None
        for position, payload, text in held:
            if session.held is not None:  # a jump started another read
                session.held.append((position, payload, text))
            else:
                self._deliver_direct(session, position, payload, text)

    def _spawn(self, coroutine: Any) -> asyncio.Future[None]:
        task: asyncio.Future[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- requests

    def on_message(self, client: Client, data: str | bytes) -> None:
        if not isinstance(data, str):
            self._close(client, CloseCode.UNSUPPORTED_DATA, "wshub.v1 takes text frames")
            return
        if too_many_items(data):
            self._close(client, CloseCode.POLICY_VIOLATION, "wshub.v1: too many JSON values")
            return
        try:
            request = json.loads(data)
        except (ValueError, RecursionError):
            self._close(client, CloseCode.POLICY_VIOLATION, "wshub.v1: not JSON")
            return
        if not isinstance(request, dict):
            self._close(client, CloseCode.POLICY_VIOLATION, "wshub.v1: not a JSON object")
            return
        request_id = request.get("id")
        try:
            if request_id is not None and not (
                (type(request_id) is int and abs(request_id) <= MAX_SEQ)
                or (isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_CHARS)
            ):
                request_id = None
                raise BadRequest("bad_request", '"id" must be an integer or a short string')
            kind = request.get("type")
            if kind == "publish":
                self._publish(client, request, request_id)
            elif kind == "subscribe":
                self._subscribe(client, request, request_id)
            elif kind == "unsubscribe":
                self._unsubscribe(client, request, request_id)
            elif kind == "hello":
                self._hello(client, request)
            else:
                raise BadRequest("bad_request", f"unknown type {str(kind)[:32]!r}")
        except BadRequest as exc:
            self._error(client, exc.code, str(exc), request_id)

    def _topic(self, request: dict[str, Any]) -> str:
        try:
            return check_topic(request.get("topic"))
        except (TypeError, ValueError) as exc:
            raise BadRequest("bad_topic", str(exc)) from None

    def _allowed(self, client: Client, action: str, topic: str) -> None:
        try:
            allowed = self.authorize(client.id, action, topic)
        except Exception:
            log.exception("wshub.v1 authorize hook failed for %s", client.id)
            allowed = False
        if not allowed:
            raise BadRequest("forbidden", f"not allowed to {action} this topic")

    def _publish(self, client: Client, request: dict[str, Any], request_id: object) -> None:
        topic = self._topic(request)
        payload, text = parse_data(request)
        self._allowed(client, "publish", topic)
        topics = self.topics
        if topics.cluster is not None:
            self._publish_kept(client, topic, payload, text, request_id)
            return
        topics.publish(topic, payload, text, ())
        if request_id is not None:
            history = topics.history
            position = None if history is None else history.position(topic, time.monotonic())
            self._reply(
                client,
                {
                    "type": "published",
                    "topic": topic,
                    "position": position_json(position),
                    "id": request_id,
                },
            )

    def _publish_kept(
        self, client: Client, topic: str, payload: bytes, text: bool, request_id: object
    ) -> None:
        """Publish into the cluster's history; answered once Redis kept it."""

        def done(result: tuple[str, int] | BaseException) -> None:
            if request_id is None:
                return
            if isinstance(result, BaseException):
                self._error(client, "unavailable", f"not published: {result}", request_id)
                return
            answer = {
                "type": "published",
                "topic": topic,
                "position": position_json(Position(*result)),
                "id": request_id,
            }
            self._reply(client, answer)

        try:
            self.topics.publish(topic, payload, text, (), done)
        except HistoryUnavailable as exc:
            raise BadRequest("unavailable", f"not published: {exc}") from None

    def _subscribe(self, client: Client, request: dict[str, Any], request_id: object) -> None:
        topic = self._topic(request)
        since = parse_since(request.get("since"))
        last = parse_history(request, since)
        self._allowed(client, "subscribe", topic)
        topics = self.topics
        followed = topics.by_client.get(client.id)
        if followed is not None and topic in followed:
            raise BadRequest("already_subscribed", "already subscribed to this topic")
        if followed is not None and len(followed) >= topics.limit:
            raise BadRequest("limit", f"at most {topics.limit} topics per client")
        if topics.cluster is not None:
            self._subscribe_kept(client, topic, since, request_id, last)
            return
        history = topics.history
        now = time.monotonic()
        replay: Replay | None = None
        if history is None:
            position = None
        elif since is None:
            position = history.ensure(topic, now)
            if last:  # the last messages, as if resumed from before them
                since = last_messages(position, last)
                replay = history.replay(topic, since, now)
        else:
            replay = history.replay(topic, since, now)
            position = replay.position
            self._count_resume(replay)
        self._answer_subscribe(client, topic, since, replay, position, request_id)
        try:
            topics.subscribe(client.id, topic, framed=True)
        except TopicLimitError:  # (checked above; kept for safety)
            raise BadRequest("limit", f"at most {topics.limit} topics per client") from None
        except ClientNotFound:
            pass  # its replay passed write_limit: closed with 1008, nothing to follow

    def _subscribe_kept(
        self, client: Client, topic: str, since: Position | None, request_id: object, last: int
    ) -> None:
        """Subscribe with the cluster's history: subscribed at once, live
        messages held until the history is read (see the module docstring)."""
        topics = self.topics
        try:
            topics.subscribe(client.id, topic, framed=True)
        except TopicLimitError:  # (checked by the caller; kept for safety)
            raise BadRequest("limit", f"at most {topics.limit} topics per client") from None
        held = topics.hold(client.id, topic)
        self._spawn(self._resume_kept(client, topic, since, request_id, held, last))

    async def _resume_kept(
        self,
        client: Client,
        topic: str,
        since: Position | None,
        request_id: object,
        held: list[tuple[Position, bytes]],
        last: int,
    ) -> None:
        topics = self.topics
        cluster = topics.cluster
        assert cluster is not None
        replay: Replay | None = None
        try:
            if since is None:
                position: Position | None = await cluster.ensure(topic)
                if last and position is not None:  # the last messages
                    since = last_messages(position, last)
                    replay = await cluster.replay(topic, since, client.id)
                    position = replay.position
            else:
                replay = await cluster.replay(topic, since, client.id)
                position = replay.position
                self._count_resume(replay)
        except HistoryUnavailable as exc:
            if topics.release(client.id, topic, held):
                with contextlib.suppress(Exception):
                    topics.unsubscribe(client.id, topic)
                self._error(client, "unavailable", f"history not readable: {exc}", request_id)
            return
        if not topics.release(client.id, topic, held, position):
            return  # unsubscribed or gone meanwhile
        self._answer_subscribe(client, topic, since, replay, position, request_id)
        # The live messages that came meanwhile, but those the read covered.
        link = client.link
        try:
            for at, message in held:
                if position is not None and at.epoch == position.epoch and at.seq <= position.seq:
                    continue
                link.send_message(message, True)
        except ConnectionClosedError:
            pass

    def _answer_subscribe(
        self,
        client: Client,
        topic: str,
        since: Position | None,
        replay: Replay | None,
        position: Position | None,
        request_id: object,
    ) -> None:
        """``subscribed``, then (with ``since``) the gap and the replayed messages."""
        answer: dict[str, Any] = {
            "type": "subscribed",
            "topic": topic,
            "position": position_json(position),
            "recovered": replay is not None and not replay.reset and replay.missing is None,
        }
        if request_id is not None:
            answer["id"] = request_id
        self._reply(client, answer)
        if since is not None:
            self._send_replay(client, topic, since, replay, position)

    def _count_resume(self, replay: Replay | None) -> None:
        """A client's ``since`` is answered with ``replay``: count how it went."""
        stats = self.stats
        if stats is None:
            return
        if replay is None or replay.reset:
            stats.resumed("reset")
        elif replay.missing is not None:
            stats.resumed("truncated")
        else:
            stats.resumed("recovered")

    def _send_replay(
        self,
        client: Client,
        topic: str | None,
        since: Position,
        replay: Replay | None,
        position: Position | None,
    ) -> None:
        """The ``gap`` (if any) and the replayed messages after ``since``."""
        if replay is None or replay.reset:
            gap: dict[str, Any] = {"type": "gap", "reason": "reset"}
        elif replay.missing is not None:
            first, last = replay.missing
            gap = {"type": "gap", "reason": "truncated", "from": first, "to": last}
        else:
            gap = {}
        if gap:
            if topic is not None:
                gap["topic"] = topic
            gap["since"] = position_json(since)
            gap["position"] = position_json(position)
            self._reply(client, gap)
        if replay is None or replay.reset or position is None:
            return
        kind = "direct" if topic is None else "message"
        epoch = position.epoch
        link = client.link
        try:
            for entry in replay.entries:
                link.send_message(
                    envelope(kind, topic, Position(epoch, entry.seq), entry.payload, entry.text),
                    True,
                )
        except ConnectionClosedError:
            pass

    def _unsubscribe(self, client: Client, request: dict[str, Any], request_id: object) -> None:
        topic = self._topic(request)
        if not self.topics.unsubscribe(client.id, topic):
            raise BadRequest("not_subscribed", "not subscribed to this topic")
        answer: dict[str, Any] = {"type": "unsubscribed", "topic": topic}
        if request_id is not None:
            answer["id"] = request_id
        self._reply(client, answer)

    def _hello(self, client: Client, request: dict[str, Any]) -> None:
        session = self.sessions.get(client.id)
        if session is None or session.client is not client:
            return
        if session.greeted:
            raise BadRequest("bad_request", "hello was already answered")
        since = parse_since(request.get("since"))
        cluster = self.direct_cluster
        if cluster is not None:
            session.greeted = True
            session.held = []  # the live ones, until the stream is read
            self._spawn(self._hello_kept(session, cluster, since))
            return
        history = self.direct_history
        now = time.monotonic()
        # Without "since": the direct messages sent since this connection
        # opened (before hello they are only kept), and "position" says
        # where they start.  With it: the latest position.
        start = since if since is not None else session.open_position
        replay: Replay | None = None
        latest: Position | None = None
        if history is not None:
            if start is None:
                latest = history.position(client.id, now)
                if latest is not None:
                    start = Position(latest.epoch, 0)
                    replay = history.replay(client.id, start, now)
            else:
                replay = history.replay(client.id, start, now)
                latest = replay.position
        self._welcome(client, since, replay, latest if since is not None else session.open_position)
        session.greeted = True
        if since is not None:
            self._count_resume(replay)
            self._send_replay(client, None, since, replay, latest)
        elif replay is not None and start is not None:
            self._send_replay(client, None, start, replay, latest)

    def _welcome(
        self, client: Client, since: Position | None, replay: Replay | None, shown: Position | None
    ) -> None:
        recovered = (
            since is not None and replay is not None and not replay.reset and not replay.missing
        )
        self._reply(
            client,
            {
                "type": "welcome",
                "version": VERSION,
                "client_id": client.id,
                "position": position_json(shown),
                "recovered": recovered,
            },
        )

    # ---------------------------------------------------------------- answers

    def _reply(self, client: Client, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosedError):
            client.link.send_message(_dumps(message).encode("utf-8"), True)

    def _error(self, client: Client, code: str, message: str, request_id: object) -> None:
        self.stats_errors += 1
        # A client may send bad requests as fast as it likes without being
        # closed: its lines share the refusals' token bucket.
        refusal_log.info(
            "wshub.v1 request of %s refused: %s (%s)",
            client.id,
            code,
            message,
            extra={"client_id": client.id},
        )
        answer: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request_id is not None:
            answer["id"] = request_id
        self._reply(client, answer)

    def _close(self, client: Client, code: int, reason: str) -> None:
        self.stats_errors += 1
        refusal_log.warning(  # one per connection, but connections are cheap
            "wshub.v1 client %s closed with %d: %s",
            client.id,
            code,
            reason,
            extra={"client_id": client.id, "close_code": code},
        )
        client.link.close(code, reason)
