"""The hub's events: who listens to what, and how callbacks are run.

:class:`Events` keeps the handlers registered with ``on`` / ``off``, runs
them (plain functions or coroutines, in order; a coroutine makes the rest
wait in a task) and turns what they raise into the ``"error"`` event.  It
delivers each message to the handlers of its client's path
(:meth:`Events.deliver`, the hot path); it knows a client only as a
:class:`MessageSource`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..encodings import decode_text
from ..transport.link import Link

__all__ = ["Callback", "CloseEvent", "Events", "MessageSource"]

log = logging.getLogger("wshub")

Callback = Callable[..., Any]

# Named events never start with "/"; a path event always does, so no URL
# path can take the name of one ("/join" is a path, "join" the topic event).
_RESERVED_EVENTS = ("open", "close", "error", "message", "join", "leave")

# Results of these exact types are never awaitable: answered without
# inspect.isawaitable, whose ABC check costs about 250 ns.  A handler such
# as ``lambda cid, data: ws.send(cid, data)`` returns a bool each message.
_PLAIN_RESULTS = frozenset((bool, int, float, str, bytes))


def _awaitable(result: object) -> bool:
    """Whether a handler's ``result`` is to be awaited (inlined in
    :meth:`Events.deliver`, the hot path)."""
    return result is not None and type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)


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


class MessageSource(Protocol):
    """The client a message comes from, as :meth:`Events.deliver` sees it."""

    id: str
    event: str  # the event its messages go to: "message" or its URL path
    encoding: str
    link: Link  # released when an asynchronous handler is done


class Events:
    """Handlers by event name; running them; the ``"error"`` event."""

    __slots__ = ("_tasks", "handlers")

    def __init__(self) -> None:
        #: Event name → its callbacks, in the order they were registered.
        #: Read on every message; the dict itself is never replaced.
        self.handlers: dict[str, list[Callback]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------ registration

    @staticmethod
    def event_name(name: object) -> str:
        """``name`` checked and normalized (``"/"`` is ``"message"``); raises if unknown."""
        if not isinstance(name, str) or not name:
            raise TypeError("event name must be a non-empty str")
        if name not in _RESERVED_EVENTS and not name.startswith("/"):
            raise ValueError(
                f"unknown event {name!r}: use open, message, close, error, join, leave or a /path"
            )
        return "message" if name == "/" else name

    def add(self, name: str, callback: Callback) -> None:
        """Register ``callback`` for the (normalized) event ``name``."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        self.handlers.setdefault(name, []).append(callback)

    def remove(self, name: str, callback: Callback) -> None:
        """Remove one registration of ``callback`` for ``name``; ValueError if there is none."""
        if name == "/":
            name = "message"
        handlers = self.handlers.get(name)
        if not handlers or callback not in handlers:
            raise ValueError(f"{callback!r} is not registered for {name!r}")
        handlers.remove(callback)
        if not handlers:
            del self.handlers[name]

    # ----------------------------------------------------------------- running

    def emit(
        self,
        name: str,
        args: tuple[Any, ...],
        client_id: str | None,
        done: Callable[[], None] | None = None,
    ) -> bool:
        """Run the handlers of ``name`` with ``args``; True if all finished synchronously.

        An awaitable result makes the rest run in a task; ``done`` is called
        when that task ends (that is how a client's next message waits).  An
        exception in a handler is logged and, with a ``client_id``, emitted
        as ``"error"`` for that client.
        """
        handlers = self.handlers.get(name)
        if not handlers:
            return True
        return self._run(client_id, name, list(handlers), args, done)

    def emit_error(self, client_id: str, exc: Exception) -> None:
        """The ``"error"`` event for ``client_id``."""
        handlers = self.handlers.get("error")
        if handlers:
            self._run(None, "error", list(handlers), (client_id, exc), None)

    def callback_failed(self, client_id: str | None, name: str, exc: Exception) -> None:
        """A handler of ``name`` raised ``exc``: log it, and report it as ``"error"``."""
        log.error("exception in the %r callback", name, exc_info=exc)
        if name != "error" and client_id is not None:
            self.emit_error(client_id, exc)

    def deliver(self, client: MessageSource, data: str | bytes) -> bool:
        """One message from ``client`` to the handlers of its event.

        Returns False while an asynchronous handler still runs: the link then
        holds the client's next events until ``client.link.release()``.
        """
        handlers = self.handlers.get(client.event)
        if not handlers:
            return True
        if type(data) is str and client.encoding != "utf8":
            data = decode_text(data, client.encoding)  # never fails: as Node's toString
        if len(handlers) == 1:
            cb = handlers[0]
            try:
                result = cb(client.id, data)
            except Exception as exc:
                self.callback_failed(client.id, client.event, exc)
                return True
            # (_awaitable, inlined: one call less per message)
            if result is None or type(result) in _PLAIN_RESULTS or not inspect.isawaitable(result):
                return True
            link = client.link
            task = asyncio.ensure_future(
                self._finish(client.id, client.event, result, [], (client.id, data))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _t: link.release())
            return False
        return self._run(
            client.id, client.event, list(handlers), (client.id, data), client.link.release
        )

    def _run(
        self,
        client_id: str | None,
        name: str,
        handlers: list[Callback],
        args: tuple[Any, ...],
        done: Callable[[], None] | None,
    ) -> bool:
        for i, cb in enumerate(handlers):
            try:
                result = cb(*args)
            except Exception as exc:
                self.callback_failed(client_id, name, exc)
                continue
            if _awaitable(result):
                task = asyncio.ensure_future(
                    self._finish(client_id, name, result, handlers[i + 1 :], args)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                if done is not None:
                    task.add_done_callback(lambda _t: done())
                return False
        return True

    async def _finish(
        self,
        client_id: str | None,
        name: str,
        first: Awaitable[Any],
        rest: list[Callback],
        args: tuple[Any, ...],
    ) -> None:
        try:
            await first
        except Exception as exc:
            self.callback_failed(client_id, name, exc)
        for cb in rest:
            try:
                result = cb(*args)
                if _awaitable(result):
                    await result
            except Exception as exc:
                self.callback_failed(client_id, name, exc)
