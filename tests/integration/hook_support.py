"""A handshake hook for the tests that cut one short: it waits until cancelled."""

from __future__ import annotations

import asyncio

from wshub import Handshake


class StuckHook:
    """An ``async`` ``on_handshake`` hook that never answers; ``started`` and
    ``cancelled`` say how far it got (``cancelled``: the server gave up on it)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, hs: Handshake) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
