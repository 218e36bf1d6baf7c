"""Positions and a bounded history of messages per stream.

A *stream* is what a position counts: the publications of one topic, or the
direct messages of one client ID (``wshub.v1``).  Each message appended to
a stream gets a :class:`Position`: the stream's *epoch* (a random string
made when the stream's history is created on this process) and a sequence
number (1, 2, 3 ... within that epoch).  A client that says the last
position it saw gets back, from :meth:`HistoryStore.replay`, either every
later message still kept or an explicit answer that it cannot have them:
``reset`` (another epoch: the history it knew is gone) or ``missing`` (the
oldest messages it lacks were dropped by the bounds).

:class:`HistoryStore` is the interface the hub uses; :class:`MemoryHistory`
keeps the streams of one process in memory, bounded by ``size`` messages
per stream, ``ttl`` seconds per message and ``max_bytes`` for the whole
store (whole streams go first, the least recently written one first).  A
store shared by a cluster (Redis Streams) can take its place: it has to
give the same answers for the same sequence of calls.

Time is passed in (``now``, a monotonic clock), as in the protocol core.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from itertools import islice
from typing import NamedTuple, Protocol

__all__ = ["Entry", "HistoryStore", "MemoryHistory", "Position", "Replay", "new_epoch"]

#: What one kept message costs beyond its payload's bytes object, counted
#: against ``max_bytes``: the entry's tuple, its slot in the deque, its
#: sequence number and time (measured with tracemalloc, rounded up).
ENTRY_OVERHEAD = 160
#: What one stream costs with nothing kept (its object, two empty deques,
#: its epoch and its slot in the table), counted against ``max_bytes``.
STREAM_OVERHEAD = 1600


class Position(NamedTuple):
    """Where a message is in its stream."""

    epoch: str
    seq: int


class Entry(NamedTuple):
    """One kept message."""

    seq: int
    payload: bytes
    text: bool


class Replay(NamedTuple):
    """The answer to "what came after ``since``?"."""

    #: The kept messages after ``since``, oldest first (none after a reset).
    entries: list[Entry]
    #: The stream's latest position now (None: nothing kept for it).
    position: Position | None
    #: True when ``since`` belongs to no history kept here (another epoch,
    #: a stream dropped by the bounds, or a sequence number never given).
    reset: bool = False
    #: ``(first, last)`` sequence numbers dropped by the bounds before
    #: ``entries`` start; None when nothing is missing.
    missing: tuple[int, int] | None = None


def new_epoch() -> str:
    """A random epoch: 12 characters of URL-safe base64 (72 bits)."""
    return base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")


class HistoryStore(Protocol):
    """Where positions are given and messages kept (one process, or a cluster's store)."""

    def append(self, stream: str, payload: bytes, text: bool, now: float) -> Position:
        """Keep one message at the end of ``stream``; its position."""
        ...

    def replay(self, stream: str, since: Position, now: float) -> Replay:
        """What ``stream`` holds after ``since``."""
        ...

    def ensure(self, stream: str, now: float) -> Position:
        """The latest position of ``stream``, made (``seq`` 0) if it has none,
        so that a subscriber has a position to resume from before any message."""
        ...

    def position(self, stream: str, now: float) -> Position | None:
        """The latest position of ``stream`` (None: no history kept)."""
        ...

    def drop(self, stream: str) -> None:
        """Forget ``stream`` (its next message starts a new epoch)."""
        ...


class _Stream:
    __slots__ = ("bytes", "entries", "epoch", "seq", "times", "written")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = new_epoch()
        self.seq = 0
        self.entries: deque[Entry] = deque(maxlen=size)
        # When each entry was kept (a parallel deque: a float per entry).
        self.times: deque[float] = deque(maxlen=size)
        self.bytes = 0
        self.written = now


class MemoryHistory:
    """The histories of one process, in memory, within fixed bounds."""

    __slots__ = ("_streams", "_unwritten", "max_bytes", "size", "total_bytes", "ttl")

    def __init__(self, size: int, ttl: float = 0.0, max_bytes: int = 64 * 1024 * 1024) -> None:
        if size < 1:
            raise ValueError("a history keeps at least one message per stream")
        if ttl < 0 or max_bytes < 1:
            raise ValueError("ttl must be >= 0 and max_bytes >= 1")
        #: The most messages kept per stream.
        self.size = size
        #: How long a message is kept, in seconds (0: no age limit).
        self.ttl = ttl
        #: The most bytes (payloads plus ``ENTRY_OVERHEAD`` each) kept in all.
        self.max_bytes = max_bytes
        #: What the kept messages count against ``max_bytes`` now.
        self.total_bytes = 0
        # Least recently written first.
        self._streams: dict[str, _Stream] = {}
        # The streams made by ensure() and never written, oldest first: past
        # max_bytes they go before any stream with messages, so subscribes
        # to many new names cannot push the kept messages out.
        self._unwritten: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams

    def append(self, stream: str, payload: bytes, text: bool, now: float) -> Position:
        streams = self._streams
        state = streams.pop(stream, None)
        if state is None:
            state = self._new_stream(now)
        elif not state.seq:
            self._unwritten.pop(stream, None)
        streams[stream] = state  # now the most recently written
        entries = state.entries
        if len(entries) == self.size:
            self._forget(state, entries[0])
        state.seq += 1
        entries.append(Entry(state.seq, payload, text))
        state.times.append(now)
        state.written = now
        cost = len(payload) + ENTRY_OVERHEAD
        state.bytes += cost
        self.total_bytes += cost
        self._expire(state, now)
        self._trim(now)
        return Position(state.epoch, state.seq)

    def replay(self, stream: str, since: Position, now: float) -> Replay:
        state = self._live(stream, now)
        if state is None:
            return Replay([], None, reset=True)
        position = Position(state.epoch, state.seq)
        last = since.seq
        if since.epoch != state.epoch or last > state.seq or last < 0:
            return Replay([], position, reset=True)
        entries = state.entries
        oldest = entries[0].seq if entries else state.seq + 1
        if last + 1 >= oldest:
            return Replay(list(islice(entries, last + 1 - oldest, None)), position)
        return Replay(list(entries), position, missing=(last + 1, oldest - 1))

    def position(self, stream: str, now: float) -> Position | None:
        state = self._live(stream, now)
        return None if state is None else Position(state.epoch, state.seq)

    def ensure(self, stream: str, now: float) -> Position:
        state = self._live(stream, now)
        if state is None:
            state = self._streams[stream] = self._new_stream(now)
            self._unwritten[stream] = None
            self._trim(now)
        return Position(state.epoch, state.seq)

    def _new_stream(self, now: float) -> _Stream:
        state = _Stream(self.size, now)
        state.bytes = STREAM_OVERHEAD
        self.total_bytes += STREAM_OVERHEAD
        return state

    def drop(self, stream: str) -> None:
        state = self._streams.pop(stream, None)
        if state is not None:
            self.total_bytes -= state.bytes
            if not state.seq:
                self._unwritten.pop(stream, None)

    def kept(self, stream: str) -> int:
        """How many messages ``stream`` keeps now (for tests and metrics)."""
        state = self._streams.get(stream)
        return 0 if state is None else len(state.entries)

    # ------------------------------------------------------------------ bounds

    def _live(self, stream: str, now: float) -> _Stream | None:
        state = self._streams.get(stream)
        if state is not None:
            self._expire(state, now)
            if not state.entries and self.ttl and now - state.written > self.ttl:
                # Idle past the age limit with nothing left: forgotten, so
                # that idle streams cost nothing (a resume gets a reset).
                self.drop(stream)
                return None
        return state

    def _forget(self, state: _Stream, entry: Entry) -> None:
        cost = len(entry.payload) + ENTRY_OVERHEAD
        state.bytes -= cost
        self.total_bytes -= cost

    def _expire(self, state: _Stream, now: float) -> None:
        ttl = self.ttl
        if not ttl:
            return
        times = state.times
        entries = state.entries
        limit = now - ttl
        while times and times[0] < limit:
            times.popleft()
            self._forget(state, entries.popleft())

    def _trim(self, now: float) -> None:
        """Drop idle streams (a couple per call) and, past ``max_bytes``,
        the least recently written ones."""
        streams = self._streams
        if self.ttl:
            for _ in range(2):
                name = next(iter(streams))
                state = streams[name]
                if now - state.written <= self.ttl:
                    break
                self.drop(name)
        unwritten = self._unwritten
        while self.total_bytes > self.max_bytes and unwritten and len(streams) > 1:
            self.drop(next(iter(unwritten)))
        while self.total_bytes > self.max_bytes and len(streams) > 1:
            self.drop(next(iter(streams)))
        if self.total_bytes > self.max_bytes:
            # One stream alone over the budget: its oldest messages go.
            state = streams[next(iter(streams))]
            while self.total_bytes > self.max_bytes and len(state.entries) > 1:
                state.times.popleft()
                self._forget(state, state.entries.popleft())
