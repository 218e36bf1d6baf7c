"""examples/graphql_ws.py against the graphql-ws npm client, and its close codes against websockets.

The npm client (tests/node/graphql_ws_client.mjs) negotiates
``graphql-transport-ws``, runs ``connection_init``/``connection_ack``, a
streaming subscription, single results, errors, a subscription it completes
itself, two operations at once, a keep-alive ping, and a normal close.  The
protocol violations the npm client never commits are sent by hand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.conftest import NODE_DIR, run_node
from tests.integration.cli_support import example_program

PROTOCOL = "graphql-transport-ws"
OFFER = [Subprotocol(PROTOCOL)]
COUNTDOWN = "subscription ($from: Int!) { countdown(from: $from) }"
ECHO = "query ($text: String!) { echo(text: $text) }"


@pytest.fixture
async def graphql_example() -> AsyncIterator[str]:
    """``python examples/graphql_ws.py --port P``; yields its WebSocket URL."""
    async with example_program("graphql_ws.py") as port:
        yield f"ws://127.0.0.1:{port}/graphql"


async def run_graphql_client(url: str, scenario: str) -> Any:
    if not (NODE_DIR / "node_modules" / "graphql-ws").is_dir():
        pytest.fail("the npm package graphql-ws is missing: run 'make node-deps'")
    return await run_node("graphql_ws_client.mjs", url, scenario)


def countdown(*values: int) -> list[dict[str, Any]]:
    return [{"data": {"countdown": n}} for n in values]


async def test_graphql_ws_client(graphql_example: str) -> None:
    out = await run_graphql_client(graphql_example, "flow")
    assert out["protocol"] == PROTOCOL
    assert out["ack"] == {"user": "alice"}
    assert out["countdown"] == {"results": countdown(3, 2, 1, 0), "end": "complete"}
    assert out["echo"] == {"results": [{"data": {"echo": "héllo ✓"}}], "end": "complete"}
    assert out["unknown"] == {"results": [], "end": {"errors": [{"message": "Unknown field"}]}}
    message = "countdown needs $from: an integer from 0 to 100"
    assert out["badVariables"] == {"results": [], "end": {"errors": [{"message": message}]}}
    assert out["stopped"] == {"results": countdown(100, 99), "end": "stopped by the client"}
    assert out["concurrent"] == [
        {"results": countdown(1, 0), "end": "complete"},
        {"results": [{"data": {"echo": "both"}}], "end": "complete"},
    ]
    assert out["pongReceived"] is True
    # dispose() sends 1000 "Normal Closure"; the server's reply echoes the code.
    assert out["close"] == {"code": 1000, "reason": ""}


async def test_graphql_ws_client_refused_init(graphql_example: str) -> None:
    out = await run_graphql_client(graphql_example, "forbidden")
    assert out["attempt"] == {"results": [], "end": {"code": 4403, "reason": "Forbidden"}}
    assert out["close"] == {"code": 4403, "reason": "Forbidden"}


async def closed_with(client: Any) -> tuple[int | None, str | None]:
    """Read (and drop) messages until the server closes; its code and reason."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await client.recv()
    return client.close_code, client.close_reason


async def session(url: str, init: bool = True) -> Any:
    client = await websockets.connect(url, subprotocols=OFFER, open_timeout=10)
    assert client.subprotocol == PROTOCOL
    if init:
        await client.send(
            json.dumps({"type": "connection_init", "payload": {"token": "alice-token"}})
        )
        ack = json.loads(await client.recv())
        assert ack == {"type": "connection_ack", "payload": {"user": "alice"}}
    return client


def subscribe(op_id: str, query: str, variables: dict[str, Any]) -> str:
    payload = {"query": query, "variables": variables}
    return json.dumps({"id": op_id, "type": "subscribe", "payload": payload})


