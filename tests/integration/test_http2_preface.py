"""h2c prior knowledge also when the client's preface arrives in pieces (RFC 9113 §3.3)."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events

from tests.conftest import StartServer


async def _settings_answer(port: int, pieces: list[bytes]) -> list[type]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)  # separate reads on the server
    writer.write(conn.data_to_send())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return [type(e) for e in conn.receive_data(data)]


async def test_preface_split_across_reads_is_still_http2(start_server: StartServer) -> None:
    srv = await start_server()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    events = await _settings_answer(srv.port, [preface[:3], preface[3:17], preface[17:]])
    assert h2.events.RemoteSettingsChanged in events


async def test_http1_request_starting_like_the_preface_is_still_http1(
    start_server: StartServer,
) -> None:
    # "P" then "OST": a prefix of the preface at first, then plain HTTP/1.1.
    srv = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"P")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"OST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 404")
