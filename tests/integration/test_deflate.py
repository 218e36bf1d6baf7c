"""permessage-deflate over real sockets, with third-party clients (RFC 7692).

websockets (compression="deflate"), Node's ws (perMessageDeflate), headless
Chromium (which always offers it), and a raw socket for what polite clients
never send: a compression bomb, RSV1 without the extension, bad offers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from typing import Any

import pytest
import websockets
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

from tests.conftest import Running, StartServer, run_node, wait_for
from tests.integration.chromium_support import chromium
from wshub import DeflateOptions, WebSocket
from wshub.protocol import deflate as deflate_module
from wshub.transport.link import FramedLink

BIG_TEXT = "".join(f'{{"seq":{i},"text":"line {i} of the big message"}}' for i in range(30000))[
    : 1 << 20
]
BIG_BINARY = bytes(range(256)) * 4096  # 1 MiB
SMALL = [f"small {i} {'y' * (i % 50)}" for i in range(300)]


def echo(srv: Running, counters: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Echo every message; ``counters`` gets each client's (bytes read, written) as it goes."""
    ws = srv.ws
    ids: list[str] = []
    ws.on("open", ids.append)

    def reply(cid: str, data: str | bytes) -> None:
        ws.send(cid, data)
        if counters is not None:
            counters[cid] = (ws.bytes_read(cid), ws.bytes_written(cid))

    ws.on("message", reply)
    return ids


def deflate_client(srv: Running, path: str = "/", **factory: Any) -> Any:
    return websockets.connect(
        srv.url + path,
        extensions=[ClientPerMessageDeflateFactory(**factory)],
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=5,
    )


def negotiated(client: Any) -> PerMessageDeflate:
    extensions = client.protocol.extensions
    assert len(extensions) == 1 and isinstance(extensions[0], PerMessageDeflate), extensions
    ext: PerMessageDeflate = extensions[0]
    return ext


# ----------------------------------------------------------------- websockets


async def test_websockets_client_default_compression(start_server: StartServer) -> None:
    srv = await start_server()
    ids = echo(srv)
    async with websockets.connect(
        srv.url, compression="deflate", max_size=None, ping_interval=None
    ) as client:
        assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
        negotiated(client)
        for m in ["text é ✓", b"\x00\x01binary" * 100, BIG_TEXT, BIG_BINARY]:
            await client.send(m)
            assert await client.recv() == m
        for m in SMALL:
            await client.send(m)
        assert [await client.recv() for _ in SMALL] == SMALL
        raw = 2 * (len(BIG_TEXT) + len(BIG_BINARY))
        # Compression really happened both ways (not just negotiated).
        assert srv.ws.bytes_written(ids[0]) < raw // 4
        assert srv.ws.bytes_read(ids[0]) < raw // 4


@pytest.mark.parametrize(
    "factory",
    [
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 8, "client_max_window_bits": 9},
        {"server_max_window_bits": 15, "client_max_window_bits": 15},
        {"client_max_window_bits": True},
    ],
    ids=["no-takeover", "small-windows", "full-windows", "client-bits-no-value"],
)
async def test_websockets_client_parameters(
    start_server: StartServer, factory: dict[str, Any]
) -> None:
    srv = await start_server()
    echo(srv)
    async with deflate_client(srv, **factory) as client:
        negotiated(client)
        for m in ["hello " * 50, BIG_BINARY, BIG_TEXT, *SMALL[:50]]:
            await client.send(m)
            assert await client.recv() == m


async def test_deflate_disabled_opens_without_extension(start_server: StartServer) -> None:
    srv = await start_server(per_message_deflate=False)
    echo(srv)
    async with deflate_client(srv) as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers
        assert client.protocol.extensions == []
        await client.send("x" * 1000)
        assert await client.recv() == "x" * 1000


async def test_options_object_is_honoured(start_server: StartServer) -> None:
    srv = await start_server(
        per_message_deflate=DeflateOptions(no_context_takeover=True, max_window_bits=10)
    )
    echo(srv)
    async with deflate_client(srv) as client:
        header = client.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in header
        assert "client_no_context_takeover" in header
        assert "server_max_window_bits=10" in header
        await client.send(BIG_TEXT)
        assert await client.recv() == BIG_TEXT


# ------------------------------------------------------------------- Node ws


