"""Helpers for the attack tests: a raw-socket attacker and a well-behaved bystander.

The attacker speaks bytes (written from RFC 6455 alone, sharing no code with
wshub); the bystander is the third-party ``websockets`` client, whose echo
must keep working while the attack runs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
import time
from typing import Any

import pytest
import websockets

from tests.conftest import Running


def mask_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    length: int | None = None,
) -> bytes:
    """One masked client frame; ``length`` may lie about the payload size."""
    n = len(payload) if length is None else length
    b0 = opcode | (0x80 if fin else 0)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    key = os.urandom(4)
    masked = (
        (
            int.from_bytes(payload, "big")
            ^ int.from_bytes((key * (len(payload) // 4 + 1))[: len(payload)], "big")
        ).to_bytes(len(payload), "big")
        if payload
        else b""
    )
    return head + key + masked


def upgrade(
    host: str, path: str = "/", extra: list[tuple[str, str]] | None = None, version: str = "13"
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        f"Sec-WebSocket-Version: {version}",
    ]
    lines += [f"{k}: {v}" for k, v in extra or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if status != 101:
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return Reply(status, headers, body)


async def http_raw(
    srv: Running, data: bytes, host: str | None = None
) -> tuple[Reply, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host or srv.host, srv.port)
    writer.write(data)
    await writer.drain()
    return await read_reply(reader), reader, writer


async def refused(srv: Running, data: bytes, host: str | None = None) -> Reply:
    """Send a request that must be refused; return the reply once the server hung up."""
    reply, reader, writer = await http_raw(srv, data, host)
    assert reply.status != 101, "the attack was accepted"
    assert b"Traceback" not in reply.body
    assert await asyncio.wait_for(reader.read(), 10) == b"", "refusal must close the connection"
    writer.close()
    return reply


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


async def read_close(reader: asyncio.StreamReader, timeout: float = 10) -> int:
    """Skip frames until the server's Close; return its code."""

    async def go() -> int:
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005

    return await asyncio.wait_for(go(), timeout)


def wshub_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """wshub's log lines at INFO and above captured so far."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("wshub") and r.levelno >= logging.INFO
    ]


def echo(srv: Running) -> None:
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))


class Bystander:
    """A well-behaved websockets client whose echo must keep working."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.rtts: list[float] = []

    @classmethod
    async def connect(cls, srv: Running, **kwargs: Any) -> Bystander:
        conn = await websockets.connect(srv.url + "/", compression=None, **kwargs)
        return cls(conn)

    async def check(self) -> float:
        """One echo round trip; fails the test if it does not come back intact."""
        payload = os.urandom(8).hex()
        t0 = time.perf_counter()
        await self.conn.send(payload)
        got = await asyncio.wait_for(self.conn.recv(), 10)
        rtt = time.perf_counter() - t0
        assert got == payload, "the bystander's echo was harmed"
        self.rtts.append(rtt)
        return rtt

    async def close(self) -> None:
        await self.check()
        await self.conn.close()
        assert self.conn.close_code == 1000


# A ping flooder for a separate process (so that it does not share the
# server's event loop): pings as fast as the socket takes them, counts the
# pongs, stops at the server's Close and prints JSON.
FLOODER = r"""
import base64, json, os, select, socket, sys, time

host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(
    f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n".encode()
)
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, _, buf = buf.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.1 101"):
    print(json.dumps({"error": head.decode("latin-1")}))
    sys.exit(0)
batch = (b"\x89\x80\x00\x00\x00\x00") * 2000  # empty masked pings
pending = memoryview(batch)
s.setblocking(False)
sent_bytes = pongs = 0
code = None
t0 = time.perf_counter()
while code is None and time.perf_counter() - t0 < 30:
    readable, writable, _ = select.select([s], [s] if code is None else [], [], 1.0)
    if writable:
        try:
            n = s.send(pending)
        except BlockingIOError:
            n = 0
        except OSError:
            break
        sent_bytes += n
        pending = pending[n:] if n < len(pending) else memoryview(batch)
    if readable:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
            n = buf[1] & 0x7F
            opcode, payload, buf = buf[0] & 0x0F, buf[2 : 2 + n], buf[2 + n :]
            if opcode == 0xA:
                pongs += 1
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big")
print(json.dumps({"pings": sent_bytes // 6, "pongs": pongs, "code": code,
                  "seconds": time.perf_counter() - t0}))
"""
