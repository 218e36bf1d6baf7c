"""The ASGI lifespan starts and stops the hub's backplane, with or without a wrapped app."""

from __future__ import annotations

import asyncio
from typing import Any

from wshub import WebSocket
from wshub.backplane import Backplane


class RecordingBackplane(Backplane):
    """A backplane that only records when the hub starts and stops it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


async def _drive_lifespan(app: Any) -> list[str]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await asyncio.wait_for(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send), 5)
    return sent


async def test_lifespan_without_app_starts_and_stops_the_backplane() -> None:
    backplane = RecordingBackplane()
    ws = WebSocket(backplane=backplane)
    sent = await _drive_lifespan(ws.asgi())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert backplane.calls == ["start", "stop"]


async def test_lifespan_of_a_wrapped_app_starts_and_stops_the_backplane() -> None:
    backplane = RecordingBackplane()
    ws = WebSocket(backplane=backplane)
    app_saw: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            app_saw.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                # The hub joined the cluster before the app said it was ready.
                assert backplane.calls == ["start"]
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    sent = await _drive_lifespan(ws.asgi(app))
    assert app_saw == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert backplane.calls == ["start", "stop"]
