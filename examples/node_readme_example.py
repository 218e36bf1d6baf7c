"""The back-end example of the README of Node's ``@jadsonlucena/websocket``, in Python.

The Node original::

    const HttpServer = require('http').createServer((req, res) => res.end()).listen(80);
    const WebSocket = require('@jadsonlucena/websocket');
    var webSocket = new WebSocket(HttpServer);
    webSocket.on('open', clientId => console.log('Connect', clientId, webSocket.url(clientId)));
    webSocket.on('close', (clientId, e) => console.log('Close', clientId, e));
    webSocket.on('error', (clientId, e) => console.log('Error', clientId, e));
    webSocket.on('/chat', (clientId, data) => {
        console.log('Data', clientId, data);
        webSocket.send(clientId, data);                               // Single Client
        webSocket.clients.forEach(id => webSocket.send(id, data));    // Broadcast
    });

Run it (the Node original listens on port 80; here the port is an argument)::

    python examples/node_readme_example.py 8080

and connect a WebSocket to ``ws://127.0.0.1:8080/chat?token=123``: what you
send comes back twice, once as the single-client reply and once as the
broadcast, and every other client on the hub gets it once.
"""

from __future__ import annotations

import sys

from wshub import ClientNotFound, CloseEvent, HttpServer, Request, WebSocket


def end(request: Request) -> bytes:
    # The original's ``(req, res) => res.end()``: an empty 200 for plain requests.
    return b""


http_server = HttpServer(end)
web_socket = WebSocket(http_server)


@web_socket.on("open")
def opened(client_id: str) -> None:
    try:
        print("Connect", client_id, web_socket.url(client_id).geturl(), flush=True)
    except ClientNotFound as err:  # gone already: the original's try/catch
        print(err, flush=True)


@web_socket.on("close")
def closed(client_id: str, event: CloseEvent) -> None:
    print("Close", client_id, event, flush=True)


@web_socket.on("error")
def error(client_id: str, exc: Exception) -> None:
    print("Error", client_id, repr(exc), flush=True)


# web_socket.on("message", ...) would receive messages from clients on "/".
@web_socket.on("/chat")
def chat(client_id: str, data: str | bytes) -> None:
    print("Data", client_id, repr(data), flush=True)
    try:
        web_socket.send(client_id, data)  # single client
        for other in web_socket.clients:  # broadcast, as the original spells it
            web_socket.send(other, data)
    except ClientNotFound as err:
        print(err, flush=True)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    http_server.run(host="127.0.0.1", port=port)
