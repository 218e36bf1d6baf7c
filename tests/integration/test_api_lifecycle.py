"""open/close/error events, close(), ready_state, url, clients, ClientNotFound."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, wait_for
from tests.rawws import RawClient, client_frame, close_body
from wshub import ClientNotFound, CloseEvent, Handshake, WebSocketProtocolError


def connect(url: str, **kwargs: Any) -> Any:
    return websockets.connect(url, compression=None, ping_interval=None, **kwargs)


async def test_open_url_clients_and_server_close(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    opened: list[str] = []
    closed: list[tuple[str, CloseEvent]] = []
    states: list[str] = []
    ws.on("open", lambda cid: (opened.append(cid), states.append(ws.ready_state(cid))))
    ws.on("close", lambda cid, ev: closed.append((cid, ev)))
    async with connect(srv.url + "/room/1?token=123&x=%20") as client:
        await wait_for(lambda: len(opened) == 1)
        [cid] = opened
        assert ws.clients == [cid]
        url = ws.url(cid)
        assert url.scheme == "ws"
        assert url.netloc == f"127.0.0.1:{srv.port}"
        assert url.path == "/room/1"
        assert url.query == "token=123&x=%20"
        assert url.geturl() == f"ws://127.0.0.1:{srv.port}/room/1?token=123&x=%20"
        # The hub says "opening" until the "open" callbacks have returned.
        assert states == ["opening"]
        assert ws.ready_state(cid) == "open"
        assert ws.close(cid, 4321, "bye now") is True
        assert ws.close(cid, 1000) is False  # already closing
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv()
        assert client.close_code == 4321
        assert client.close_reason == "bye now"
    await wait_for(lambda: len(closed) == 1)
    cid2, event = closed[0]
    assert cid2 == cid
    assert (event.code, event.reason, event.was_clean) == (4321, "bye now", True)
    assert event.message == "bye now"  # the seed's name
    assert ws.clients == []
    with pytest.raises(ClientNotFound):
        ws.url(cid)


async def test_client_initiated_close_event(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    closed: list[CloseEvent] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    async with connect(srv.url) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        await client.close(4000, "client leaving")
    await wait_for(lambda: len(closed) == 1)
    assert (closed[0].code, closed[0].reason, closed[0].was_clean) == (4000, "client leaving", True)
    assert client.close_code == 4000  # the server echoed the code (RFC 6455 §5.5.1)


async def test_abrupt_disconnect_is_1006_not_clean(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    closed: list[CloseEvent] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    raw = await RawClient.connect("127.0.0.1", srv.port)
    await wait_for(lambda: len(ws.clients) == 1)
    sock = raw.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.writer.transport.abort()  # RST, no Close frame
    await wait_for(lambda: len(closed) == 1)
    assert closed[0].code == 1006 and closed[0].was_clean is False
    assert ws.clients == []


async def test_protocol_violation_is_an_error_event_and_a_1002(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    errors: list[Exception] = []
    closed: list[CloseEvent] = []
    ws.on("error", lambda cid, exc: errors.append(exc))
    ws.on("close", lambda cid, ev: closed.append(ev))
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await raw.send(client_frame(0x1, b"unmasked", mask=None))
        assert await raw.recv_close() == (1002, "client frame not masked")
        await raw.send(client_frame(0x8, close_body(1002)))
        assert await raw.at_eof()  # the server stopped writing after its Close
    finally:
        raw.close()  # the server lingers until the peer hangs up
    await wait_for(lambda: len(closed) == 1)
    assert len(errors) == 1 and isinstance(errors[0], WebSocketProtocolError)
    assert errors[0].code == 1002
    assert closed[0].code == 1002
    # The server is unharmed.
    async with connect(srv.url) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        ws.send(ws.clients[0], "fine")
        assert await client.recv() == "fine"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x1, b"\xc3\x28"), 1007),
        (client_frame(0x2, b"x" * 2000), 1009),
        (client_frame(0x9, b"x" * 126), 1002),
        (client_frame(0x1, b"x", rsv=4), 1002),
        (client_frame(0x5, b""), 1002),
        (client_frame(0x8, close_body(1005)), 1002),
    ],
)
async def test_bad_frames_get_the_right_close_code(
    start_server: StartServer, frame: bytes, code: int
) -> None:
    srv = await start_server(max_payload=1000)
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await raw.send(frame)
        got, _reason = await raw.recv_close()
        assert got == code
    finally:
        raw.close()


async def test_close_argument_validation(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    async with connect(srv.url) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        for bad in (1005, 1006, 999, 5000, 2000):
            with pytest.raises(ValueError):
                ws.close(cid, bad)
        with pytest.raises(ValueError):
            ws.close(cid, 1000, "x" * 124)
        assert ws.close(cid) is True
        with pytest.raises(websockets.ConnectionClosedOK):
            await client.recv()
        assert client.close_code == 1000


async def test_ready_state_transitions(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    seen: list[str] = []
    gate = asyncio.Event()

    @ws.on("open")
    async def slow_open(cid: str) -> None:
        seen.append(ws.ready_state(cid))
        await gate.wait()

    @ws.on("message")
    def on_message(cid: str, data: Any) -> None:
        seen.append(ws.ready_state(cid))

    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        assert ws.ready_state(cid) == "opening"  # the async "open" callback is still running
        # A message and the Close in one packet: while the message callback
        # runs, the peer's Close has been read but not answered.
        await raw.send(client_frame(0x1, b"m") + client_frame(0x8, close_body(1000)))
        gate.set()
        assert await raw.recv_close() == (1000, "")
        await wait_for(lambda: len(seen) == 2)
        assert seen == ["opening", "writeOnly"]
    finally:
        raw.close()
    raw2 = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid2] = ws.clients
        gate.set()
        await wait_for(lambda: ws.ready_state(cid2) == "open")
        ws.close(cid2, 1001)
        assert ws.ready_state(cid2) == "readOnly"  # we sent Close; the peer may still send
        assert await raw2.recv_close() == (1001, "")
        await raw2.send(client_frame(0x8, close_body(1001)))
        assert await raw2.at_eof()
    finally:
        raw2.close()


async def test_messages_wait_for_an_async_open_callback(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    log: list[str] = []

    @ws.on("open")
    async def opened(cid: str) -> None:
        await asyncio.sleep(0.05)
        log.append("open done")

    ws.on("message", lambda cid, data: log.append(data))
    async with connect(srv.url) as client:
        await client.send("first")
        await wait_for(lambda: len(log) == 2)
    assert log == ["open done", "first"]


async def test_unknown_ids_raise_client_not_found(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    calls: list[Any] = [
        lambda i: ws.send(i, "x"),
        lambda i: ws.close(i),
        lambda i: ws.ping(i),
        lambda i: ws.url(i),
        lambda i: ws.bytes_read(i),
        lambda i: ws.bytes_written(i),
        lambda i: ws.pause(i),
        lambda i: ws.resume(i),
        lambda i: ws.is_paused(i),
        lambda i: ws.ready_state(i),
        lambda i: ws.set_encoding(i, "hex"),
        lambda i: ws.set_keep_alive(i, True),
        lambda i: ws.set_no_delay(i, True),
    ]
    for call in calls:
        for bad_id in ("00000000-0000-4000-8000-000000000000", "", None, 42):
            with pytest.raises(ClientNotFound) as info:
                call(bad_id)
            assert isinstance(info.value, KeyError)
    with pytest.raises(ClientNotFound):
        await ws.drain("nobody")


async def test_close_timeout_drops_a_peer_that_never_answers(start_server: StartServer) -> None:
    srv = await start_server(close_timeout=0.2)
    ws = srv.ws
    closed: list[CloseEvent] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        ws.close(ws.clients[0], 4000, "leave")
        assert await raw.recv_close() == (4000, "leave")
        # We never answer: after close_timeout the server drops the TCP connection.
        assert await asyncio.wait_for(raw.at_eof(), 10)
        await wait_for(lambda: len(closed) == 1)
    finally:
        raw.close()
    assert closed[0].was_clean is False
    assert closed[0].code == 1006


async def test_server_close_cuts_a_websocket_whose_peer_never_answers(
    start_server: StartServer,
) -> None:
    """After the 101 the link is the transport's protocol and the
    Http1Protocol is gone: ``HttpServer.close`` still finds the connection
    (in its table of links) and cuts it at its timeout, long before the
    client's own close_timeout (10 s) would."""
    srv = await start_server(close_timeout=10.0)
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(srv.ws.clients) == 1)
        assert len(srv.server.connections.links) == 1
        assert not srv.server.connections.protocols
        closing = asyncio.ensure_future(srv.server.close(timeout=0.3))
        assert await raw.recv_close() == (1001, "server shutting down")
        # We never answer the Close: close() cuts the connection at 0.3 s.
        await asyncio.wait_for(closing, 5)
        assert await asyncio.wait_for(raw.at_eof(), 2)
        assert not srv.server.connections.links
    finally:
        raw.close()


