"""The opening handshake over a raw socket: 101, 426, 400, 404, 405, version 8."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, run_node, wait_for
from tests.rawws import (
    RawClient,
    client_frame,
    http_exchange,
    read_http_head,
    upgrade_request,
)
from wshub import HttpServer


def expected_accept(key: str) -> str:
    # RFC 6455 §4.2.2, computed here independently of wshub.
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("version", ["13", "8"])
async def test_101_for_versions_13_and_8(start_server: StartServer, version: str) -> None:
    srv = await start_server()
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    raw = await RawClient.connect("127.0.0.1", srv.port, version=version, key=key)
    try:
        assert raw.reply.status == 101
        assert raw.reply.header("sec-websocket-accept") == expected_accept(key)
        assert raw.reply.header("upgrade").lower() == "websocket"  # type: ignore[union-attr]
        assert "upgrade" in raw.reply.header("connection").lower()  # type: ignore[union-attr]
        await raw.send(client_frame(0x1, b"same framing"))
        assert await raw.recv() == (True, 0x1, b"same framing")
    finally:
        raw.close()


@pytest.mark.parametrize("version", ["7", "12", "14", "abc"])
async def test_other_versions_get_426(start_server: StartServer, version: str) -> None:
    srv = await start_server()
    reply = await http_exchange(
        "127.0.0.1", srv.port, upgrade_request(host="127.0.0.1", version=version)
    )
    assert reply.status == 426
    assert reply.header("sec-websocket-version") == "13, 8"
    assert b"Traceback" not in reply.body


BAD_UPGRADES = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400, b"Sec-WebSocket-Key"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: tooshort\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, b"Sec-WebSocket-Key"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, b"Connection"),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, b"Host"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 400, b"Sec-WebSocket-Version"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
     b"Content-Length: 0\r\n\r\n", 405, b"GET"),
    (b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, b"HTTP/1.1"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n", 400, b"malformed"),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "status", "words"), BAD_UPGRADES)
async def test_malformed_upgrades_get_a_status_with_a_reason(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
    words: bytes,
) -> None:
    srv = await start_server()
    with caplog.at_level(logging.INFO, logger="wshub"):
        reply = await http_exchange("127.0.0.1", srv.port, request_bytes)
    assert reply.status == status
    assert words.lower() in reply.body.lower()
    assert b"Traceback" not in reply.body
    assert any(str(status) in r.getMessage() for r in caplog.records)  # a log line
    # And the server still serves.
    async with websockets.connect(srv.url, compression=None) as client:
        await client.send("ok")


async def test_plain_request_without_handler_is_404(start_server: StartServer) -> None:
    srv = await start_server()
    reply = await http_exchange(
        "127.0.0.1", srv.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.status == 404


async def test_upgrade_without_a_hub_is_404() -> None:
    server = HttpServer()
    await server.serve("127.0.0.1", 0)
    try:
        reply = await http_exchange("127.0.0.1", server.port, upgrade_request(host="x"))
        assert reply.status == 404
    finally:
        await server.close()


async def test_offered_extensions_are_declined_when_deflate_is_off(
    start_server: StartServer,
) -> None:
    srv = await start_server(per_message_deflate=False)
    raw = await RawClient.connect(
        "127.0.0.1",
        srv.port,
        extra=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
    )
    try:
        assert raw.reply.status == 101
        assert raw.reply.header("sec-websocket-extensions") is None
        # ... so RSV1 is a protocol error on this connection.
        await raw.send(client_frame(0x1, b"x", rsv=4))
        assert (await raw.recv_close())[0] == 1002
    finally:
        raw.close()


async def test_data_right_after_the_request_is_not_lost(start_server: StartServer) -> None:
    srv = await start_server()
    got: list[Any] = []
    srv.ws.on("message", lambda cid, data: got.append(data))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        # The request and the first frame in one write (a hasty client).
        writer.write(upgrade_request(host="x") + client_frame(0x1, b"eager"))
        reply = await read_http_head(reader)
        assert reply.status == 101
        await wait_for(lambda: got == ["eager"])
    finally:
        writer.close()


async def test_version_8_with_node_ws(start_server: StartServer) -> None:
    srv = await start_server()
    srv.ws.on("/v8", lambda cid, data: srv.ws.send(cid, data))
    plan = {
        "protocolVersion": 8,
        "send": [{"text": "hybi-08 text"}, {"hex": "00ff10"}],
        "expect": 2,
        "close": [1000, "bye"],
    }
    result = await run_node("client.mjs", srv.url + "/v8", json.dumps(plan))
    assert result["opened"] is True, result
    assert result["messages"] == [
        {"type": "text", "data": "hybi-08 text"},
        {"type": "binary", "hex": "00ff10"},
    ]
    assert result["close"]["code"] == 1000