@pytest.mark.parametrize(
    ("init", "sent", "code", "reason"),
    [
        (True, "not json", 4400, "Invalid message"),
        (True, b'{"type": "ping"}', 4400, "Invalid message"),
        (True, '["connection_init"]', 4400, "Invalid message"),
        (True, '{"type": "start", "id": "1"}', 4400, "Invalid message 'start'"),
        (True, '{"type": "complete", "id": 1}', 4400, "Invalid message 'complete'"),
        (True, '{"type": "subscribe", "id": "", "payload": {"query": "{ echo }"}}', 4400, None),
        (True, '{"type": "subscribe", "id": "1", "payload": {}}', 4400, None),
        (False, subscribe("1", ECHO, {"text": "x"}), 4401, "Unauthorized"),
        (True, '{"type": "connection_init"}', 4429, "Too many initialisation requests"),
        (False, '{"type": "connection_init", "payload": {"token": 1}}', 4403, "Forbidden"),
    ],
)
async def test_protocol_violations(
    graphql_example: str, init: bool, sent: str | bytes, code: int, reason: str | None
) -> None:
    client = await session(graphql_example, init)
    await client.send(sent)
    got_code, got_reason = await closed_with(client)
    assert got_code == code
    if reason is not None:
        assert got_reason == reason


async def test_duplicate_operation_id(graphql_example: str) -> None:
    client = await session(graphql_example)
    await client.send(subscribe("op", COUNTDOWN, {"from": 100}))
    assert json.loads(await client.recv())["payload"] == countdown(100)[0]
    await client.send(subscribe("op", ECHO, {"text": "again"}))
    assert await closed_with(client) == (4409, "Subscriber for op already exists")


async def test_completed_id_is_free_again(graphql_example: str) -> None:
    client = await session(graphql_example)
    await client.send(subscribe("op", COUNTDOWN, {"from": 100}))
    first = json.loads(await client.recv())
    assert first == {"id": "op", "type": "next", "payload": countdown(100)[0]}
    await client.send(json.dumps({"id": "op", "type": "complete"}))
    # The server forgot "op": the same ID runs a new operation (no 4409),
    # and whatever follows for "op" belongs to it (no more countdown).
    await client.send(subscribe("op", ECHO, {"text": "new"}))
    following: list[dict[str, Any]] = []
    while not following or following[-1]["type"] != "complete":
        message = json.loads(await client.recv())
        if message.get("payload") not in countdown(99, 98):  # in flight before the complete
            following.append(message)
    assert following == [
        {"id": "op", "type": "next", "payload": {"data": {"echo": "new"}}},
        {"id": "op", "type": "complete"},
    ]
    # Completing an ID the server does not know is no error.
    await client.send(json.dumps({"id": "gone", "type": "complete"}))
    await client.send(json.dumps({"type": "ping", "payload": {"n": 1}}))
    assert json.loads(await client.recv()) == {"type": "pong", "payload": {"n": 1}}
    await client.close()
    assert client.close_code == 1000


async def test_no_subprotocol_and_no_init(graphql_example: str) -> None:
    with pytest.raises(InvalidStatus) as caught:  # only /graphql speaks it
        await websockets.connect(graphql_example.replace("/graphql", "/"), subprotocols=OFFER)
    assert caught.value.response.status_code == 404
    async with websockets.connect(graphql_example) as client:
        assert client.subprotocol is None
        assert await closed_with(client) == (4406, "Subprotocol not acceptable")
    # No connection_init within the example's 3 s: 4408.
    client = await session(graphql_example, init=False)
    assert await closed_with(client) == (4408, "Connection initialisation timeout")


async def test_operations_per_client_are_bounded(graphql_example: str) -> None:
    client = await session(graphql_example)
    for n in range(100):
        await client.send(subscribe(f"op{n}", COUNTDOWN, {"from": 100}))
    await client.send(subscribe("one-too-many", ECHO, {"text": "x"}))
    while True:
        message = json.loads(await client.recv())
        if message["id"] == "one-too-many":
            break
    error = [{"message": "Too many operations at once"}]
    assert message == {"id": "one-too-many", "type": "error", "payload": error}
    # The connection is fine: the client may stop some and go on.
    for n in range(100):
        await client.send(json.dumps({"id": f"op{n}", "type": "complete"}))
    await client.send(subscribe("after", ECHO, {"text": "x"}))
    while message["id"] != "after":
        message = json.loads(await client.recv())
    assert message == {"id": "after", "type": "next", "payload": {"data": {"echo": "x"}}}
    await client.close()
