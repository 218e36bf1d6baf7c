"""Authenticate WebSocket clients in the handshake, with a token and per-path permissions.

Run::

    python examples/auth.py            # ws://127.0.0.1:8080/chat?token=alice-token
    python examples/auth.py --port 9000

A client proves who it is with a token, either in the query
(``?token=alice-token``) or, from a browser, which cannot set request
headers, as an extra subprotocol offer::

    new WebSocket(url, ["chat.v1", "token.alice-token"])

No token or an unknown one: HTTP 401.  A known token on a path its user may
not use: HTTP 403.  Accepted: the server speaks ``chat.v2`` and ``chat.v1``
and answers the first of them the client offered (never the ``token.*``
entry), and its first message is the user the hook attached, as JSON.
"""

from __future__ import annotations

import argparse
import json

from wshub import Handshake, HttpServer, Response, WebSocket

USERS = {"alice-token": "alice", "bob-token": "bob"}  # token → user
ALLOWED_PATHS = {"alice": {"/chat", "/admin"}, "bob": {"/chat"}}  # user → paths
TOKEN_PREFIX = "token."


def token_of(hs: Handshake) -> str | None:
    """The token from ``?token=`` or from a ``token.<token>`` subprotocol offer."""
    if "token" in hs.query_params:
        return hs.query_params["token"][0]
    for offer in hs.subprotocols:
        if offer.startswith(TOKEN_PREFIX):
            return offer[len(TOKEN_PREFIX) :]
    return None


def check(hs: Handshake) -> Response | None:
    """The handshake hook: refuse with 401/403, or attach the user and accept."""
    user = USERS.get(token_of(hs) or "")
    if user is None:
        return Response.text(401, "unauthorized\n", [("WWW-Authenticate", 'Bearer realm="chat"')])
    if hs.path not in ALLOWED_PATHS[user]:
        return Response.text(403, f"{user} may not use {hs.path}\n")
    hs.data = {"user": user}  # read back with ws.data(client_id)
    return None


server = HttpServer()
ws = WebSocket(server, subprotocols=["chat.v2", "chat.v1"], on_handshake=check)


@ws.on("open")
def welcome(client_id: str) -> None:
    ws.send(client_id, json.dumps(ws.data(client_id)))


def echo(client_id: str, data: str | bytes) -> None:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    ws.send(client_id, json.dumps({**ws.data(client_id), "text": data}))


ws.on("/chat", echo)  # messages are events named after the client's path
ws.on("/admin", echo)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server.run(args.host, args.port)  # until SIGINT/SIGTERM, then closes every client
