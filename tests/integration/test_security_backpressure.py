"""Clients that never read: send() says slow down, drain() waits, and past the hard
cap the client is closed with 1008 instead of the server's memory growing.

The RSS test runs the server in its own process (tests/integration/
security_rss_server.py) so its memory can be read from /proc: 50 clients
that never read while 100 MiB are broadcast, and two reading clients that
must get every message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import sys
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT, StartServer, wait_for
from tests.integration.security_support import (
    Bystander,
    echo,
    read_close,
    read_reply,
    upgrade,
    wshub_lines,
)
from wshub import ClientNotFound

MiB = 1024 * 1024


async def stalled_client(host: str, port: int, path: str = "/") -> socket.socket:
    """A client that completes the handshake and then never reads (tiny receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, upgrade(f"{host}:{port}", path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past the 101
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def slow_reader(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upgraded connection with a tiny receive buffer (set before connecting)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade(f"{host}:{port}"))
    assert (await read_reply(reader)).status == 101
    return reader, writer


async def test_send_false_then_drain_waits(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    opened: list[str] = []
    ws.on("open", opened.append)
    reader, writer = await slow_reader(srv.host, srv.port)
    await wait_for(lambda: bool(opened), what="the client to open")
    (cid,) = opened
    chunk = os.urandom(16 * 1024)
    sent = 0
    while ws.send(cid, chunk):  # the client is not reading
        sent += 1
        assert sent < 10_000, "send() never said slow down"
        await asyncio.sleep(0)
    sent += 1
    drained = asyncio.ensure_future(ws.drain(cid))
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not drained.done(), "drain() returned while the client read nothing"
    # Now the client reads everything: drain() returns, nothing was dropped.
    got = 0
    while got < sent:
        _b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        assert await reader.readexactly(n) == chunk
        got += 1
    await asyncio.wait_for(drained, 10)
    assert ws.send(cid, b"ok")
    writer.close()


async def test_write_limit_closes_with_1008(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_server(write_limit=256 * 1024)
    echo(srv)
    ws = srv.ws
    bystander = await Bystander.connect(srv)
    opened: list[str] = []
    ws.on("open", opened.append)
    reader, writer = await slow_reader(srv.host, srv.port)
    await wait_for(lambda: bool(opened), what="the client to open")
    (cid,) = opened
    caplog.clear()
    chunk = b"x" * (64 * 1024)
    closed: list[tuple[str, int, bool]] = []
    ws.on("close", lambda c, event: closed.append((c, event.code, event.was_clean)))
    for _ in range(10_000):  # a sender that ignores send()'s False
        if cid not in ws.clients:
            break
        ws.send(cid, chunk)
        await asyncio.sleep(0)
    else:
        pytest.fail("the write buffer was never capped")
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "write_limit" in lines[0], lines
    # A peer can cause this on every connection it opens: the line goes
    # through the refusals' rate limit (logger wshub.refusals).
    assert [r.name for r in caplog.records if "write_limit" in r.getMessage()] == ["wshub.refusals"]
    # A close the server decided is reported at once, with its code; the
    # ID is free while the connection still drains towards its Close.
    assert closed == [(cid, 1008, False)]
    with pytest.raises(ClientNotFound):  # its "close" ran: the ID is unknown
        ws.send(cid, b"late")
    # The stalled socket still counts under limit_by_ip until it is gone.
    assert ws._per_ip.count("127.0.0.1") == 2  # it and the bystander
    await bystander.check()
    # The client finally reads: behind the backlog is our Close, 1008.
    assert await read_close(reader, timeout=20) == 1008
    writer.close()
    await wait_for(lambda: cid not in ws.clients, what="the stalled client to be gone")
    await bystander.close()
    await wait_for(lambda: len(ws._per_ip) == 0, what="the per-IP table to empty")


# ---------------------------------------------------------------------- RSS

STALLED = 50
MESSAGE = 256 * 1024
COUNT = 400  # 400 x 256 KiB = 100 MiB broadcast
WINDOW = 4


async def get_stats(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = await read_reply(reader)
    writer.close()
    assert reply.status == 200
    result: dict[str, Any] = json.loads(reply.body)
    return result


async def test_stalled_clients_do_not_grow_server_memory() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.security_rss_server",
        "2.0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.strip().isdigit():
            err = await proc.stderr.read() if proc.stderr else b""
            pytest.fail(f"the RSS server did not start: {line!r} {err.decode()[-2000:]}")
        port = int(line)
        base = await get_stats(port)
        stalled = [await stalled_client("127.0.0.1", port) for _ in range(STALLED)]
        url = f"ws://127.0.0.1:{port}/"
        sender = await websockets.connect(url, compression=None, max_size=None)
        other = await websockets.connect(url, compression=None, max_size=None)
        await wait_for_clients(port, STALLED + 2)
        filler = os.urandom(MESSAGE - 4)

        async def receive_all(conn: Any, seen: list[int], acked: asyncio.Queue[int]) -> None:
            for _ in range(COUNT):
                data = await asyncio.wait_for(conn.recv(), 60)
                assert len(data) == MESSAGE and data[4:] == filler
                seen.append(int.from_bytes(data[:4], "big"))
                acked.put_nowait(seen[-1])

        seen_sender: list[int] = []
        seen_other: list[int] = []
        acks: asyncio.Queue[int] = asyncio.Queue()
        recv_tasks = [
            asyncio.ensure_future(receive_all(sender, seen_sender, acks)),
            asyncio.ensure_future(receive_all(other, seen_other, asyncio.Queue())),
        ]
        for i in range(COUNT):
            if i >= WINDOW:
                await asyncio.wait_for(acks.get(), 60)  # keep the readers in step
            await sender.send(i.to_bytes(4, "big") + filler)
        await asyncio.gather(*recv_tasks)
        during = await get_stats(port)
        assert seen_sender == list(range(COUNT)) and seen_other == list(range(COUNT))
        # The stalled clients were closed (1008, then dropped after the close timeout).
        final = await wait_for_clients(port, 2)
        peak_mib = (final["VmHWM"] - base["VmRSS"]) / 1024
        bound_mib = (STALLED * (final["write_limit"] + 2 * MESSAGE) + 64 * MiB) / MiB
        print(
            f"\nRSS: {STALLED} stalled + 2 reading clients, {COUNT * MESSAGE // MiB} MiB "
            f"broadcast; server VmRSS at start {base['VmRSS'] / 1024:.1f} MiB, "
            f"after the broadcast {during['VmRSS'] / 1024:.1f} MiB, "
            f"peak VmHWM {final['VmHWM'] / 1024:.1f} MiB (+{peak_mib:.1f} MiB, bound "
            f"{bound_mib:.0f} MiB); {final['overflows']} clients closed with 1008 "
            f"(write_limit {final['write_limit'] // 1024} KiB)"
        )
        assert final["overflows"] == STALLED
        assert peak_mib <= bound_mib
        for conn in (sender, other):
            await conn.close()
        for sock in stalled:
            sock.close()
        final = await wait_for_clients(port, 0)
        assert final["per_ip"] == 0
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def wait_for_clients(port: int, n: int) -> dict[str, Any]:
    for _ in range(600):
        stats = await get_stats(port)
        if stats["clients"] == n:
            return stats
        await asyncio.sleep(0.05)
    pytest.fail(f"the server still has {stats['clients']} clients, expected {n}")
