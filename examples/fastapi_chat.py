"""A chat room inside a FastAPI application, served by uvicorn or Hypercorn.

FastAPI answers the plain HTTP routes (the page, a JSON count of clients);
every WebSocket connection goes to the wshub hub, which wraps the FastAPI
app.  Run it from this directory::

    uvicorn fastapi_chat:app --port 8000
    hypercorn fastapi_chat:app --bind 127.0.0.1:8000

and open http://127.0.0.1:8000/ in two browser tabs.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from wshub import CloseEvent, WebSocket

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>wshub + FastAPI chat</title>
<h1>wshub + FastAPI chat</h1>
<p>You are <b id="me">connecting...</b></p>
<form id="form"><input id="text" autocomplete="off" autofocus> <button>Send</button></form>
<ul id="log"></ul>
<script>
const scheme = location.protocol === "https:" ? "wss" : "ws";
const socket = new WebSocket(`${scheme}://${location.host}/chat`);
const log = (line) => {
  const li = document.createElement("li");
  li.textContent = line;
  document.getElementById("log").prepend(li);
};
socket.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (msg.welcome) document.getElementById("me").textContent = msg.welcome;
  else log(`${msg.from}: ${msg.text}`);
};
socket.onclose = (event) => log(`closed: ${event.code} ${event.reason}`);
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  socket.send(input.value);
  input.value = "";
};
</script>
"""

api = FastAPI(title="wshub chat")
ws = WebSocket()  # no HttpServer: served through ASGI only


@api.get("/", response_class=HTMLResponse)
def index() -> str:
    return PAGE


@api.get("/clients")
def clients() -> dict[str, int]:
    """How many chat clients are connected to this process."""
    return {"clients": len(ws.clients)}


@ws.on("open")
def welcome(client_id: str) -> None:
    ws.send(client_id, json.dumps({"welcome": client_id}))


@ws.on("/chat")
def chat(client_id: str, data: str | bytes) -> None:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    ws.broadcast(json.dumps({"from": client_id, "text": data}), path="/chat")


@ws.on("close")
def left(client_id: str, event: CloseEvent) -> None:
    ws.broadcast(json.dumps({"from": "server", "text": f"{client_id} left"}), path="/chat")


# WebSocket scopes go to the hub, everything else to FastAPI.
app = ws.asgi(api)
