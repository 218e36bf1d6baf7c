"""A deliberately dumb WebSocket client for tests: raw bytes on a raw socket.

Third-party clients are polite (they mask, they answer pings, they refuse to
send a bad version); these helpers are for the tests that need a client that
misbehaves, ignores pings, or reads the HTTP response byte for byte.  Written
from RFC 6455 alone, sharing no code with wshub.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
    length: int | None = None,
) -> bytes:
    """One client frame; ``mask=None`` leaves it unmasked, ``length`` lies about the size."""
    b0 = opcode | (0x80 if fin else 0) | (rsv << 4)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def close_body(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """``(fin, opcode, payload)`` of the next (unmasked, server) frame."""
    b0, b1 = await reader.readexactly(2)
    if b1 & 0x80:
        raise AssertionError("server frames must not be masked (RFC 6455 §5.1)")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return bool(b0 & 0x80), b0 & 0x0F, await reader.readexactly(n)


def parse_close(payload: bytes) -> tuple[int, str]:
    if not payload:
        return 1005, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


class HttpReply:
    def __init__(
        self, status: int, headers: dict[str, list[str]], body: bytes, head_size: int = 0
    ) -> None:
        self.head_size = head_size  # bytes of the status line and headers, blank line included
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


async def read_http_head(reader: asyncio.StreamReader) -> HttpReply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return HttpReply(status, headers, b"", len(head))


async def http_exchange(host: str, port: int, request: bytes) -> HttpReply:
    """Send raw request bytes; return the response (body read per Content-Length)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        reply = await read_http_head(reader)
        length = int(reply.header("content-length") or 0)
        reply.body = await reader.readexactly(length)
        return reply
    finally:
        writer.close()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    version: str = "13",
    key: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    method: str = "GET",
    encoding: str = "utf-8",
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or new_key()}",
        f"Sec-WebSocket-Version: {version}",
    ]
    lines += [f"{k}: {v}" for k, v in extra or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(encoding)


class RawClient:
    """An upgraded connection driven by hand."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: HttpReply
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.reply = reply

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/", **kwargs: object) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(upgrade_request(path, host=f"{host}:{port}", **kwargs))  # type: ignore[arg-type]
        reply = await read_http_head(reader)
        if reply.status != 101:
            writer.close()
            raise AssertionError(f"upgrade refused: {reply.status}")
        return cls(reader, writer, reply)

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def recv(self) -> tuple[bool, int, bytes]:
        return await read_frame(self.reader)

    async def recv_close(self) -> tuple[int, str]:
        """Skip data/ping frames until the Close frame; return its code and reason."""
        while True:
            _fin, opcode, payload = await self.recv()
            if opcode == 0x8:
                return parse_close(payload)

    async def at_eof(self) -> bool:
        """True once the server closed the TCP connection (reads until EOF)."""
        rest = await self.reader.read()
        return rest == b""

    def close(self) -> None:
        self.writer.close()
