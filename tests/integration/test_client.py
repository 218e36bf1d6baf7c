"""``wshub.client``: subscribe, publish, iterate, reconnect and resume by itself.

The server is a hub on a loopback port (or ``wshub serve --mode pubsub`` as
a process); the connection is dropped from the server's side (a Close, or
the transport aborted) while the application keeps publishing.  The
``websockets`` client speaking wshub.v1 by hand is the second peer, so the
client is checked against what another implementation sees.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import wshub.client
from tests.conftest import Running, StartServer, wait_for
from tests.integration.cli_support import free_port, start_program, wshub_command
from tests.integration.v1_support import V1Peer, allow_all
from wshub import Response
from wshub.client import Disconnected, Gap, HandshakeFailed, RequestError
from wshub.hub.history import Position
from wshub.protocol.client import (
    ClientProtocol,
    ClosedByPeer,
    ProtocolViolation,
    check_upgrade_response,
    upgrade_request,
)
from wshub.protocol.frames import build_frame

pytestmark = pytest.mark.timeout(120)

TOTAL = 300


async def start_pubsub(start_server: StartServer, **options: Any) -> Running:
    options.setdefault("history_size", 1000)
    return await start_server(pubsub=True, authorize=allow_all, **options)


async def take(client: wshub.client.Client, count: int) -> list[Any]:
    items = []
    async for item in client:
        items.append(item)
        if len(items) == count:
            break
    return items


def drop_from_server(running: Running, client_id: str, how: str) -> None:
    if how == "close":
        running.ws.close(client_id, 1012, "restart")
    else:  # the server's side of the TCP connection goes away at once
        running.ws._clients[client_id].link.abort()


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_resumes_by_itself_across_a_server_side_drop(
    start_server: StartServer, how: str
) -> None:
    running = await start_pubsub(start_server)
    ws = running.ws
    got: list[tuple[str | None, Position | None, Any]] = []

    async def publisher() -> None:
        for i in range(TOTAL):
            ws.publish("feed", str(i))
            await asyncio.sleep(0.002)

    async with wshub.client.connect(running.url + "/", min_delay=0.05) as client:
        first_id = client.client_id
        await client.subscribe("feed")
        task = asyncio.create_task(publisher())
        try:
            async for item in client:
                got.append(item)
                if len(got) == 40:
                    assert client.client_id is not None
                    drop_from_server(running, client.client_id, how)
                if len(got) == TOTAL:
                    break
            await task
        finally:
            task.cancel()
        assert client.connections >= 2, "the connection was dropped and made again"
        assert client.client_id == first_id, "the session cookie kept the client ID"
    assert [data for _, _, data in got] == [str(i) for i in range(TOTAL)]
    assert [p.seq for _, p, _ in got if p is not None] == list(range(1, TOTAL + 1))
    assert {topic for topic, _, _ in got} == {"feed"}


async def test_resumes_after_its_own_abort(start_server: StartServer) -> None:
    """The client's side drops (as a network failure would) while publishing goes on."""
    running = await start_pubsub(start_server)
    ws = running.ws
    got: list[Any] = []

    async def publisher() -> None:
        for i in range(TOTAL):
            ws.publish("feed", str(i))
            await asyncio.sleep(0.002)

    async with wshub.client.connect(running.url + "/", min_delay=0.05) as client:
        await client.subscribe("feed")
        task = asyncio.create_task(publisher())
        try:
            async for _topic, _position, data in client:
                got.append(data)
                if len(got) == 40:
                    client.abort()
                if len(got) == TOTAL:
                    break
            await task
        finally:
            task.cancel()
        assert client.connections >= 2
    assert got == [str(i) for i in range(TOTAL)]


