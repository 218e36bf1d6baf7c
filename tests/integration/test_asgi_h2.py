"""``ws.asgi()`` under Hypercorn's WebSockets over HTTP/2 (RFC 8441), with the ``h2`` client.

Hypercorn speaks h2c with prior knowledge and offers extended CONNECT
(SETTINGS_ENABLE_CONNECT_PROTOCOL); each CONNECT stream with
``:protocol = websocket`` becomes one client of the hub, with the same
events, IDs and refusals as over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Iterator, Sequence

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests.integration.asgi_servers import AsgiServer, start

APP = "tests.integration.asgi_app:app"


@pytest.fixture(scope="module")
def hypercorn() -> Iterator[AsgiServer]:
    srv = start("hypercorn", APP)
    yield srv
    srv.stop()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, unfragmented WebSocket frame (clients mask, RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the complete (unmasked) server frames out of ``buf``: (opcode, payload)."""
    out = []
    while len(buf) >= 2:
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, pos = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < pos + n:
            break
        out.append((opcode, bytes(buf[pos : pos + n])))
        del buf[: pos + n]
    return out


class H2WebSockets:
    """A minimal RFC 8441 client: WebSocket streams over one h2c connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.connect_protocol = False
        self.responses: dict[int, dict[str, str]] = {}
        self.buffers: dict[int, bytearray] = {}
        self.ended: set[int] = set()

    @classmethod
    async def open(cls, port: int) -> H2WebSockets:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        await self.flush()
        await self.until(lambda: self.connect_protocol, "SETTINGS_ENABLE_CONNECT_PROTOCOL")
        return self

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def until(self, done: Callable[[], bool], what: str) -> None:
        while not done():
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise AssertionError(f"connection closed while waiting for {what}")
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    setting = ev.changed_settings.get(
                        h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                    )
                    if setting is not None and setting.new_value == 1:
                        self.connect_protocol = True
                elif isinstance(ev, h2.events.ResponseReceived):
                    self.responses[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    self.buffers.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(ev.stream_id)
            await self.flush()

    async def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str]]:
        sid = self.conn.get_next_available_stream_id()
        port = self.writer.get_extra_info("peername")[1]
        self.conn.send_headers(
            sid,
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{port}"),
                ("sec-websocket-version", "13"),
                *headers,
            ],
        )
        await self.flush()
        await self.until(lambda: sid in self.responses, f"the response on stream {sid}")
        return sid, self.responses[sid]

    async def send(self, sid: int, opcode: int, payload: bytes) -> None:
        self.conn.send_data(sid, client_frame(opcode, payload))
        await self.flush()

    async def recv(self, sid: int) -> tuple[int, bytes]:
        got: list[tuple[int, bytes]] = []

        def have() -> bool:
            got.extend(server_frames(self.buffers.setdefault(sid, bytearray())))
            return bool(got)

        await self.until(have, f"a frame on stream {sid}")
        frame = got.pop(0)
        assert not got, "one frame at a time in these tests"
        return frame

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_websockets_over_http2_share_one_connection(hypercorn: AsgiServer) -> None:
    h2c = await H2WebSockets.open(hypercorn.port)
    try:
        echo, response = await h2c.connect("/")
        assert response[":status"] == "200"
        assert response["set-cookie"].startswith("wshub=")
        assert "sec-websocket-extensions" not in response
        chat_a, _ = await h2c.connect("/chat")
        chat_b, _ = await h2c.connect("/chat")
        await h2c.send(echo, 0x1, "héllo over h2".encode())
        assert await h2c.recv(echo) == (0x1, "héllo over h2".encode())
        await h2c.send(echo, 0x2, b"\x00\x01" * 300)
        assert await h2c.recv(echo) == (0x2, b"\x00\x01" * 300)
        await h2c.send(chat_a, 0x1, b"to the room")
        assert await h2c.recv(chat_a) == (0x1, b"to the room")
        assert await h2c.recv(chat_b) == (0x1, b"to the room")
        # A clean close of one stream: the server answers with its Close frame.
        await h2c.send(echo, 0x8, struct.pack("!H", 1000) + b"bye")
        opcode, payload = await h2c.recv(echo)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000
        # The other streams on the connection are unaffected.
        await h2c.send(chat_b, 0x1, b"still here")
        assert await h2c.recv(chat_a) == (0x1, b"still here")
    finally:
        await h2c.close()


async def test_refusal_over_http2_is_an_http_status(hypercorn: AsgiServer) -> None:
    h2c = await H2WebSockets.open(hypercorn.port)
    try:
        sid, response = await h2c.connect("/", [("origin", "http://evil.example")])
        assert response[":status"] == "403"
        await h2c.until(lambda: sid in h2c.ended, "the end of the refused stream")
        assert b"origin not allowed" in h2c.buffers.get(sid, b"")
    finally:
        await h2c.close()
