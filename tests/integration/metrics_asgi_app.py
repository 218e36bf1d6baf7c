"""An ASGI app for the metrics tests: a hub with ``metrics_path`` wrapping a plain app.

Served by uvicorn (tests/integration/test_metrics.py): WebSockets on any
path echo; ``/metrics`` is the hub's exposition, answered by the adapter
before the wrapped app; every other HTTP path is the wrapped app's.
"""

from __future__ import annotations

from typing import Any

from wshub import WebSocket

ws = WebSocket(metrics_path="/metrics", ping_delay=0)


@ws.on("message")
def echo(client_id: str, data: str | bytes) -> None:
    ws.send(client_id, data)


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"inner app: {scope['path']}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = ws.asgi(inner)
