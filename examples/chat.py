"""A chat room on wshub's own server: a page on ``/`` and a WebSocket on ``/chat``.

Run::

    python examples/chat.py            # http://127.0.0.1:8080
    python examples/chat.py --port 0   # any free port (printed)

Open the page in two browser tabs: what one tab sends, every tab shows,
prefixed with the sender's client ID.  Reload a tab and its ID stays the
same: the hub remembers it through a signed session cookie.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from wshub import CloseEvent, HttpServer, Request, Response, WebSocket

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>wshub chat</title>
<h1>wshub chat</h1>
<p>You are <b id="me">connecting...</b></p>
<form id="form"><input id="text" autocomplete="off" autofocus> <button>Send</button></form>
<ul id="log"></ul>
<script>
const socket = new WebSocket(`ws://${location.host}/chat`);
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


def page(request: Request) -> Response:
    """Plain HTTP: the chat page on ``/``, 404 elsewhere."""
    if request.path == "/":
        return Response(PAGE, content_type="text/html; charset=utf-8")
    return Response.text(404, "Not Found\n")


server = HttpServer(page)
ws = WebSocket(server)


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


async def main(host: str, port: int) -> None:
    await server.serve(host, port)
    print(f"chat on http://{host}:{server.port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()  # every client gets a 1001 close first


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
