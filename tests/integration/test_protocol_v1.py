"""The ``wshub.v1`` subprotocol (docs/protocol.md) as a client sees it.

Clients: the ``websockets`` library speaking the JSON by hand
(tests/integration/v1_support.py), a raw ``websockets`` client, and Node's
``ws`` offering ``wshub.v1``.  The hub runs on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, run_node
from tests.integration.v1_support import V1Peer, allow_all

pytestmark = pytest.mark.timeout(120)


async def test_subscribe_publish_receive_positions(start_server: StartServer) -> None:
    running = await start_server(pubsub=True, authorize=allow_all, history_size=100)
    a = await V1Peer.connect(running)
    b = await V1Peer.connect(running)
    welcome = await a.hello()
    assert welcome["version"] == 1 and welcome["client_id"] in running.ws.clients
    # The client's direct stream and the topic's start at 0 (nothing sent yet).
    assert welcome["position"]["seq"] == 0 and welcome["recovered"] is False
    answer = await a.subscribe("news")
    assert answer == {
        "type": "subscribed",
        "topic": "news",
        "position": {"epoch": answer["position"]["epoch"], "seq": 0},
        "recovered": False,
    }
    assert running.ws.subscribers("news") == [welcome["client_id"]]
    await b.send(type="publish", topic="news", data="héllo", id="p1")
    ack = await b.recv_type("published")
    assert ack["id"] == "p1" and ack["position"]["seq"] == 1
    message = await a.recv_type("message")
    assert message == {
        "type": "message",
        "topic": "news",
        "epoch": ack["position"]["epoch"],
        "seq": 1,
        "data": "héllo",
    }
    # Binary: base64 with "binary": true, both ways.
    await b.send(
        type="publish", topic="news", data=base64.b64encode(b"\x00\x01\xfe").decode(), binary=True
    )
    binary = await a.recv_type("message")
    assert binary["binary"] is True and base64.b64decode(binary["data"]) == b"\x00\x01\xfe"
    assert binary["seq"] == 2
    # The application publishes too; its subscribers of either kind get it.
    assert running.ws.publish("news", "from the app") == 1
    assert (await a.recv_type("message"))["seq"] == 3
    await a.send(type="unsubscribe", topic="news", id=7)
    assert await a.recv_type("unsubscribed") == {"type": "unsubscribed", "topic": "news", "id": 7}
    assert running.ws.subscribers("news") == []
    await a.close()
    await b.close()


async def test_subscribe_with_the_last_messages(start_server: StartServer) -> None:
    """``"history": N`` without ``since``: the last N kept, then live, each once;
    fewer kept than asked is said with a gap (never silent)."""
    running = await start_server(pubsub=True, authorize=allow_all, history_size=5)
    for i in range(1, 9):
        running.ws.publish("news", f"m{i}")
    peer = await V1Peer.connect(running)
    await peer.hello()
    await peer.send(type="subscribe", topic="news", history=3, id=1)
    answer = await peer.recv_type("subscribed")
    assert answer["position"]["seq"] == 8 and answer["recovered"] is True, answer
    got = [await peer.recv_type("message") for _ in range(3)]
    assert [(m["seq"], m["data"]) for m in got] == [(6, "m6"), (7, "m7"), (8, "m8")]
    running.ws.publish("news", "m9")
    assert (await peer.recv_type("message"))["seq"] == 9
    # More than the history keeps (5): the hole, then what is kept.
    other = await V1Peer.connect(running)
    await other.hello()
    await other.send(type="subscribe", topic="news", history=8, id=2)
    answer = await other.recv_type("subscribed")
    assert answer["recovered"] is False
    gap = await other.recv_type("gap")
    assert (gap["reason"], gap["from"], gap["to"]) == ("truncated", 2, 4), gap
    kept = [await other.recv_type("message") for _ in range(5)]
    assert [m["seq"] for m in kept] == [5, 6, 7, 8, 9]
    # A topic with nothing yet: subscribed, nothing replayed.
    await other.send(type="subscribe", topic="empty", history=10, id=3)
    assert (await other.recv_type("subscribed"))["position"]["seq"] == 0
    running.ws.publish("empty", "first")
    assert (await other.recv_type("message"))["data"] == "first"
    await peer.close()
    await other.close()


async def test_positions_need_history(start_server: StartServer) -> None:
    """Without ``history_size`` messages carry no position."""
    running = await start_server(pubsub=True, authorize=allow_all)
    a = await V1Peer.connect(running)
    await a.subscribe("t")
    running.ws.publish("t", "x")
    assert await a.recv_type("message") == {"type": "message", "topic": "t", "data": "x"}
    await a.close()


async def test_raw_and_v1_subscribers_of_one_topic(start_server: StartServer) -> None:
    running = await start_server(pubsub=True, authorize=allow_all, history_size=10)
    ws = running.ws
    ws.on("open", lambda cid: ws.subscribe(cid, "mixed") if ws.subprotocol(cid) is None else None)
    heard: list[Any] = []
    ws.on("message", lambda cid, data: heard.append(data))
    raw = await websockets.connect(running.url + "/")
    v1 = await V1Peer.connect(running)
    await v1.subscribe("mixed")
    await v1.send(type="publish", topic="mixed", data="to both")
    assert await asyncio.wait_for(raw.recv(), 10) == "to both"  # the raw payload, as today
    assert (await v1.recv_type("message"))["data"] == "to both"
    # A raw client's JSON is an application message, never a request.
    await raw.send(json.dumps({"type": "publish", "topic": "mixed", "data": "no"}))
    await v1.send(type="publish", topic="mixed", data="after")
    assert (await v1.recv_type("message"))["data"] == "after"
    assert heard == ['{"type": "publish", "topic": "mixed", "data": "no"}']
    await raw.close()
    await v1.close()


async def test_v1_is_offered_only_with_pubsub(start_server: StartServer) -> None:
    running = await start_server()
    conn = await websockets.connect(running.url + "/", subprotocols=["wshub.v1"])  # type: ignore[list-item]
    assert conn.subprotocol is None
    await conn.close()


async def test_default_authorize_allows_subscribe_not_publish(start_server: StartServer) -> None:
    running = await start_server(pubsub=True)
    peer = await V1Peer.connect(running)
    await peer.subscribe("open-topic")
    await peer.send(type="publish", topic="open-topic", data="x", id=1)
    error = await peer.recv_type("error")
    assert error["code"] == "forbidden" and error["id"] == 1
    await peer.close()


async def test_authorize_hook_decides(start_server: StartServer) -> None:
    asked: list[tuple[str, str, str]] = []

    def authorize(client_id: str, action: str, topic: str) -> bool:
        asked.append((client_id, action, topic))
        return topic.startswith("public:")

    running = await start_server(pubsub=True, authorize=authorize)
    peer = await V1Peer.connect(running)
    client_id = (await peer.hello())["client_id"]
    await peer.send(type="subscribe", topic="private:x")
    assert (await peer.recv_type("error"))["code"] == "forbidden"
    await peer.subscribe("public:x")
    assert asked == [(client_id, "subscribe", "private:x"), (client_id, "subscribe", "public:x")]
    assert running.ws.topics(client_id) == ["public:x"]
    await peer.close()


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"type": "dance"}, "bad_request"),
        ({"topic": "t"}, "bad_request"),
        ({"type": "subscribe"}, "bad_topic"),
        ({"type": "subscribe", "topic": ""}, "bad_topic"),
        ({"type": "subscribe", "topic": "x" * 257}, "bad_topic"),
        ({"type": "subscribe", "topic": 5}, "bad_topic"),
        ({"type": "subscribe", "topic": "t", "since": 3}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "since": {"epoch": "e", "seq": -1}}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "since": {"epoch": "e", "seq": 2**64}}, "bad_request"),
        (
            {"type": "subscribe", "topic": "t", "since": {"epoch": "e" * 65, "seq": 1}},
            "bad_request",
        ),
        ({"type": "subscribe", "topic": "t", "since": {"epoch": "e", "seq": True}}, "bad_request"),
        ({"type": "publish", "topic": "t"}, "bad_request"),
        ({"type": "publish", "topic": "t", "data": 5}, "bad_request"),
        ({"type": "publish", "topic": "t", "data": "!!", "binary": True}, "bad_request"),
        ({"type": "publish", "topic": "t", "data": "x", "binary": "yes"}, "bad_request"),
        ({"type": "unsubscribe", "topic": "never"}, "not_subscribed"),
        ({"type": "subscribe", "topic": "t", "id": [1]}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "id": "i" * 65}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "history": -1}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "history": 1001}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "history": "3"}, "bad_request"),
        ({"type": "subscribe", "topic": "t", "history": 2.5}, "bad_request"),
        (
            {"type": "subscribe", "topic": "t", "history": 3, "since": {"epoch": "e", "seq": 1}},
            "bad_request",
        ),
    ],
)
async def test_invalid_requests_get_an_error_and_the_connection_stays(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    request_: dict[str, Any],
    code: str,
) -> None:
    running = await start_server(pubsub=True, authorize=allow_all)
    peer = await V1Peer.connect(running)
    with caplog.at_level(logging.INFO, logger="wshub"):
        await peer.send(**request_)
        error = await peer.recv_type("error")
    assert error["code"] == code and isinstance(error["message"], str)
    assert "id" not in error or error["id"] == request_.get("id")
    assert [r for r in caplog.records if "wshub.v1 request" in r.getMessage()], "one log line"
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    answer = await peer.subscribe("still-here")  # the connection is still usable
    assert answer["topic"] == "still-here"
    await peer.close()


async def test_subscription_limits(start_server: StartServer) -> None:
    running = await start_server(pubsub=True, authorize=allow_all, max_topics_per_client=2)
    peer = await V1Peer.connect(running)
    await peer.subscribe("a")
    await peer.send(type="subscribe", topic="a")
    assert (await peer.recv_type("error"))["code"] == "already_subscribed"
    await peer.subscribe("b")
    await peer.send(type="subscribe", topic="c")
    assert (await peer.recv_type("error"))["code"] == "limit"
    await peer.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 1008),
        ("[1, 2]", 1008),
        ('"a string"', 1008),
        ("[" * 100_000, 1008),  # nested past the parser's recursion limit
        ("1" * 5000, 1008),  # an integer too long to convert
        (b'{"type": "hello"}', 1003),  # a binary frame
    ],
)
async def test_malformed_frames_close_the_connection(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, frame: str | bytes, code: int
) -> None:
    running = await start_server(pubsub=True, authorize=allow_all)
    other = await V1Peer.connect(running)
    await other.subscribe("t")
    peer = await V1Peer.connect(running)
    with caplog.at_level(logging.WARNING, logger="wshub"):
        await peer.conn.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as caught:
            await asyncio.wait_for(peer.conn.recv(), 10)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == code
    lines = [r for r in caplog.records if "wshub.v1 client" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info
    # The other client is unharmed.
    running.ws.publish("t", "fine")
    assert (await other.recv_type("message"))["data"] == "fine"
    await other.close()


async def test_node_ws_client_speaks_v1(start_server: StartServer) -> None:
    """Node's ws offers wshub.v1 and gets it: the negotiation is the standard one."""
    running = await start_server(pubsub=True, authorize=allow_all)
    plan = {
        "protocols": ["wshub.v1"],
        "send": [{"text": json.dumps({"type": "subscribe", "topic": "n"})}],
        "expect": 1,
        "close": [1000],
    }
    result = await run_node("client.mjs", running.url + "/", json.dumps(plan))
    assert result["protocol"] == "wshub.v1" and result["error"] is None
    answer = json.loads(result["messages"][0]["data"])
    assert answer == {"type": "subscribed", "topic": "n", "position": None, "recovered": False}