async def test_exceptions_in_open_close_and_error_callbacks_are_contained(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()
    ws = srv.ws
    errors: list[Exception] = []

    def bad_open(cid: str) -> None:
        raise RuntimeError("open failed")

    def bad_close(cid: str, ev: CloseEvent) -> None:
        raise RuntimeError("close failed")

    def bad_error(cid: str, exc: Exception) -> None:
        errors.append(exc)
        raise RuntimeError("error handler failed too")

    ws.on("open", bad_open)
    ws.on("close", bad_close)
    ws.on("error", bad_error)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    with caplog.at_level("ERROR", logger="wshub"):
        async with connect(srv.url) as client:
            await client.send("served anyway")
            assert await client.recv() == "served anyway"
            [cid] = ws.clients
            assert ws.set_encoding(cid, "utf8") is True
        await wait_for(lambda: "close failed" in caplog.text, what="the close callback's log")
    assert [str(e) for e in errors] == ["open failed"]  # no loop through "error"
    assert "error handler failed too" in caplog.text
    async with connect(srv.url) as again:
        await again.send("still up")
        assert await again.recv() == "still up"


async def test_a_closing_client_is_unlisted_and_never_raises(
    start_server: StartServer,
) -> None:
    # From the start of its closing handshake to its "close" event: not in
    # ws.clients, send() is False (dropped: it could never be delivered),
    # close() and ping() are False, the other methods still answer; after
    # the "close" event the ID is unknown (ClientNotFound).
    srv = await start_server()
    ws = srv.ws
    closed: list[tuple[str, CloseEvent]] = []
    ws.on("close", lambda cid, event: closed.append((cid, event)))
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        assert ws.close(cid) is True
        assert ws.clients == []
        assert ws.send(cid, "too late") is False
        assert ws.broadcast("too late") == 0
        assert ws.close(cid) is False
        assert ws.ping(cid) is False
        assert ws.ready_state(cid) == "readOnly"
        assert ws.url(cid).path == "/"
        assert ws.bytes_read(cid) > 0 and ws.bytes_written(cid) > 0
        assert ws.is_paused(cid) is False
        assert ws.set_encoding(cid, "hex") is True
        assert closed == []  # the peer has not answered yet
        assert await raw.recv_close() == (1000, "")
        await raw.send(client_frame(0x8, close_body(1000)))
        await wait_for(lambda: closed, what="the close event")
        assert [(c, e.code, e.was_clean) for c, e in closed] == [(cid, 1000, True)]
        with pytest.raises(ClientNotFound):
            ws.send(cid, "x")
        for call in (ws.url, ws.close, ws.ready_state):
            with pytest.raises(ClientNotFound):
                call(cid)
    finally:
        raw.close()


@pytest.mark.parametrize("how", ["peer", "server-decided"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_close_callbacks_read_the_clients_record(
    start_server: StartServer, how: str, kind: str
) -> None:
    # A chat says "alice left" from what the hook attached: ws.data(id),
    # ws.request(id) and ws.url(id) answer in the "close" callbacks, sync or
    # async (after an await too), for a close the peer started and for one
    # the server decided (1009, reported at once); after them the ID is unknown.
    def hook(hs: Handshake) -> None:
        hs.data = {"user": hs.query_params["user"][0]}

    srv = await start_server(on_handshake=hook, max_payload=16)
    ws = srv.ws
    seen: list[tuple[Any, str, int]] = []
    finished = asyncio.Event()

    def read(cid: str, event: CloseEvent) -> None:
        seen.append((ws.data(cid), ws.url(cid).query, event.code))

    if kind == "sync":

        def on_close(cid: str, event: CloseEvent) -> None:
            read(cid, event)
            finished.set()

        ws.on("close", on_close)
    else:

        async def on_close_async(cid: str, event: CloseEvent) -> None:
            await asyncio.sleep(0.01)
            read(cid, event)
            finished.set()

        ws.on("close", on_close_async)
    async with connect(srv.url + "/?user=alice") as client:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        assert ws.request(cid) is not None
        if how == "peer":
            await client.close()
        else:
            await client.send("x" * 17)  # over max_payload: 1009 from the server
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
    await asyncio.wait_for(finished.wait(), 10)
    code = 1000 if how == "peer" else 1009
    assert seen == [({"user": "alice"}, "user=alice", code)]

    def forgotten() -> bool:
        try:
            ws.data(cid)
        except ClientNotFound:
            return True
        return False

    await wait_for(forgotten, what="the ID unknown once the callbacks are done")
