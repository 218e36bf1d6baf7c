"""Questions to Redis asked in one loop iteration, sent together.

A burst of clients (thousands reconnecting at once after a node restart)
asks Redis for stream positions and history reads all in the same few loop
iterations.  Sent one round trip each, they queue for the connection pool
and the last ones wait past the reader's timeout.  An :class:`AskBatch`
collects the questions of one iteration and hands them to its ``send``
coroutine in groups, which puts each group in one pipeline and answers
every question with its own reply or exception.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

Question = TypeVar("Question")

#: A question and the future its answer (a reply, or the exception that
#: stands for it) goes to.
Ask = tuple[Question, "asyncio.Future[Any]"]


class AskBatch(Generic[Question]):
    """The questions asked since the loop last ran the batch's sender.

    ``send(client, asks)`` sends one group and must answer every ask's
    future that is not done (an ask given up on is cancelled) with a reply
    or an exception instance; ``group``: the most questions in one group
    (None: all of the iteration's); ``in_flight``: the most groups sent at
    a time (the others wait their turn without holding a connection of
    the pool, which the node's own traffic needs as well).
    """

    __slots__ = ("_asks", "_group", "_in_flight", "_send", "_senders", "_waiting")

    def __init__(
        self,
        send: Callable[[Any, list[Ask[Question]]], Coroutine[Any, Any, None]],
        group: int | None = None,
        in_flight: int = 8,
    ) -> None:
        self._send = send
        self._group = group
        self._in_flight = in_flight
        self._asks: list[Ask[Question]] = []
        # Groups not sent yet, with the client to send them with.
        self._waiting: deque[tuple[Any, list[Ask[Question]]]] = deque()
        self._senders: set[asyncio.Task[None]] = set()

    async def ask(self, client: Any, question: Question) -> Any:
        """The answer to ``question``: Redis's reply, or an exception
        instance (returned, not raised: the caller words the error)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        if not self._asks:
            loop.call_soon(self._start, client)
        self._asks.append((question, answer))
        return await answer

    def _start(self, client: Any) -> None:
        asks, self._asks = self._asks, []
        group = self._group or len(asks)
        self._waiting.extend(
            (client, asks[start : start + group]) for start in range(0, len(asks), group)
        )
        self._send_waiting()

    def _send_waiting(self) -> None:
        """Send the waiting groups while fewer than ``in_flight`` are out."""
        senders = self._senders
        while self._waiting and len(senders) < self._in_flight:
            client, asks = self._waiting.popleft()
            if all(answer.done() for _, answer in asks):
                continue  # every one given up on
            sender = asyncio.ensure_future(self._send(client, asks))
            senders.add(sender)
            sender.add_done_callback(functools.partial(self._sent, asks))

    def _sent(self, asks: list[Ask[Question]], sender: asyncio.Task[None]) -> None:
        self._senders.discard(sender)
        failure = None if sender.cancelled() else sender.exception()
        if failure is not None:
            # A sender that broke answers its asks with what broke it.
            for _, answer in asks:
                if not answer.done():
                    answer.set_result(failure)
        self._send_waiting()
