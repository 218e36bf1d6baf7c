"""``ws.asgi()`` paths that uvicorn and Hypercorn do not exercise, with hand-written ASGI events.

Both real servers offer the WebSocket Denial Response extension, so the
fallback for servers without it (close before accept) is checked here, as
are lifespan without a wrapped app and HTTP scopes passed to the wrapped app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wshub import WebSocket


class Peer:
    """The ASGI server side of one scope: scripted input, recorded output."""

    def __init__(self, *incoming: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in incoming:
            self.incoming.put_nowait(message)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(dict(message))


def ws_scope(extensions: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    raw = [(b"host", b"example.test")]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "websocket",
        "scheme": "ws",
        "path": "/room",
        "raw_path": b"/room",
        "query_string": b"a=1",
        "headers": raw,
        "client": ("192.0.2.7", 5000),
        "extensions": extensions or {},
    }


async def test_refusal_without_denial_extension_closes_the_handshake() -> None:
    ws = WebSocket(allow_origin=["https://good.example"])
    peer = Peer({"type": "websocket.connect"})
    await ws.asgi()(ws_scope(origin="https://evil.example"), peer.receive, peer.send)
    assert [m["type"] for m in peer.sent] == ["websocket.close"]
    assert peer.sent[0]["code"] == 1008
    assert ws.clients == []


async def test_refusal_with_denial_extension_sends_the_status() -> None:
    ws = WebSocket(allow_origin=["https://good.example"])
    peer = Peer({"type": "websocket.connect"})
    scope = ws_scope({"websocket.http.response": {}}, origin="https://evil.example")
    await ws.asgi()(scope, peer.receive, peer.send)
    assert peer.sent[0]["type"] == "websocket.http.response.start"
    assert peer.sent[0]["status"] == 403
    assert peer.sent[1] == {
        "type": "websocket.http.response.body",
        "body": b"origin not allowed\n",
    }


async def test_client_from_scope_gets_url_events_and_one_close() -> None:
    ws = WebSocket()
    events: list[Any] = []
    ws.on("open", lambda cid: events.append(("open", ws.url(cid).geturl())))
    ws.on("/room", lambda cid, data: events.append(("msg", data)) or ws.send(cid, data))
    ws.on("close", lambda cid, ev: events.append(("close", ev.code, ev.reason, ev.was_clean)))
    peer = Peer(
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.receive", "bytes": b"\x00"},
    )
    task = asyncio.ensure_future(ws.asgi()(ws_scope(), peer.receive, peer.send))
    for _ in range(500):  # the sender task delivers the two echoes
        if len(peer.sent) == 3:
            break
        await asyncio.sleep(0.01)
    peer.incoming.put_nowait({"type": "websocket.disconnect", "code": 4000, "reason": "bye"})
    await asyncio.wait_for(task, 5)
    assert events == [
        ("open", "ws://example.test/room?a=1"),
        ("msg", "hi"),
        ("msg", b"\x00"),
        ("close", 4000, "bye", True),
    ]
    accept = peer.sent[0]
    assert accept["type"] == "websocket.accept"
    names = [name for name, _ in accept["headers"]]
    assert names == [b"set-cookie"]
    assert peer.sent[1:] == [
        {"type": "websocket.send", "text": "hi"},
        {"type": "websocket.send", "bytes": b"\x00"},
    ]


async def test_lifespan_without_app_is_acknowledged() -> None:
    ws = WebSocket()
    peer = Peer({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await asyncio.wait_for(ws.asgi()({"type": "lifespan"}, peer.receive, peer.send), 5)
    assert [m["type"] for m in peer.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_other_scopes_go_to_the_wrapped_app() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    ws = WebSocket()
    wrapped = ws.asgi(app)
    peer = Peer()
    await wrapped({"type": "http"}, peer.receive, peer.send)
    await wrapped({"type": "lifespan"}, peer.receive, peer.send)
    assert seen == ["http", "lifespan"]
    assert peer.sent == []


async def test_mounted_under_a_prefix_keeps_the_full_path() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    ws = WebSocket()
    got: list[Any] = []
    ws.on("/ws/room", lambda cid, data: got.append(data))
    app = Starlette(routes=[Mount("/ws", app=ws.asgi())])
    scope = ws_scope()
    scope.update(path="/ws/room", raw_path=b"/ws/room", query_string=b"")
    peer = Peer({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "x"})
    peer.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(app(scope, peer.receive, peer.send), 5)
    assert got == ["x"]
