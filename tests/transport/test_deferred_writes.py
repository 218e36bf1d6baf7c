"""Frames are written at the end of the loop iteration, the pipe closed after them.

What callbacks send is queued and written once per connection per loop
iteration (all connections' writes back to back); closing the connection
waits for that write.  These tests drive the orderings where that matters
with a raw client on a real socket: everything arrives, in order, and our
Close frame always precedes the end of the TCP stream.
"""

from __future__ import annotations

import asyncio
import socket

from tests.conftest import StartServer
from tests.rawws import (
    RawClient,
    client_frame,
    close_body,
    parse_close,
    read_frame,
    read_http_head,
    upgrade_request,
)


async def test_many_messages_in_one_read_come_back_in_order(start_server: StartServer) -> None:
    srv = await start_server()
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    client = await RawClient.connect(srv.host, srv.port)
    burst = b"".join(client_frame(0x1, f"message {i}".encode()) for i in range(200))
    await client.send(burst + client_frame(0x8, close_body(1000, "done")))
    for i in range(200):
        _fin, opcode, payload = await client.recv()
        assert (opcode, payload) == (0x1, f"message {i}".encode())
    assert parse_close((await client.recv())[2]) == (1000, "")  # echoes the code
    assert await client.at_eof()
    client.close()


async def test_close_and_fin_in_one_packet_still_get_our_close(start_server: StartServer) -> None:
    # The peer's Close and its FIN arrive together: the Close reply is queued
    # when the EOF is seen, and must be written before the connection ends.
    srv = await start_server()
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    for reply_code in (1000, 4001):
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(upgrade_request(host=f"{srv.host}:{srv.port}"))
        assert (await read_http_head(reader)).status == 101
        writer.write(client_frame(0x1, b"last words") + client_frame(0x8, close_body(reply_code)))
        sock = writer.get_extra_info("socket")
        sock.shutdown(socket.SHUT_WR)
        assert await read_frame(reader) == (True, 0x1, b"last words")
        _fin, opcode, payload = await read_frame(reader)
        assert opcode == 0x8 and parse_close(payload)[0] == reply_code
        assert await reader.read() == b""
        writer.close()


async def test_protocol_error_sends_close_then_half_closes(start_server: StartServer) -> None:
    srv = await start_server()
    client = await RawClient.connect(srv.host, srv.port)
    # An unmasked frame: 1002, then the server stops writing (FIN) but keeps
    # reading until we hang up.
    await client.send(client_frame(0x1, b"x", mask=None))
    assert (await client.recv_close())[0] == 1002
    assert await client.reader.read() == b""
    client.close()


async def test_server_close_from_a_callback_reaches_the_client(start_server: StartServer) -> None:
    srv = await start_server()

    def on_message(cid: str, data: str | bytes) -> None:
        srv.ws.send(cid, "bye soon")
        srv.ws.close(cid, 4000, "because")
        # Sent after close(): refused, never written behind our Close.

    srv.ws.on("message", on_message)
    client = await RawClient.connect(srv.host, srv.port)
    await client.send(client_frame(0x1, b"hi"))
    assert await client.recv() == (True, 0x1, b"bye soon")
    _fin, opcode, payload = await client.recv()
    assert opcode == 0x8 and parse_close(payload) == (4000, "because")
    await client.send(client_frame(0x8, close_body(4000)))
    assert await client.at_eof()
    client.close()
