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

    __slots__ = ("_asks", "_group", "_send", "_senders", "_turns")

    def __init__(
        self,
        send: Callable[[Any, list[Ask[Question]]], Coroutine[Any, Any, None]],
        group: int | None = None,
        in_flight: int = 8,
    ) -> None:
        self._send = send
        self._group = group
        self._turns = asyncio.Semaphore(in_flight)
        self._asks: list[Ask[Question]] = []
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
        for start in range(0, len(asks), group):
            sender = asyncio.ensure_future(self._send_group(client, asks[start : start + group]))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send_group(self, client: Any, asks: list[Ask[Question]]) -> None:
        async with self._turns:
            if not all(answer.done() for _, answer in asks):
                await self._send(client, asks)
