"""Ping/pong: automatic pongs, ping(id, pong_timeout), server pings every ping_delay, 1011."""

from __future__ import annotations

import asyncio
import json

import websockets

from tests.conftest import StartServer, run_node, wait_for
from tests.rawws import RawClient, client_frame, close_body
from wshub import CloseEvent


async def test_client_pings_get_pongs_with_the_same_payload(start_server: StartServer) -> None:
    srv = await start_server()
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        for payload in (b"", b"\x00\xffbinary", b"x" * 125):
            await raw.send(client_frame(0x9, payload))
            assert await raw.recv() == (True, 0xA, payload)
    finally:
        raw.close()


async def test_ping_with_an_answering_client_keeps_it_open(start_server: StartServer) -> None:
    srv = await start_server(ping_delay=0)
    ws = srv.ws
    async with websockets.connect(srv.url, compression=None, ping_interval=None) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        before = ws.bytes_read(cid)
        assert ws.ping(cid, pong_timeout=0.2) is True
        # websockets answers automatically: a masked 8-byte pong is 14 bytes.
        await wait_for(lambda: ws.bytes_read(cid) == before + 14, what="the pong")
        await asyncio.sleep(0.4)  # past the pong timeout: nothing must happen
        ws.send(cid, "still open")
        assert await client.recv() == "still open"
        assert ws.ready_state(cid) == "open"


async def test_ping_without_pong_closes_with_1011(start_server: StartServer) -> None:
    srv = await start_server(ping_delay=0)
    ws = srv.ws
    closed: list[CloseEvent] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    raw = await RawClient.connect("127.0.0.1", srv.port)  # never answers pings
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        assert ws.ping(cid, pong_timeout=0.1) is True
        _fin, opcode, payload = await raw.recv()
        assert opcode == 0x9 and len(payload) <= 125
        await raw.send(client_frame(0xA, b"wrong payload"))  # not the pong we wait for
        assert await raw.recv_close() == (1011, "pong timeout")
        await raw.send(client_frame(0x8, close_body(1011)))
        await wait_for(lambda: len(closed) == 1)
    finally:
        raw.close()
    assert closed[0].code == 1011


async def test_ping_uses_the_pong_timeout_option_by_default(start_server: StartServer) -> None:
    srv = await start_server(ping_delay=0, pong_timeout=0.1)
    ws = srv.ws
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        assert ws.ping(ws.clients[0]) is True
        assert await raw.recv_close() == (1011, "pong timeout")
    finally:
        raw.close()


async def test_server_pings_every_ping_delay(start_server: StartServer) -> None:
    # Node's ws answers pings by itself; it counts them and stays connected
    # across several pong timeouts, then closes with its own code.
    srv = await start_server(ping_delay=0.15, pong_timeout=0.3)
    ws = srv.ws
    closed: list[CloseEvent] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    plan = {"stayMs": 1500, "close": [4000, "done"]}
    result = await run_node("client.mjs", srv.url + "/", json.dumps(plan))
    assert result["opened"] is True
    assert result["pings"] >= 3, result
    assert result["close"]["code"] == 4000  # the server echoed the client's code
    await wait_for(lambda: len(closed) == 1)
    assert (closed[0].code, closed[0].reason, closed[0].was_clean) == (4000, "done", True)


async def test_setting_ping_delay_restarts_the_timer(start_server: StartServer) -> None:
    srv = await start_server(ping_delay=0, pong_timeout=0)
    ws = srv.ws
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        ws.ping_delay = 0.05
        for _ in range(2):  # it keeps pinging
            _fin, opcode, _payload = await raw.recv()
            assert opcode == 0x9
        ws.ping_delay = 0
        ws.close(ws.clients[0], 1000)
        assert await raw.recv_close() == (1000, "")
    finally:
        raw.close()


async def test_ping_after_close_started_returns_false(start_server: StartServer) -> None:
    srv = await start_server(ping_delay=0)
    ws = srv.ws
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        ws.close(cid)
        assert ws.ping(cid) is False
    finally:
        raw.close()


async def test_silent_client_is_closed_even_when_ping_delay_is_shorter_than_pong_timeout(
    start_server: StartServer,
) -> None:
    # Each server ping must not restart the previous ping's pong timer.
    srv = await start_server(ping_delay=0.05, pong_timeout=0.3)
    raw = await RawClient.connect("127.0.0.1", srv.port)  # never answers
    try:
        assert await asyncio.wait_for(raw.recv_close(), 10) == (1011, "pong timeout")
    finally:
        raw.close()
