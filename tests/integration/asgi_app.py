"""The ASGI application the ASGI tests serve with uvicorn and Hypercorn (in a subprocess).

Paths:
  ``/``        echo
  ``/async``   echo from an ``async def`` callback that sleeps (in-order delivery)
  ``/chat``    broadcast to every client on /chat
  ``/id``      the hub sends the client its ID on open
  ``/cmd``     commands answered with results of hub methods on the caller
  ``/watch``   receives one JSON line per "close" event of any other client
Options come from environment variables (``WSHUB_TEST_*``).
"""

from __future__ import annotations

import asyncio
import json
import os

from wshub import CloseEvent, WebSocket

ws = WebSocket(
    limit_by_ip=int(os.environ.get("WSHUB_TEST_LIMIT_BY_IP", "256")),
    max_payload=int(os.environ.get("WSHUB_TEST_MAX_PAYLOAD", str(131072 * 20))),
    ping_delay=float(os.environ.get("WSHUB_TEST_PING_DELAY", "180")),
    pong_timeout=float(os.environ.get("WSHUB_TEST_PONG_TIMEOUT", "5")),
    secret=b"asgi tests",
)


@ws.on("open")
def opened(client_id: str) -> None:
    if ws.url(client_id).path == "/id":
        ws.send(client_id, client_id)


@ws.on("message")
def echo(client_id: str, data: str | bytes) -> None:
    ws.send(client_id, data)


@ws.on("/async")
async def slow_echo(client_id: str, data: str | bytes) -> None:
    # Later messages must wait for this one: the reply order proves it.
    await asyncio.sleep(0.02 if len(data) % 2 else 0.0)
    ws.send(client_id, data)


@ws.on("/chat")
def chat(client_id: str, data: str | bytes) -> None:
    ws.broadcast(data, path="/chat")


@ws.on("/cmd")
def command(client_id: str, data: str | bytes) -> None:
    words = str(data).split(" ", 2)
    name = words[0]
    reply: object
    if name == "ping":
        reply = ws.ping(client_id, pong_timeout=0.05)
    elif name == "no_delay":
        reply = ws.set_no_delay(client_id)
    elif name == "keep_alive":
        reply = ws.set_keep_alive(client_id, True, 1.0)
    elif name == "state":
        reply = ws.ready_state(client_id)
    elif name == "counters":
        reply = [ws.bytes_read(client_id), ws.bytes_written(client_id)]
    elif name == "url":
        reply = ws.url(client_id).geturl()
    elif name == "pause":
        reply = ws.pause(client_id)
    elif name == "close":
        reply = ws.close(client_id, int(words[1]), words[2] if len(words) > 2 else "")
    elif name == "clients":
        reply = len(ws.clients)
    else:
        reply = f"unknown command {name!r}"
    if name != "close":
        ws.send(client_id, json.dumps(reply))


@ws.on("close")
def closed(client_id: str, event: CloseEvent) -> None:
    note = {"id": client_id, "code": event.code, "reason": event.reason, "clean": event.was_clean}
    ws.broadcast(json.dumps(note), path="/watch")


app = ws.asgi()