@pytest.mark.parametrize(
    "pmd",
    [
        {"threshold": 0},
        {
            "threshold": 0,
            "serverNoContextTakeover": True,
            "clientNoContextTakeover": True,
            "serverMaxWindowBits": 10,
            "clientMaxWindowBits": 9,
        },
    ],
    ids=["defaults", "no-takeover-small-windows"],
)
async def test_node_ws_per_message_deflate(start_server: StartServer, pmd: dict[str, Any]) -> None:
    import json

    srv = await start_server()
    counters: dict[str, tuple[int, int]] = {}
    ids = echo(srv, counters)
    result = await run_node("deflate_client.mjs", srv.url + "/", json.dumps(pmd), timeout=60)
    assert result["errors"] == [], result
    assert result["ok"] and result["checked"] == 305, result
    assert result["extensions"] and result["extensions"].startswith("permessage-deflate")
    assert result.get("closeCode") == 1000
    # Really compressed both ways: the two 1 MiB messages alone are 2 MiB
    # each way uncompressed.
    read, written = counters[ids[0]]
    assert read < (2 << 20) // 4 and written < (2 << 20) // 4, (read, written)


# ------------------------------------------------------------------ Chromium

CHROMIUM_SCRIPT = """
async (url) => {
  const big = 'x'.repeat(1 << 20);
  const bin = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 255);
  const small = Array.from({length: 300}, (_, i) => 'msg ' + i + ' ' + 'z'.repeat(i % 60));
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const got = [];
  let waiter = null;
  ws.onmessage = (e) => {
    got.push(e.data);
    if (waiter) { const w = waiter; waiter = null; w(); }
  };
  await new Promise((ok, bad) => {
    ws.onopen = ok;
    ws.onerror = () => bad(new Error('ws error'));
  });
  const next = async () => {
    while (!got.length) await new Promise((r) => { waiter = r; });
    return got.shift();
  };
  const errors = [];
  ws.send('hello ✓'); if ((await next()) !== 'hello ✓') errors.push('text');
  ws.send(bin); const b = new Uint8Array(await next());
  if (b.length !== bin.length || b.some((v, i) => v !== bin[i])) errors.push('binary 1 MiB');
  ws.send(big); if ((await next()) !== big) errors.push('text 1 MiB');
  for (const s of small) ws.send(s);
  for (const s of small) if ((await next()) !== s) { errors.push('small ' + s); break; }
  const extensions = ws.extensions;
  const closed = new Promise((ok) => { ws.onclose = (e) => ok(e.code); });
  ws.close(1000);
  return {extensions, errors, closeCode: await closed};
}
"""


async def test_chromium(start_server: StartServer) -> None:
    srv = await start_server(allow_origin="*")
    counters: dict[str, tuple[int, int]] = {}
    ids = echo(srv, counters)
    async with chromium() as browser:
        page = await browser.new_page()
        result = await page.evaluate(CHROMIUM_SCRIPT, srv.url + "/")
    assert result["errors"] == [], result
    assert result["extensions"].startswith("permessage-deflate"), result
    assert result["closeCode"] == 1000
    assert ids, "the browser never connected"
    read, written = counters[ids[0]]
    assert read < (2 << 20) // 4 and written < (2 << 20) // 4, (read, written)


# ----------------------------------------------------------------- broadcast


