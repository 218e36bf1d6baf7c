"""Echo over ASGI: the wshub hub served by uvicorn or Hypercorn.

Run it from this directory with either server::

    uvicorn asgi_echo:app --port 8000
    hypercorn asgi_echo:app --bind 127.0.0.1:8000

then connect a WebSocket client to ``ws://127.0.0.1:8000/``: every text or
binary message comes back unchanged.  Plain HTTP requests get 404 (there is
no wrapped ASGI app here; see ``fastapi_chat.py`` for one).
"""

from __future__ import annotations

from wshub import CloseEvent, WebSocket

ws = WebSocket()  # no HttpServer: the hub is served only through ASGI


@ws.on("message")  # messages from clients connected to "/"
def echo(client_id: str, data: str | bytes) -> None:
    ws.send(client_id, data)


@ws.on("close")
def closed(client_id: str, event: CloseEvent) -> None:
    print(f"client {client_id} left: {event.code} {event.reason!r}", flush=True)


app = ws.asgi()
