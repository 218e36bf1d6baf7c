"""A ``wshub.v1`` client as an attacker: the JSON typed by hand over the
``websockets`` client (tests/integration/v1_support.py) or raw sockets that
never read.  Each case ends with an ``error`` or a close code, bounded memory
on the server and no harm to the other clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
import websockets

from tests.conftest import StartServer, wait_for
from tests.integration.security_support import mask_frame, read_close, upgrade, wshub_lines
from tests.integration.v1_support import V1Peer, allow_all

pytestmark = pytest.mark.timeout(120)


async def stalled_v1_client(host: str, port: int) -> socket.socket:
    """A ``wshub.v1`` connection that is upgraded and then never read (tiny
    receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    offer = [("Sec-WebSocket-Protocol", "wshub.v1")]
    await loop.sock_sendall(sock, upgrade(f"{host}:{port}", "/", offer))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past the 101
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101") and b"wshub.v1" in head, head
    return sock


async def test_lone_surrogate_in_data_is_sent_as_node_writes_it(start_server: StartServer) -> None:
    """A text ``data`` with a lone surrogate (valid JSON: ``"\\ud800"``) is
    published with U+FFFD in its place, as the hub's own ``publish`` of such a
    ``str``: a raw subscriber gets valid UTF-8, never a frame its client must
    fail with 1007."""
    running = await start_server(pubsub=True, authorize=allow_all, history_size=10)
    ws = running.ws
    ws.on("open", lambda cid: ws.subscribe(cid, "mixed") if ws.subprotocol(cid) is None else None)
    raw = await websockets.connect(running.url + "/")
    await wait_for(lambda: len(ws.subscribers("mixed")) == 1, what="the raw subscriber")
    listener = await V1Peer.connect(running)
    await listener.subscribe("mixed")
    publisher = await V1Peer.connect(running)
    await publisher.conn.send('{"type":"publish","topic":"mixed","data":"a\\ud800b","id":1}')
    assert (await publisher.recv_type("published"))["id"] == 1
    assert await asyncio.wait_for(raw.recv(), 10) == "a\ufffdb"
    message = await listener.recv_type("message")
    assert message["data"] == "a\ufffdb" and "binary" not in message, message
    ws.publish("mixed", "after")  # both still connected
    assert await asyncio.wait_for(raw.recv(), 10) == "after"
    assert (await listener.recv_type("message"))["data"] == "after"
    await raw.close()
    await listener.close()
    await publisher.close()


async def test_replay_over_write_limit_closes_with_1008(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow reader whose resume asks for far more than ``write_limit`` of
    replay is closed with 1008 and one log line (the replay stops at the
    limit); a subscriber of the same topic is unharmed."""
    running = await start_server(
        pubsub=True,
        authorize=allow_all,
        history_size=1000,
        write_high=16 * 1024,
        write_low=4 * 1024,
        write_limit=128 * 1024,
    )
    ws = running.ws
    bystander = await V1Peer.connect(running)
    epoch = (await bystander.subscribe("big"))["position"]["epoch"]
    chunk = "x" * 8192
    for i in range(1000):  # 8 MiB kept, read by the bystander as it goes
        ws.publish("big", chunk)
        assert (await bystander.recv_type("message"))["seq"] == i + 1
    caplog.set_level(logging.INFO, logger="wshub")
    caplog.clear()
    loop = asyncio.get_running_loop()
    sock = await stalled_v1_client(running.host, running.port)
    since = {"epoch": epoch, "seq": 0}
    request = json.dumps({"type": "subscribe", "topic": "big", "since": since}).encode()
    await loop.sock_sendall(sock, mask_frame(0x1, request))
    await wait_for(lambda: len(ws.clients) == 1, what="the replayer to be closed")
    lines = [line for line in wshub_lines(caplog) if "write_limit" in line]
    assert len(lines) == 1, wshub_lines(caplog)
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert len(ws.subscribers("big")) == 1
    ws.publish("big", "live")
    assert (await bystander.recv_type("message"))["data"] == "live"
    # The replayer finally reads: a part of the replay, then our Close, 1008.
    assert await read_close(await reader_of(sock), timeout=20) == 1008
    await bystander.close()


async def reader_of(sock: socket.socket) -> asyncio.StreamReader:
    """A StreamReader over a connected socket (to read what the server sent)."""
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    return reader


async def test_a_subscriber_that_never_reads_is_closed_others_get_everything(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(pubsub=True, authorize=allow_all, write_limit=256 * 1024)
    ws = running.ws
    reader_peer = await V1Peer.connect(running)
    reader_id = (await reader_peer.hello())["client_id"]
    await reader_peer.subscribe("firehose")
    sock = await stalled_v1_client(running.host, running.port)
    loop = asyncio.get_running_loop()
    request = json.dumps({"type": "subscribe", "topic": "firehose"}).encode()
    await loop.sock_sendall(sock, mask_frame(0x1, request))
    await wait_for(lambda: len(ws.subscribers("firehose")) == 2, what="the stalled subscriber")
    (stalled,) = [cid for cid in ws.subscribers("firehose") if cid != reader_id]
    caplog.set_level(logging.INFO, logger="wshub")
    caplog.clear()
    chunk = "y" * (16 * 1024)
    count = 0
    while stalled in ws.clients:
        ws.publish("firehose", chunk)
        count += 1
        assert count < 10_000, "the stalled subscriber was never closed"
        assert (await reader_peer.recv_type("message"))["data"] == chunk
    lines = [line for line in wshub_lines(caplog) if "write_limit" in line]
    assert len(lines) == 1, wshub_lines(caplog)
    assert ws.subscribers("firehose") == [reader_id], "its subscription is gone"
    # The stalled client finally reads: behind the backlog is our Close, 1008.
    assert await read_close(await reader_of(sock), timeout=20) == 1008
    ws.publish("firehose", "still here")
    assert (await reader_peer.recv_type("message"))["data"] == "still here"
    await reader_peer.close()


async def test_a_client_of_1000_topics_leaves_them_all(start_server: StartServer) -> None:
    running = await start_server(pubsub=True, authorize=allow_all)
    ws = running.ws
    left: list[tuple[str, str]] = []
    ws.on("leave", lambda cid, topic: left.append((cid, topic)))
    peer = await V1Peer.connect(running)
    welcome = await peer.hello()
    for i in range(1000):
        await peer.send(type="subscribe", topic=f"t{i}")
    for _ in range(1000):
        await peer.recv_type("subscribed")
    await peer.send(type="subscribe", topic="one-too-many", id=1)
    assert (await peer.recv_type("error"))["code"] == "limit"
    cid = welcome["client_id"]
    assert len(ws.topics(cid)) == 1000
    await peer.close()
    await wait_for(lambda: len(left) == 1000, what="1,000 leave events")
    assert sorted(topic for _, topic in left) == sorted(f"t{i}" for i in range(1000))
    assert {c for c, _ in left} == {cid}
    assert all(ws.subscribers(f"t{i}") == [] for i in range(1000))
    for topic in ("t0", "t999"):
        assert await ws.presence(topic) == {}


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"hello","x":[' + "[]," * 600_000 + "[]]}",  # 1.7 MiB, ~45 MiB parsed
        '{"type":"hello","x":[' + "1," * 900_000 + "1]}",
        "{" + ",".join(f'"k{i}":0' for i in range(100_000)) + "}",
    ],
)
async def test_a_request_of_many_values_is_refused_before_parsing(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, frame: str
) -> None:
    """A frame far from a request's few members is closed with 1008 without
    being parsed; a publication whose text is JSON with many values is not
    such a frame."""
    running = await start_server(pubsub=True, authorize=allow_all)
    other = await V1Peer.connect(running)
    await other.subscribe("t")
    attacker = await V1Peer.connect(running)
    caplog.set_level(logging.WARNING, logger="wshub")
    await attacker.conn.send(frame)
    with pytest.raises(websockets.ConnectionClosed) as caught:
        await attacker.recv()
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1008
    lines = [r.getMessage() for r in caplog.records if "wshub.v1 client" in r.getMessage()]
    assert len(lines) == 1 and "too many JSON values" in lines[0], lines
    text = json.dumps([{"k": [i, '"[{,'], "v": {}} for i in range(10_000)])
    publisher = await V1Peer.connect(running)
    await publisher.send(type="publish", topic="t", data=text, id=1)
    assert (await publisher.recv_type("published"))["id"] == 1
    assert (await other.recv_type("message"))["data"] == text
    await publisher.close()
    await other.close()
