"""The periodic ping: every ``ping_delay`` seconds, one Ping to every local client.

The pong timeout itself is the connection core's
(:mod:`wshub.protocol.connection`): a link given ``pong_timeout`` closes
with 1011 when the matching Pong does not come in time.  This part only
keeps the one hub-wide timer, running while there are clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from ..errors import ConnectionClosedError
from ..transport.link import Link
from .options import HubOptions

__all__ = ["PingTimer", "Pingable"]


class Pingable(Protocol):
    """A client as the ping timer sees it."""

    link: Link


class PingTimer:
    """One timer per hub: pings every client of ``clients`` each ``ping_delay``."""

    __slots__ = ("_clients", "_options", "_seq", "_timer")

    def __init__(self, clients: Mapping[str, Pingable], options: HubOptions) -> None:
        self._clients = clients
        self._options = options
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0

    def ping(self, link: Link, timeout: float) -> bool:
        """Ping ``link`` now (closing it with 1011 without a pong within ``timeout``).

        False when the link is not open or cannot ping (ASGI).
        """
        if not link.is_open or not link.can_ping:
            return False  # an ASGI link cannot ping (see wshub.asgi)
        self._seq += 1
        try:
            # The connection closes with 1011 if the pong does not come in time.
            return link.ping(self._seq.to_bytes(8, "big"), timeout)
        except ConnectionClosedError:
            return False

    def restart(self) -> None:
        """(Re)arm the timer for ``ping_delay`` from now, if there are clients to ping."""
        self.stop()
        delay = self._options.ping_delay
        if delay > 0 and self._clients:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(delay, self._ping_all)

    def ensure_running(self) -> None:
        """A client opened: start the timer unless it runs already."""
        if self._timer is None and self._options.ping_delay > 0:
            self.restart()

    def stop(self) -> None:
        """No pings until :meth:`restart` (the last client left)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _ping_all(self) -> None:
        self._timer = None
        timeout = self._options.pong_timeout
        for client in list(self._clients.values()):
            link = client.link
            if not link.awaiting_pong:
                # A ping still waiting for its pong keeps its deadline: a new
                # ping would restart the timer, and with ping_delay <
                # pong_timeout a dead client would never be closed.
                self.ping(link, timeout)
        self.restart()
