"""No leak: 10,000 connect/disconnect cycles through every close path leave every table empty.

Paths: clean close, abrupt reset (RST), client gone mid-handshake, handshake
failure (400), refusal (403 origin, 429 per IP), handshake timeout (408),
close timeout (the client never answers our Close), protocol error (1002).
The cycles run on many concurrent raw sockets; a bystander is served
throughout.  Afterwards the per-IP table, the hub's ``_clients`` and
``_reserved`` and the server's connection set are empty, and every opened
client got exactly one "close" event.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable

from tests.conftest import Running, StartServer, wait_for
from tests.integration.security_support import (
    Bystander,
    echo,
    mask_frame,
    read_close,
    read_reply,
    upgrade,
)

CYCLES = 10_000
CONCURRENCY = 64


async def open_raw(srv: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(srv.host, srv.port)


async def handshake(
    srv: Running, path: str = "/", extra: list[tuple[str, str]] | None = None
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_raw(srv)
    writer.write(upgrade(f"{srv.host}:{srv.port}", path, extra))
    reply = await read_reply(reader)
    return reply.status, reader, writer


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def clean(srv: Running) -> str:
    status, reader, writer = await handshake(srv)
    assert status == 101
    writer.write(mask_frame(8, struct.pack("!H", 1000)))
    assert await read_close(reader) == 1000
    assert await reader.read() == b""
    writer.close()
    return "clean"


async def abrupt(srv: Running) -> str:
    status, _reader, writer = await handshake(srv)
    assert status == 101
    reset(writer)
    return "reset"


async def gone_mid_handshake(srv: Running) -> str:
    _reader, writer = await open_raw(srv)
    writer.write(upgrade(f"{srv.host}:{srv.port}")[:40])
    await writer.drain()
    reset(writer)
    return "mid-handshake"


async def bad_upgrade(srv: Running) -> str:
    status, _reader, writer = await handshake(srv, extra=[("Sec-WebSocket-Key", "x")])
    assert status == 400
    writer.close()
    return "400"


async def bad_origin(srv: Running) -> str:
    status, _reader, writer = await handshake(srv, extra=[("Origin", "https://evil.net")])
    assert status == 403
    writer.close()
    return "403"


async def handshake_timeout(srv: Running) -> str:
    reader, writer = await open_raw(srv)
    writer.write(upgrade(f"{srv.host}:{srv.port}")[:30])
    reply = await read_reply(reader)
    assert reply.status == 408
    writer.close()
    return "408"


async def close_timeout(srv: Running) -> str:
    # The server closes clients on /close-me at once; this one never answers.
    status, reader, writer = await handshake(srv, "/close-me")
    assert status == 101
    assert await read_close(reader) == 1000
    assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped after close_timeout
    writer.close()
    return "close-timeout"


async def protocol_error(srv: Running) -> str:
    status, reader, writer = await handshake(srv)
    assert status == 101
    writer.write(b"\x82\x01x")  # unmasked
    assert await read_close(reader) == 1002
    writer.close()
    return "1002"


PATHS: list[Callable[[Running], Awaitable[str]]] = [
    clean,
    abrupt,
    gone_mid_handshake,
    bad_upgrade,
    bad_origin,
    handshake_timeout,
    close_timeout,
    protocol_error,
]


async def test_ten_thousand_cycles_leave_no_trace(start_server: StartServer) -> None:
    srv = await start_server(
        allow_origin=["https://good.example"],
        close_timeout=0.3,
        limit_by_ip=CONCURRENCY + 2,
        server_options={"handshake_timeout": 0.3},
    )
    echo(srv)
    ws = srv.ws
    opened: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    ws.on("open", lambda cid: opened.update([cid]))
    ws.on("close", lambda cid, event: closed.update([cid]))
    ws.on("/close-me", lambda cid, data: None)
    ws.on("open", lambda cid: ws.close(cid) if ws.url(cid).path == "/close-me" else None)
    bystander = await Bystander.connect(srv)
    sem = asyncio.Semaphore(CONCURRENCY)
    done: Counter[str] = Counter()

    async def cycle(i: int) -> None:
        async with sem:
            done[await asyncio.wait_for(PATHS[i % len(PATHS)](srv), 30)] += 1

    await asyncio.gather(*(cycle(i) for i in range(CYCLES - 500)))
    await bystander.check()

    # 429: fill this address's slots, then knock 500 more times.
    held = [await handshake(srv) for _ in range(CONCURRENCY + 1)]  # + the bystander
    assert all(status == 101 for status, _, _ in held)

    async def knock() -> None:
        async with sem:
            status, _reader, writer = await handshake(srv)
            assert status == 429
            writer.close()
            done["429"] += 1

    await asyncio.gather(*(knock() for _ in range(500)))
    for _status, _reader, writer in held:
        reset(writer)
    await bystander.close()

    assert sum(done.values()) == CYCLES, done
    await wait_for(lambda: not ws._clients, timeout=20, what="every client to be gone")
    await wait_for(
        lambda: not srv.server.connections.protocols, timeout=20, what="every connection to be gone"
    )
    assert len(ws._per_ip) == 0, dict(ws._per_ip._counts)
    assert not ws._reserved
    assert opened == closed  # one "close" per opened client, whatever ended it
    assert all(n == 1 for n in closed.values())
    print(f"\n{CYCLES} cycles: {dict(done)}; {len(opened)} clients opened and closed")
