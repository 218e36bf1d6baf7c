"""The server side of ``graphql-transport-ws`` (the protocol of the graphql-ws npm client) on wshub.

Run::

    python examples/graphql_ws.py            # ws://127.0.0.1:8080/graphql
    python examples/graphql_ws.py --port 9000

There is no GraphQL engine here: the first field of the query names one of
two canned operations, and their arguments come from ``variables`` only::

    subscription ($from: Int!) { countdown(from: $from) }   # next {countdown: 3} .. 0, complete
    query ($text: String!) { echo(text: $text) }            # one next {echo: text}, complete

The protocol itself is complete: ``connection_init`` (its payload must carry
a known ``token``, else close 4403) → ``connection_ack``, ``ping``/``pong``,
``subscribe`` → ``next``* → ``complete`` or ``error``, the client's
``complete``, and the close codes of the protocol document (4400 invalid
message, 4401 subscribe before the ack, 4406 no subprotocol, 4408 no
``connection_init`` in time, 4409 duplicate operation ID, 4429 a second
``connection_init``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from wshub import CloseEvent, Handshake, HttpServer, Response, WebSocket

PROTOCOL = "graphql-transport-ws"
INIT_TIMEOUT = 3.0  # seconds to wait for connection_init (graphql-ws' default)
MAX_OPERATIONS = 100  # running at once, per client
TOKENS = {"alice-token": "alice"}  # connection_init payload {"token": ...} → user

log = logging.getLogger("graphql_ws")


class GraphQLError(Exception):
    """Reported to the client as an ``error`` message for that operation."""


async def countdown(variables: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    start = variables.get("from")
    if not isinstance(start, int) or not 0 <= start <= 100:
        raise GraphQLError("countdown needs $from: an integer from 0 to 100")
    for n in range(start, -1, -1):
        yield {"data": {"countdown": n}}
        if n:
            await asyncio.sleep(0.05)  # a stream over time, not a burst


async def echo(variables: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    text = variables.get("text")
    if not isinstance(text, str):
        raise GraphQLError("echo needs $text: a string")
    yield {"data": {"echo": text}}


OPERATIONS: dict[str, Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]] = {
    "countdown": countdown,
    "echo": echo,
}
FIRST_FIELD = re.compile(r"\{\s*(\w+)")


@dataclass
class Session:
    """What the protocol remembers about one client."""

    init_timer: asyncio.TimerHandle
    user: str | None = None  # set by an accepted connection_init
    operations: dict[str, asyncio.Task[None]] = field(default_factory=dict)


def only_graphql(hs: Handshake) -> Response | None:
    """The handshake hook: WebSockets on /graphql only."""
    return None if hs.path == "/graphql" else Response.text(404, "Not Found\n")


server = HttpServer()
ws = WebSocket(server, subprotocols=[PROTOCOL], on_handshake=only_graphql)
sessions: dict[str, Session] = {}


def send(client_id: str, message: dict[str, Any]) -> None:
    ws.send(client_id, json.dumps(message))


def forget(client_id: str) -> None:
    """Stop the client's timer and operations."""
    session = sessions.pop(client_id, None)
    if session is not None:
        session.init_timer.cancel()
        for task in session.operations.values():
            task.cancel()


def kick(client_id: str, code: int, reason: str) -> None:
    """Close the socket with one of the protocol's close codes (and one log line)."""
    log.info("closing %s: %d %s", client_id, code, reason)
    forget(client_id)
    ws.close(client_id, code, reason)


@ws.on("open")
def opened(client_id: str) -> None:
    if ws.subprotocol(client_id) != PROTOCOL:
        kick(client_id, 4406, "Subprotocol not acceptable")
        return
    timer = asyncio.get_running_loop().call_later(
        INIT_TIMEOUT, kick, client_id, 4408, "Connection initialisation timeout"
    )
    sessions[client_id] = Session(timer)


@ws.on("/graphql")
def received(client_id: str, data: str | bytes) -> None:
    session = sessions.get(client_id)
    if session is None:
        return  # being closed
    try:
        message = json.loads(data) if isinstance(data, str) else None
    except ValueError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        kick(client_id, 4400, "Invalid message")
        return
    kind = message["type"]
    if kind == "connection_init":
        initialise(client_id, session, message.get("payload"))
    elif kind == "ping":
        pong = {"type": "pong"}
        if isinstance(message.get("payload"), dict):
            pong["payload"] = message["payload"]
        send(client_id, pong)
    elif kind == "pong":
        pass  # the answer to a ping we never send, or a heartbeat
    elif kind == "subscribe":
        subscribe(client_id, session, message)
    elif kind == "complete" and isinstance(message.get("id"), str):
        task = session.operations.pop(message["id"], None)
        if task is not None:
            task.cancel()  # the client stopped listening: no "complete" back
    else:
        kick(client_id, 4400, f"Invalid message {kind[:40]!r}")


def initialise(client_id: str, session: Session, payload: object) -> None:
    if session.user is not None:
        kick(client_id, 4429, "Too many initialisation requests")
        return
    session.init_timer.cancel()
    token = payload.get("token") if isinstance(payload, dict) else None
    user = TOKENS.get(token) if isinstance(token, str) else None
    if user is None:
        kick(client_id, 4403, "Forbidden")
        return
    session.user = user
    send(client_id, {"type": "connection_ack", "payload": {"user": user}})


def subscribe(client_id: str, session: Session, message: dict[str, Any]) -> None:
    op_id, payload = message.get("id"), message.get("payload")
    if session.user is None:
        kick(client_id, 4401, "Unauthorized")
        return
    if not (op_id and isinstance(op_id, str) and isinstance(payload, dict)):
        kick(client_id, 4400, "Invalid subscribe message")
        return
    query, variables = payload.get("query"), payload.get("variables") or {}
    if not isinstance(query, str) or not isinstance(variables, dict):
        kick(client_id, 4400, "Invalid subscribe payload")
        return
    if op_id in session.operations:
        kick(client_id, 4409, f"Subscriber for {op_id[:60]} already exists")
        return
    match = FIRST_FIELD.search(query)
    operation = OPERATIONS.get(match.group(1)) if match else None
    if operation is None or len(session.operations) >= MAX_OPERATIONS:
        problem = "Unknown field" if operation is None else "Too many operations at once"
        send(client_id, {"id": op_id, "type": "error", "payload": [{"message": problem}]})
        return
    task = asyncio.create_task(run(client_id, session, op_id, operation(variables)))
    session.operations[op_id] = task


async def run(
    client_id: str, session: Session, op_id: str, results: AsyncIterator[dict[str, Any]]
) -> None:
    try:
        async for result in results:
            send(client_id, {"id": op_id, "type": "next", "payload": result})
    except GraphQLError as error:
        send(client_id, {"id": op_id, "type": "error", "payload": [{"message": str(error)}]})
    else:
        send(client_id, {"id": op_id, "type": "complete"})
    finally:
        if session.operations.get(op_id) is asyncio.current_task():
            del session.operations[op_id]


@ws.on("close")
def closed(client_id: str, event: CloseEvent) -> None:
    forget(client_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    server.run(args.host, args.port)  # until SIGINT/SIGTERM, then closes every client