async def test_without_reconnect_the_end_is_an_error(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    async with wshub.client.connect(running.url + "/", reconnect=False) as client:
        await client.subscribe("t")
        assert client.client_id is not None
        running.ws.close(client.client_id, 1001, "bye")
        items = [item async for item in client]  # ends, without hanging
        assert items == []
        with pytest.raises(Disconnected):
            await client.publish("t", "too late")
        with pytest.raises(Disconnected):
            await client.subscribe("u")


async def test_direct_messages_and_publications_survive_a_drop(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    ws = running.ws
    closed: list[str] = []
    ws.on("close", lambda cid, event: closed.append(cid))
    async with wshub.client.connect(running.url + "/", min_delay=0.5) as client:
        client_id = client.client_id
        assert client_id is not None
        await client.subscribe("room")
        ws.send(client_id, "direct 1")
        ws.publish("room", "pub 1")
        assert [(t, d) for t, _, d in await take(client, 2)] == [
            (None, "direct 1"),
            ("room", "pub 1"),
        ]
        drop_from_server(running, client_id, "abort")
        await wait_for(lambda: client_id in closed, 10.0, "the hub to see the drop")
        # Away: the direct message is kept, the publication is in the topic's history.
        assert ws.send(client_id, b"direct 2") is False
        ws.publish("room", "pub 2")
        items = await take(client, 2)
        assert sorted((t or "", d) for t, _, d in items) == [("", b"direct 2"), ("room", "pub 2")]
        assert client.direct_position is not None and client.direct_position.seq == 2


async def test_publish_and_a_second_peer(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    peer = await V1Peer.connect(running)
    await peer.subscribe("chat")
    async with wshub.client.connect(running.url + "/") as client:
        await client.subscribe("chat")
        position = await client.publish("chat", "from the client")
        assert position is not None and position.seq == 1
        message = await peer.recv_type("message")
        assert (message["data"], message["seq"], message["epoch"]) == (
            "from the client",
            1,
            position.epoch,
        )
        await peer.send(type="publish", topic="chat", data="AAE=", binary=True)
        items = await take(client, 2)
        assert [d for _, _, d in items] == ["from the client", b"\x00\x01"]
        await client.unsubscribe("chat")
        assert running.ws.subscribers("chat") == [peer_id(running, client)]
    await peer.close()


def peer_id(running: Running, client: wshub.client.Client) -> str:
    ids = [cid for cid in running.ws.subscribers("chat") if cid != client.client_id]
    assert len(ids) == 1
    return ids[0]


async def test_a_gap_is_an_item_of_the_iteration(start_server: StartServer) -> None:
    running = await start_pubsub(start_server, history_size=3)
    ws = running.ws
    ws.publish("t", "before")
    start = ws.topic_position("t")
    assert start is not None
    for i in range(6):
        ws.publish("t", f"m{i}")
    async with wshub.client.connect(running.url + "/") as client:
        answer = await client.subscribe("t", since=start)
        assert answer.recovered is False
        items = await take(client, 4)
    gap = items[0][2]
    assert isinstance(gap, Gap) and (gap.reason, gap.first, gap.last) == ("truncated", 2, 4)
    assert [d for _, _, d in items[1:]] == ["m3", "m4", "m5"]


async def test_refusals_are_errors(start_server: StartServer) -> None:
    running = await start_server(pubsub=True)  # default: subscribe yes, publish no
    async with wshub.client.connect(running.url + "/") as client:
        with pytest.raises(RequestError) as caught:
            await client.publish("t", "x")
        assert caught.value.code == "forbidden"
        with pytest.raises(RequestError):
            await client.subscribe("x" * 300)
        assert (await client.subscribe("ok")).topic == "ok"


async def test_handshake_refusals(start_server: StartServer) -> None:
    refused = await start_server(pubsub=True, on_handshake=lambda hs: Response(b"no", 403))
    with pytest.raises(HandshakeFailed) as caught:
        async with wshub.client.connect(refused.url + "/"):
            pass
    assert caught.value.status == 403
    plain = await start_server()  # no pub/sub layer: wshub.v1 is not chosen
    with pytest.raises(HandshakeFailed, match=r"wshub\.v1"):
        async with wshub.client.connect(plain.url + "/"):
            pass


async def test_serve_mode_pubsub() -> None:
    port = free_port()
    argv = [*wshub_command(), "serve", "--port", str(port), "--mode", "pubsub"]
    program = await start_program([*argv, "--history-size", "50"], port)
    url = f"ws://127.0.0.1:{port}/"
    try:
        async with (
            wshub.client.connect(url) as reader,
            wshub.client.connect(url) as writer,
        ):
            await reader.subscribe("news")
            for i in range(60):
                await writer.publish("news", f"n{i}")
            items = await take(reader, 60)
            assert [d for _, _, d in items] == [f"n{i}" for i in range(60)]
            # The history keeps 50: a resume from the start is told of the gap.
            first = items[0][1]
            assert first is not None
            async with wshub.client.connect(url) as late:
                answer = await late.subscribe("news", since=Position(first.epoch, 0))
                assert answer.recovered is False
                got = await take(late, 51)
            gap = got[0][2]
            assert isinstance(gap, Gap) and (gap.first, gap.last) == (1, 10)
            assert [d for _, _, d in got[1:]] == [f"n{i}" for i in range(10, 60)]
    finally:
        status, err = await program.stop()
    assert status == 0, err
    assert "Traceback" not in err


# ------------------------------------------------ the sans-I/O client side


def test_client_protocol_reads_fragments_and_control_frames() -> None:
    protocol = ClientProtocol(max_size=100)
    stream = (
        build_frame(0x1, "hé".encode()[:2], fin=False)
        + build_frame(0x9, b"ping!")
        + build_frame(0x0, "hé".encode()[2:])
        + build_frame(0x2, b"\x00\x01")
    )
    events: list[Any] = []
    for i in range(len(stream)):  # one byte at a time
        events += protocol.receive_data(stream[i : i + 1])
    assert events == ["hé", b"\x00\x01"]
    pong = protocol.data_to_send()
    assert pong[0] == 0x8A and pong[1] == 0x80 | 5  # a masked pong of 5 bytes
    events = protocol.receive_data(build_frame(0x8, b"\x03\xf4bye"))
    assert events == [ClosedByPeer(1012, "bye")] and protocol.close_sent


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0x81, 0x80, 0, 0, 0, 0]), 1002),  # masked by the server
        (build_frame(0x1, b"x", rsv1=True), 1002),
        (build_frame(0x0, b"x"), 1002),
        (build_frame(0x1, b"\xff"), 1007),
        (build_frame(0x2, b"y" * 101), 1009),
        (build_frame(0x9, b"p", fin=False), 1002),
        (build_frame(0x3, b""), 1002),
    ],
)
def test_client_protocol_refuses_what_breaks_rfc6455(frame: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        ClientProtocol(max_size=100).receive_data(frame)
    assert caught.value.code == code


def test_upgrade_answer_is_checked() -> None:
    request = upgrade_request("h:1", "/", subprotocols=("wshub.v1",))
    assert b"Sec-WebSocket-Protocol: wshub.v1\r\n" in request.data
    from wshub.protocol.handshake import accept_key

    good = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.key)}\r\nSec-WebSocket-Protocol: wshub.v1"
    )
    assert check_upgrade_response(request, good.encode())["sec-websocket-protocol"] == ["wshub.v1"]
    for bad in (
        good.replace(accept_key(request.key), "AAAA"),
        good.replace("wshub.v1", "other"),
        good.replace("101 Switching Protocols", "200 OK"),
        good + "\r\nSec-WebSocket-Extensions: permessage-deflate",
    ):
        with pytest.raises(HandshakeFailed):
            check_upgrade_response(request, bad.encode())
    with pytest.raises(ValueError):
        upgrade_request("h\r\nX: y", "/")


async def test_a_server_that_is_not_websocket() -> None:
    """A listener that answers garbage: HandshakeFailed, not a hang or a traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()

        async def answer() -> None:
            conn, _ = await loop.sock_accept(listener)
            await loop.sock_sendall(conn, b"NOT HTTP AT ALL\r\n\r\n")
            conn.close()

        task = asyncio.create_task(answer())
        with pytest.raises(HandshakeFailed):
            async with wshub.client.connect(f"ws://127.0.0.1:{port}/"):
                pass
        await task
