"""The order of what the server sends when the core answers on its own.

The connection core decides pongs, the Close reply and the Close that
fails a connection; the driver must still send them in their place among
the application's answers to the messages around them (Autobahn 3.2, 5.6,
7.1.x): all frames arrive in one read here, so any reordering shows.
"""

from __future__ import annotations

import asyncio
import struct

from tests.conftest import StartServer
from tests.integration.security_support import echo, http_raw, read_frame, upgrade
from tests.rawws import client_frame, close_body

TEXT, CONT, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA


async def connected(
    start_server: StartServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    srv = await start_server(ping_delay=0)
    echo(srv)
    reply, reader, writer = await http_raw(srv, upgrade(f"127.0.0.1:{srv.port}"))
    assert reply.status == 101
    return reader, writer


async def test_a_message_before_a_protocol_error_is_answered_first(
    start_server: StartServer,
) -> None:
    reader, writer = await connected(start_server)
    bad = client_frame(TEXT, b"x", rsv=2)  # RSV2 without an extension: 1002
    writer.write(client_frame(TEXT, b"hello") + bad + client_frame(PING, b"late"))
    assert await read_frame(reader) == (TEXT, b"hello")
    opcode, payload = await read_frame(reader)
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1002
    writer.close()


async def test_a_ping_between_fragments_is_answered_before_the_message(
    start_server: StartServer,
) -> None:
    reader, writer = await connected(start_server)
    writer.write(
        client_frame(TEXT, b"frag", fin=False)
        + client_frame(PING, b"between")
        + client_frame(CONT, b"ment")
    )
    assert await read_frame(reader) == (PONG, b"between")
    assert await read_frame(reader) == (TEXT, b"fragment")
    writer.close()


async def test_the_close_reply_follows_the_echo_of_the_message_before_it(
    start_server: StartServer,
) -> None:
    reader, writer = await connected(start_server)
    writer.write(client_frame(TEXT, b"bye soon") + client_frame(CLOSE, close_body(1000)))
    assert await read_frame(reader) == (TEXT, b"bye soon")
    opcode, payload = await read_frame(reader)
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1000
    assert await reader.read() == b""  # the server closes the TCP connection first
