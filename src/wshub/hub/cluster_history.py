"""Topic histories kept by the cluster (Redis Streams), as the hub reads them.

With a Redis backplane and ``history_size`` set, positions are given in
Redis when a publication is written there (``wshub.backplane.streams``), and
every node delivers a topic's publications from Redis in that order, with
those positions.  What :class:`~wshub.hub.history.MemoryHistory` answers
synchronously is asked of Redis here, so :class:`ClusterHistory` is
asynchronous and gives the same :class:`~wshub.hub.history.Replay` answers.

A read waits first until this node hears the topic's channel
(``Backplane.topic_ready``): what was published before the read is in the
stream, what comes after arrives live, and the caller drops the live ones at
or below the position the read answered (``protocol_v1``).

:class:`ClusterDirect` does the same for the direct streams of ``wshub.v1``
clients (one per client ID), which the client's node hears on their channel.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TypeVar

from ..backplane import Backplane, HistoryRead
from ..errors import HistoryUnavailable
from .history import Entry, Position, Replay

__all__ = ["ClusterDirect", "ClusterHistory", "replay_of"]

T = TypeVar("T")

#: The highest sequence number: reading "after" it reads the position only.
_END = 2**63 - 1


async def _ask(ready: Awaitable[None], question: Awaitable[T], timeout: float) -> T:
    """``question``'s answer once ``ready`` is (each within ``timeout``)."""
    try:
        await asyncio.wait_for(ready, timeout)
        return await asyncio.wait_for(question, timeout)
    except asyncio.TimeoutError:
        raise HistoryUnavailable(f"no answer from Redis within {timeout:g}s") from None
    finally:
        for waited in (ready, question):
            if inspect.iscoroutine(waited):
                waited.close()  # not awaited when a wait failed


def replay_of(read: HistoryRead, since: Position, client_id: str) -> Replay:
    """The :class:`Replay` for ``since`` (as ``MemoryHistory.replay`` answers it)
    of what a cluster's history holds, without the entries ``client_id`` was
    excluded from."""
    if read.epoch is None:
        return Replay([], None, reset=True)
    position = Position(read.epoch, read.seq)
    last = since.seq
    if since.epoch != read.epoch or last > read.seq or last < 0:
        return Replay([], position, reset=True)
    entries = [Entry(e.seq, e.payload, e.text) for e in read.entries if client_id not in e.exclude]
    if last + 1 >= read.oldest:
        return Replay(entries, position)
    return Replay(entries, position, missing=(last + 1, read.oldest - 1))


class ClusterHistory:
    """The asynchronous reads of the topic histories a backplane keeps."""

    __slots__ = ("_backplane", "timeout")

    def __init__(self, backplane: Backplane, timeout: float = 10.0) -> None:
        self._backplane = backplane
        #: The longest wait for Redis (the channel's subscription, then the read).
        self.timeout = timeout

    async def _ask(self, topic: str, question: Awaitable[T]) -> T:
        """``question``'s answer once this node hears ``topic``'s channel."""
        return await _ask(self._backplane.topic_ready(topic), question, self.timeout)

    async def replay(self, topic: str, since: Position, client_id: str) -> Replay:
        """What ``topic`` keeps after ``since`` for ``client_id``."""
        read = await self._ask(topic, self._backplane.read_history(topic, min(since.seq, _END)))
        return replay_of(read, since, client_id)

    async def read(self, topic: str, after: int) -> HistoryRead:
        """What ``topic``'s history keeps after sequence ``after``, as it is."""
        try:
            return await asyncio.wait_for(self._backplane.read_history(topic, after), self.timeout)
        except asyncio.TimeoutError:
            raise HistoryUnavailable(f"no answer from Redis within {self.timeout:g}s") from None

    async def ensure(self, topic: str) -> Position:
        """``topic``'s latest position, its epoch made (seq 0) if it has none,
        so that a subscriber has a position to resume from before any publication."""
        epoch, seq = await self._ask(topic, self._backplane.history_position(topic))
        return Position(epoch, seq)


class ClusterDirect:
    """The direct streams of ``wshub.v1`` clients, kept by the cluster.

    Each client ID's direct messages are a stream in Redis (like a topic's
    history, ``RedisBackplane.send_direct``), heard by the node the client
    is connected to (:meth:`follow`).  ``ttl``: seconds a direct message is
    kept, and its stream after the last message or connection.
    """

    __slots__ = ("_backplane", "timeout", "ttl")

    def __init__(self, backplane: Backplane, ttl: float, timeout: float = 10.0) -> None:
        self._backplane = backplane
        self.ttl = ttl
        #: The longest wait for Redis (the channel's subscription, then the read).
        self.timeout = timeout

    def follow(self, client_id: str) -> None:
        """``client_id`` connected here: this node hears its stream."""
        self._backplane.follow_direct(client_id)

    def unfollow(self, client_id: str) -> None:
        self._backplane.unfollow_direct(client_id)

    def send(self, client_id: str, payload: bytes, text: bool, routed: bytes | str | None) -> bool:
        """Keep a direct message (``routed``: see ``Backplane.send_direct``)."""
        return self._backplane.send_direct(client_id, payload, text, self.ttl, routed)

    async def ensure(self, client_id: str) -> Position:
        """The stream's latest position, its epoch made (seq 0) if it has none."""
        question = self._backplane.direct_position(client_id, self.ttl)
        epoch, seq = await _ask(_nothing(), question, self.timeout)
        return Position(epoch, seq)

    async def replay(self, client_id: str, since: Position) -> Replay:
        """What the stream keeps after ``since``, once this node hears it (what
        comes later arrives live)."""
        ready = self._backplane.direct_ready(client_id)
        question = self._backplane.read_direct(client_id, min(since.seq, _END), self.ttl)
        return replay_of(await _ask(ready, question, self.timeout), since, client_id)


async def _nothing() -> None:
    """Ready at once."""
