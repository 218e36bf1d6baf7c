"""A ``wshub.v1`` peer written by hand over the ``websockets`` client.

The JSON of docs/protocol.md, typed in by the test: a second client that
shares no code with ``wshub.client``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.conftest import Running

RECV_TIMEOUT = 10.0


class V1Peer:
    """One ``websockets`` connection offering ``wshub.v1``."""

    def __init__(self, conn: Any, cookie: str | None) -> None:
        self.conn = conn
        self.cookie = cookie

    @classmethod
    async def connect(cls, running: Running, cookie: str | None = None) -> V1Peer:
        headers = [("Cookie", cookie)] if cookie else None
        conn = await websockets.connect(
            running.url + "/",
            subprotocols=["wshub.v1"],  # type: ignore[list-item]
            additional_headers=headers,
            max_size=None,
        )
        assert conn.subprotocol == "wshub.v1"
        set_cookie = conn.response.headers.get("Set-Cookie")
        if set_cookie:
            cookie = set_cookie.split(";", 1)[0]
        return cls(conn, cookie)

    async def send(self, **message: Any) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), RECV_TIMEOUT)
        assert isinstance(raw, str), f"wshub.v1 sends text frames, got {raw!r}"
        message = json.loads(raw)
        assert isinstance(message, dict)
        return message

    async def recv_type(self, kind: str) -> dict[str, Any]:
        message = await self.recv()
        assert message["type"] == kind, message
        return message

    async def hello(self, since: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send(type="hello", since=since)
        return await self.recv_type("welcome")

    async def subscribe(self, topic: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send(type="subscribe", topic=topic, since=since)
        return await self.recv_type("subscribed")

    async def close(self) -> None:
        await self.conn.close()


def allow_all(client_id: str, action: str, topic: str) -> bool:
    return True
