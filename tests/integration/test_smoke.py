"""A first end-to-end check with the websockets client: echo both types, close 1000."""

from __future__ import annotations

import websockets

from tests.conftest import StartServer


async def test_echo_text_and_binary(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    async with websockets.connect(srv.url + "/", compression=None) as client:
        await client.send("héllo")
        assert await client.recv() == "héllo"
        await client.send(b"\x00\xff" * 1000)
        assert await client.recv() == b"\x00\xff" * 1000
    assert client.close_code == 1000
