"""Attacks after the handshake: oversized messages (1009) and ping floods (1008).

Each runs against a live server while a websockets bystander's echo keeps
working; the ping-flood test prints the bystander's round-trip times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import sys
import zlib

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import Running, StartServer, wait_for
from tests.integration.security_support import (
    FLOODER,
    Bystander,
    echo,
    http_raw,
    mask_frame,
    read_close,
    read_frame,
    upgrade,
    wshub_lines,
)


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wshub")


async def raw_client(srv: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reply, reader, writer = await http_raw(srv, upgrade(f"{srv.host}:{srv.port}"))
    assert reply.status == 101
    return reader, writer


async def expect_close(conn: websockets.ClientConnection, code: int) -> None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 10)
    assert conn.close_code == code


# -------------------------------------------------------------- max_payload

LIMIT = 1000


@pytest.mark.parametrize("kind", ["binary", "text"])
async def test_max_payload_exact_passes_one_more_fails(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    srv = await start_server(max_payload=LIMIT)
    echo(srv)
    bystander = await Bystander.connect(srv)

    def msg(n: int) -> str | bytes:
        return "é" * (n // 2) if kind == "text" else os.urandom(n)

    async with websockets.connect(srv.url + "/", compression=None) as c:
        exact = msg(LIMIT)
        await c.send(exact)
        assert await c.recv() == exact
        caplog.clear()
        await c.send(msg(LIMIT + 2) if kind == "text" else msg(LIMIT + 1))
        await expect_close(c, 1009)
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "1009" in lines[0], lines
    await bystander.close()


async def test_max_payload_counts_all_fragments(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(max_payload=LIMIT)
    echo(srv)
    bystander = await Bystander.connect(srv)
    async with websockets.connect(srv.url + "/", compression=None) as c:
        parts = [b"a" * 400, b"b" * 400, b"c" * 200]  # exactly LIMIT in three frames
        await c.send(parts)
        assert await c.recv() == b"".join(parts)
        caplog.clear()
        await c.send([b"a" * 400, b"b" * 400, b"c" * 201])
        await expect_close(c, 1009)
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "1009" in lines[0], lines
    await bystander.close()


async def test_huge_length_header_refused_before_any_payload(
    start_server: StartServer,
) -> None:
    srv = await start_server()  # the default max_payload
    echo(srv)
    bystander = await Bystander.connect(srv)
    for opcode, fin in ((2, True), (1, False)):
        reader, writer = await raw_client(srv)
        # Only the 14-byte header of a 2^63-1 byte frame is sent: the answer
        # must come from the header alone, nothing is buffered or allocated.
        writer.write(mask_frame(opcode, fin=fin, length=2**63 - 1)[:14])
        assert await read_close(reader) == 1009
        writer.close()
        await bystander.check()
    # 2^63 and above: the most significant bit must be 0 (RFC 6455 §5.2).
    reader, writer = await raw_client(srv)
    writer.write(mask_frame(2, length=2**64 - 1)[:14])
    assert await read_close(reader) == 1002
    writer.close()
    # A fragmented message whose second frame's header pushes it over.
    reader, writer = await raw_client(srv)
    limit = srv.ws.max_payload
    writer.write(mask_frame(2, b"x" * 1000, fin=False))
    writer.write(mask_frame(0, length=limit)[:14])
    assert await read_close(reader) == 1009
    writer.close()
    await bystander.close()
    await wait_for(lambda: len(srv.ws._per_ip) == 0, what="the per-IP table to empty")


async def test_compression_bomb_closed_with_1009(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(max_payload=64 * 1024)
    echo(srv)
    bystander = await Bystander.connect(srv)
    async with websockets.connect(srv.url + "/", compression="deflate") as c:
        if not c.response.headers.get("Sec-WebSocket-Extensions"):
            pytest.fail("permessage-deflate was not negotiated: the bomb cannot be tested")
        ok = b"\x00" * (64 * 1024)
        await c.send(ok)
        assert await c.recv() == ok
        caplog.clear()
        # 64 MiB of zeros compress to ~64 KiB: refused while inflating.
        await c.send(b"\x00" * (64 * 1024 * 1024))
        await expect_close(c, 1009)
    assert len(zlib.compress(b"\x00" * 1024 * 1024)) < 2048  # the bomb's ratio
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "1009" in lines[0], lines
    await bystander.close()


# ---------------------------------------------------------------- ping flood


async def test_ping_flood_bounded_then_1008_while_bystander_served(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()
    echo(srv)
    bystander = await Bystander.connect(srv)
    baseline = [await bystander.check() for _ in range(50)]
    caplog.clear()
    # The attacker runs in its own process, pinging as fast as it can.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOODER,
        srv.host,
        str(srv.port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(proc.communicate())
    during: list[float] = []
    while not communicate.done():
        during.append(await bystander.check())
    out, err = await communicate
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    baseline.sort()
    during.sort()
    print(
        f"\nping flood: {result['pings']} pings sent, {result['pongs']} pongs, "
        f"close {result['code']} after {result['seconds'] * 1000:.0f} ms; "
        f"bystander echo RTT before: median {baseline[len(baseline) // 2] * 1000:.2f} ms, "
        f"during the flood: {len(during)} round trips, "
        f"median {during[len(during) // 2] * 1000:.2f} ms, max {during[-1] * 1000:.2f} ms"
    )
    assert result["code"] == 1008
    cfg = srv.ws._link_config
    assert result["pongs"] <= cfg.ping_burst + cfg.ping_rate * result["seconds"] + 1
    assert result["pongs"] < result["pings"]
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "ping flood" in lines[0], lines
    await bystander.close()


async def test_paced_flood_is_coalesced_to_the_latest_ping(start_server: StartServer) -> None:
    srv = await start_server()
    echo(srv)
    bystander = await Bystander.connect(srv)
    reader, writer = await raw_client(srv)
    pongs: list[int] = []
    code = None
    n = 0

    async def pinger() -> None:
        nonlocal n
        try:
            while True:  # ~400 pings per second, in small batches
                writer.write(b"".join(mask_frame(9, struct.pack("!Q", n + i)) for i in range(4)))
                n += 4
                await writer.drain()
                await asyncio.sleep(0.01)
        except (ConnectionError, OSError):
            pass

    task = asyncio.ensure_future(pinger())
    try:
        while code is None:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            if opcode == 0xA:
                pongs.append(struct.unpack("!Q", payload)[0])
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0]
            await bystander.check() if len(pongs) % 8 == 0 else None
    finally:
        task.cancel()
        writer.close()
    assert code == 1008
    burst = srv.ws._link_config.ping_burst
    assert pongs[:burst] == list(range(burst))  # the burst is answered one by one
    later = pongs[burst:]
    assert later, "pings past the burst must still be answered (coalesced)"
    assert later == sorted(later) and len(set(later)) == len(later)
    # Coalesced: a pong answers the latest ping, skipping the ones in between.
    assert later[-1] - later[0] > len(later)
    assert len(pongs) < n / 2
    await bystander.close()


async def test_ordinary_pings_answered_at_once(start_server: StartServer) -> None:
    srv = await start_server()
    echo(srv)
    async with websockets.connect(srv.url + "/", compression=None, ping_interval=None) as c:
        for i in range(40):  # 20 per second for two seconds: well within the guard
            waiter = await c.ping(struct.pack("!I", i))
            await asyncio.wait_for(waiter, 10)
            await asyncio.sleep(0.05)
        await c.send("still open")
        assert await c.recv() == "still open"
    assert c.close_code == 1000
