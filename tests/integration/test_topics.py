"""Topics on one process: subscribe, publish, unsubscribe, presence, limits.

Real clients only: the ``websockets`` client (with and without
permessage-deflate) and Node's ``ws``; the hub runs on a loopback port.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from typing import Any

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.conftest import Running, StartServer, run_node, wait_for
from wshub import ClientNotFound, PresenceInfo, TopicLimitError, WebSocket

pytestmark = pytest.mark.timeout(120)


def record_events(ws: WebSocket) -> list[tuple[Any, ...]]:
    """Every join, leave and close of ``ws``, in order."""
    seen: list[tuple[Any, ...]] = []
    ws.on("join", lambda cid, topic: seen.append(("join", cid, topic)))
    ws.on("leave", lambda cid, topic: seen.append(("leave", cid, topic)))
    ws.on("close", lambda cid, event: seen.append(("close", cid)))
    return seen


async def connect_with_id(running: Running, **options: Any) -> tuple[Any, str]:
    """A websockets client and the ID the hub gave it (the hub sends it on open)."""
    conn = await websockets.connect(running.url + "/", **options)
    client_id = await asyncio.wait_for(conn.recv(), 10.0)
    assert isinstance(client_id, str)
    return conn, client_id


def greet_with_id(ws: WebSocket) -> None:
    ws.on("open", lambda cid: ws.send(cid, cid))


async def hub_and_two_clients(
    start_server: StartServer,
) -> tuple[WebSocket, list[tuple[Any, ...]], tuple[Any, str], tuple[Any, str]]:
    """A hub recording its events, and two websockets clients with their IDs."""
    running = await start_server()
    greet_with_id(running.ws)
    events = record_events(running.ws)
    return running.ws, events, await connect_with_id(running), await connect_with_id(running)


async def test_subscribe_publish_unsubscribe(start_server: StartServer) -> None:
    ws, events, (a, a_id), (b, b_id) = await hub_and_two_clients(start_server)
    try:
        assert ws.subscribe(a_id, "news") is True
        assert ws.subscribe(a_id, "news") is False  # already there: no second join
        assert ws.subscribe(b_id, "news") is True
        assert ws.subscribe(a_id, "sports") is True
        assert ws.topics(a_id) == ["news", "sports"]
        assert ws.topics(b_id) == ["news"]
        assert ws.subscribers("news") == [a_id, b_id]
        assert ws.subscribers("sports") == [a_id]
        assert ws.subscribers("weather") == []
        assert events == [
            ("join", a_id, "news"),
            ("join", b_id, "news"),
            ("join", a_id, "sports"),
        ]
        node = ws.backplane.node_id
        assert await ws.presence("news") == {
            a_id: PresenceInfo(node, "/"),
            b_id: PresenceInfo(node, "/"),
        }
        assert await ws.cluster_subscribers("news") == [a_id, b_id]

        assert ws.publish("news", "headline") == 2
        assert ws.publish("sports", b"\x00score") == 1
        assert ws.publish("weather", "nobody follows this") == 0
        assert ws.publish("news", "not for b", exclude=[b_id]) == 1
        assert [await a.recv() for _ in range(3)] == ["headline", b"\x00score", "not for b"]
        assert await b.recv() == "headline"

        assert ws.unsubscribe(b_id, "news") is True
        assert ws.unsubscribe(b_id, "news") is False
        assert ws.topics(b_id) == []
        assert ws.publish("news", "after b left") == 1
        assert await a.recv() == "after b left"
        assert events[-1] == ("leave", b_id, "news")
        # b got nothing more: the next thing it sees is a direct send.
        ws.send(b_id, "direct")
        assert await b.recv() == "direct"
    finally:
        await a.close()
        await b.close()


async def test_compression_groups_each_get_the_right_bytes(start_server: StartServer) -> None:
    running = await start_server()
    ws = running.ws
    greet_with_id(ws)
    # One client shares compressed frames (no server context takeover), one
    # keeps a context (its frames are its own), one does not compress.
    shared, shared_id = await connect_with_id(
        running,
        extensions=[ClientPerMessageDeflateFactory(server_no_context_takeover=True)],
        compression=None,
    )
    own, own_id = await connect_with_id(running)  # websockets offers deflate by default
    plain, plain_id = await connect_with_id(running, compression=None)
    try:
        assert "server_no_context_takeover" in shared.response.headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in own.response.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        for client_id in (shared_id, own_id, plain_id):
            ws.subscribe(client_id, "big")
        before = {cid: ws.bytes_written(cid) for cid in (shared_id, own_id, plain_id)}
        text = "compressible " * 2000
        binary = bytes(range(256)) * 64
        assert ws.publish("big", text) == 3
        assert ws.publish("big", binary) == 3
        for conn in (shared, own, plain):
            assert await conn.recv() == text
            assert await conn.recv() == binary
        written = {cid: ws.bytes_written(cid) - before[cid] for cid in before}
        # The plain client got both payloads whole; the others compressed.
        assert written[plain_id] > len(text) + len(binary)
        assert written[shared_id] < len(text) + len(binary) // 2
        assert written[own_id] < len(text) + len(binary) // 2
    finally:
        for conn in (shared, own, plain):
            await conn.close()


async def test_node_ws_client_with_deflate_gets_publications(start_server: StartServer) -> None:
    running = await start_server()
    ws = running.ws
    greet_with_id(ws)
    plain, plain_id = await connect_with_id(running, compression=None)
    ws.subscribe(plain_id, "room")
    text = "from the room " * 100

    @ws.on("message")
    def joined(client_id: str, data: Any) -> None:
        assert data == "join room"
        ws.subscribe(client_id, "room")
        ws.publish("room", text)
        ws.publish("room", b"\x01\x02\x03")

    plan = {"deflate": True, "send": [{"text": "join room"}], "expect": 3, "close": [1000, ""]}
    try:
        result = await run_node("client.mjs", running.url + "/", json.dumps(plan))
        assert "permessage-deflate" in result["upgradeHeaders"]["sec-websocket-extensions"]
        assert result["messages"][1:] == [
            {"type": "text", "data": text},
            {"type": "binary", "hex": "010203"},
        ]
        assert await plain.recv() == text
        assert await plain.recv() == b"\x01\x02\x03"
        # The Node client closed: it is no longer a subscriber.
        await wait_for(lambda: ws.subscribers("room") == [plain_id], 10.0, "node client gone")
    finally:
        await plain.close()


async def test_close_ends_subscriptions_with_leave_before_close(
    start_server: StartServer,
) -> None:
    ws, events, (a, a_id), (b, b_id) = await hub_and_two_clients(start_server)
    try:
        for topic in ("one", "two", "three"):
            ws.subscribe(a_id, topic)
        ws.subscribe(b_id, "two")
        events.clear()
        await a.close()
        await wait_for(lambda: ("close", a_id) in events, 10.0, "a's close event")
        assert events == [
            ("leave", a_id, "one"),
            ("leave", a_id, "two"),
            ("leave", a_id, "three"),
            ("close", a_id),
        ]
        assert ws.subscribers("one") == []
        assert ws.subscribers("two") == [b_id]
        with pytest.raises(ClientNotFound):
            ws.topics(a_id)
        assert ws.publish("two", "still here") == 1
        assert await b.recv() == "still here"
    finally:
        await b.close()


async def test_limits_and_bad_input(start_server: StartServer) -> None:
    running = await start_server(max_topics_per_client=3)
    ws = running.ws
    greet_with_id(ws)
    a, a_id = await connect_with_id(running)
    try:
        assert ws.max_topics_per_client == 3
        for topic in ("t1", "t2", "t3"):
            ws.subscribe(a_id, topic)
        with pytest.raises(TopicLimitError, match="already follows 3 topics") as over:
            ws.subscribe(a_id, "t4")
        assert (over.value.client_id, over.value.limit) == (a_id, 3)
        assert ws.subscribe(a_id, "t3") is False  # a topic it has is no new one
        ws.max_topics_per_client = 4
        assert ws.subscribe(a_id, "t4") is True
        for bad in (0, -1):
            with pytest.raises(ValueError):
                ws.max_topics_per_client = bad
        with pytest.raises(TypeError):
            ws.max_topics_per_client = "10"  # type: ignore[assignment]
        with pytest.raises(ValueError):
            WebSocket(max_topics_per_client=0)

        longest = "é" * 128  # 256 bytes of UTF-8
        ws.unsubscribe(a_id, "t4")
        assert ws.subscribe(a_id, longest) is True
        for bad_name, error in (
            ("", ValueError),
            ("é" * 128 + "x", ValueError),  # 257 bytes
            ("x" * 257, ValueError),
            ("\ud800", ValueError),  # not encodable as UTF-8
            (None, TypeError),
            (b"bytes", TypeError),
        ):
            with pytest.raises(error):
                ws.subscribe(a_id, bad_name)  # type: ignore[arg-type]
            with pytest.raises(error):
                ws.publish(bad_name, "x")  # type: ignore[arg-type]
            with pytest.raises(error):
                ws.subscribers(bad_name)  # type: ignore[arg-type]
            with pytest.raises(error):
                await ws.presence(bad_name)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ws.unsubscribe(a_id, None)  # type: ignore[arg-type]
        for method in (ws.subscribe, ws.unsubscribe):
            with pytest.raises(ClientNotFound):
                method("no-such-client", "t1")
        with pytest.raises(ClientNotFound):
            ws.topics("no-such-client")
        with pytest.raises(TypeError):
            ws.publish("t1", 42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="join"):
            ws.on("joined", lambda cid, topic: None)
        # The client was not harmed by any of it.
        assert ws.topics(a_id) == ["t1", "t2", "t3", longest]
        assert ws.publish(longest, "long topic") == 1
        assert await a.recv() == "long topic"
    finally:
        await a.close()


async def test_ten_thousand_subscriptions_over_a_hundred_topics(
    start_server: StartServer,
) -> None:
    """200 real clients, each on 50 of 100 topics: every delivery counted exactly."""
    clients, topics, per_client = 200, 100, 50
    running = await start_server(limit_by_ip=0, per_message_deflate=False)
    ws = running.ws
    greet_with_id(ws)
    conns = await asyncio.gather(*(connect_with_id(running) for _ in range(clients)))
    try:
        ids = [cid for _conn, cid in conns]
        follows = {
            cid: {f"t{(i + k) % topics}" for k in range(per_client)} for i, cid in enumerate(ids)
        }
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for cid, names in follows.items():
            for name in sorted(names):
                ws.subscribe(cid, name)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        subscriptions = clients * per_client
        assert sum(len(ws.subscribers(f"t{t}")) for t in range(topics)) == subscriptions
        # Measured about 70 bytes per subscription; a generous bound.
        assert grown / subscriptions < 300, f"{grown / subscriptions:.0f} bytes per subscription"

        counts = [ws.publish(f"t{t}", f"m{t}") for t in range(topics)]
        assert counts == [clients * per_client // topics] * topics

        async def collect(conn: Any) -> set[str]:
            got = [await asyncio.wait_for(conn.recv(), 30.0) for _ in range(per_client)]
            ws_marker = await asyncio.wait_for(conn.recv(), 30.0)
            assert ws_marker == "end"
            assert len(got) == len(set(got)), "a publication arrived twice"
            return set(got)

        ws.broadcast("end")
        received = await asyncio.gather(*(collect(conn) for conn, _cid in conns))
        for (_conn, cid), got in zip(conns, received, strict=True):
            assert got == {"m" + name[1:] for name in follows[cid]}
    finally:
        await asyncio.gather(*(conn.close() for conn, _cid in conns))
    await wait_for(lambda: not ws.clients, 30.0, "every client gone")
    assert all(ws.subscribers(f"t{t}") == [] for t in range(topics))