async def test_broadcast_shares_frames_only_where_valid(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await start_server()
    ws: WebSocket = srv.ws
    prepares = 0
    encodes = 0
    original_prepare = FramedLink.prepare
    original_encode = deflate_module.PerMessageDeflate.encode

    def counting_prepare(self: FramedLink, payload: bytes, text: bool) -> bytes:
        nonlocal prepares
        prepares += 1
        return original_prepare(self, payload, text)

    def counting_encode(self: deflate_module.PerMessageDeflate, data: bytes) -> bytes | None:
        nonlocal encodes
        encodes += 1
        return original_encode(self, data)

    monkeypatch.setattr(FramedLink, "prepare", counting_prepare)
    monkeypatch.setattr(deflate_module.PerMessageDeflate, "encode", counting_encode)

    nct10 = {"server_no_context_takeover": True, "server_max_window_bits": 10}
    nct11 = {"server_no_context_takeover": True, "server_max_window_bits": 11}
    async with (
        deflate_client(srv, **nct10) as a1,
        deflate_client(srv, **nct10) as a2,
        deflate_client(srv, **nct10) as a3,
        deflate_client(srv, **nct11) as b,
        deflate_client(srv) as c1,  # context takeover: its own compressor
        deflate_client(srv) as c2,
        websockets.connect(srv.url, compression=None, ping_interval=None, max_size=None) as d,
    ):
        clients = [a1, a2, a3, b, c1, c2, d]
        await wait_for(lambda: len(ws.clients) == len(clients), what="7 clients")
        messages: list[str | bytes] = [
            f"broadcast {i}: " + "payload " * (20 + i) if i % 2 else os.urandom(8) * (100 + i)
            for i in range(20)
        ]
        messages.append(BIG_TEXT)
        for m in messages:
            assert ws.broadcast(m) == len(clients)
        for client in clients:
            got = [await client.recv() for _ in messages]
            assert got == messages
    per_broadcast = len(messages)
    # Shared groups: the three nct10 links (one frame), nct11 (one), the
    # uncompressed link (one): 3 prepared frames per broadcast; the two
    # context-takeover links compress on their own, via send_message.
    assert prepares == 3 * per_broadcast
    # Compression work: nct10 once, nct11 once, c1 and c2 once each.
    assert encodes == 4 * per_broadcast


# ------------------------------------------------------------ raw socket


class RawDeflateClient:
    """A minimal, impolite client: handshake by hand, frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: str | None = None

    @classmethod
    async def connect(cls, srv: Running, offer: str | None) -> RawDeflateClient:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET / HTTP/1.1",
            f"Host: {srv.host}:{srv.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer is not None:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, head
        self = cls(reader, writer)
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                self.extensions = value.strip()
        return self

    def send(self, opcode: int, payload: bytes, *, rsv1: bool = False) -> None:
        mask = os.urandom(4)
        b0 = 0x80 | opcode | (0x40 if rsv1 else 0)
        n = len(payload)
        if n < 126:
            head = bytes((b0, 0x80 | n))
        elif n < 65536:
            head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
        else:
            head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.writer.write(head + mask + (masked if n else b""))

    async def read_frame(self) -> tuple[int, int, bytes]:
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 10)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0, b0 & 0x0F, await self.reader.readexactly(n)

    async def expect_close(self) -> int:
        while True:
            _, opcode, payload = await self.read_frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                self.writer.close()
                return int(code)

    def close(self) -> None:
        self.writer.close()


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    pytest.fail("no VmHWM in /proc/self/status: this test needs Linux")


def gigabyte_bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    first = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    again = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    return (first + again * 1023)[:-4]


async def test_bomb_over_the_wire_is_1009_and_server_lives(start_server: StartServer) -> None:
    srv = await start_server(max_payload=1 << 20)
    echo(srv)
    raw = await RawDeflateClient.connect(srv, "permessage-deflate")
    assert raw.extensions is not None and raw.extensions.startswith("permessage-deflate")
    bomb = gigabyte_bomb()
    peak_before = peak_rss_kib()
    raw.send(0x2, bomb, rsv1=True)
    assert await raw.expect_close() == 1009
    # The server (this process) never came near inflating the GiB: its peak
    # RSS grew by far less (the exact bound is in the protocol test).
    growth = peak_rss_kib() - peak_before
    assert growth < 200 * 1024, f"peak RSS grew by {growth} KiB"
    # The server is fine and still compresses for others.
    async with deflate_client(srv) as client:
        await client.send(BIG_BINARY[:100000])
        assert await client.recv() == BIG_BINARY[:100000]


async def test_rsv1_without_extension_is_1002(start_server: StartServer) -> None:
    srv = await start_server()
    echo(srv)
    raw = await RawDeflateClient.connect(srv, None)
    assert raw.extensions is None
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw.send(0x1, (c.compress(b"hello") + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True)
    assert await raw.expect_close() == 1002


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo",
        "permessage-deflate; server_max_window_bits=99",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits",
        '"garbage"; ;;; ,',
    ],
)
async def test_bad_offer_opens_without_extension(start_server: StartServer, offer: str) -> None:
    srv = await start_server()
    echo(srv)
    raw = await RawDeflateClient.connect(srv, offer)
    assert raw.extensions is None
    raw.send(0x1, b"still works")
    _, opcode, payload = await raw.read_frame()
    assert (opcode, payload) == (0x1, b"still works")
    raw.close()


async def test_compressed_text_from_raw_client_and_rsv1_on_answer(
    start_server: StartServer,
) -> None:
    srv = await start_server()
    echo(srv)
    raw = await RawDeflateClient.connect(
        srv, "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    text = ("compress me please " * 40).encode()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw.send(0x1, (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True)
    b0, opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and b0 & 0x80 and b0 & 0x40, hex(b0)
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == text
    # A ping with a big payload comes back as a pong, never compressed.
    raw.send(0x9, b"p" * 125)
    b0, opcode, payload = await raw.read_frame()
    assert opcode == 0xA and not b0 & 0x40 and payload == b"p" * 125
    raw.close()
