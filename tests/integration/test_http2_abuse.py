"""HTTP/2 abuse: rapid reset, SETTINGS/PING/PRIORITY floods, too many streams, bad frames.

The attacker writes raw HTTP/2 frames (hyperframe + hpack, no state machine
to stop it); each attack must end in a GOAWAY with the right error code and
a log line, with no traceback, a bounded amount of work answered, nothing
leaked in the hub, and a well-behaved HTTP/2 client served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.conftest import Running, StartServer, wait_for
from tests.integration.h2_client_support import OP_TEXT, H2Client, ws_frame
from wshub import Handshake
from wshub.transport import http2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wshub")


class RawH2:
    """An h2c attacker: frames in, frames out, no rules."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.buf = bytearray()
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, stream, payload)

    @classmethod
    async def connect(cls, port: int) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        return self

    def headers(self, stream_id: int, fields: list[tuple[str, str]], end: bool = True) -> bytes:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return HeadersFrame(stream_id, data=self.encoder.encode(fields), flags=flags).serialize()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_until_closed(self, timeout: float = 10.0) -> None:
        """Read (and parse) everything until the server closes the connection."""

        async def loop() -> None:
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return
                if not data:
                    return
                self.buf += data
                while len(self.buf) >= 9:
                    length = int.from_bytes(self.buf[:3], "big")
                    if len(self.buf) < 9 + length:
                        break
                    ftype, flags = self.buf[3], self.buf[4]
                    sid = struct.unpack("!I", self.buf[5:9])[0] & 0x7FFFFFFF
                    self.frames.append((ftype, flags, sid, bytes(self.buf[9 : 9 + length])))
                    del self.buf[: 9 + length]

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("the server did not close the connection") from None
        self.writer.close()

    def goaway_code(self) -> int:
        goaways = [f for f in self.frames if f[0] == 0x7]
        assert goaways, f"no GOAWAY among {len(self.frames)} frames"
        return int(struct.unpack("!I", goaways[-1][3][4:8])[0])

    def count(self, ftype: int, flags: int | None = None) -> int:
        return sum(1 for f in self.frames if f[0] == ftype and (flags is None or f[1] == flags))


def authority(srv: Running) -> list[tuple[str, str]]:
    return [(":scheme", "http"), (":authority", f"127.0.0.1:{srv.port}")]


async def bystander(srv: Running) -> H2Client:
    c = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    sid = await c.open_ws("/", authority=f"127.0.0.1:{srv.port}", scheme="http")
    assert (await c.response(sid)).status == 200
    c.ws_send(sid, OP_TEXT, b"before")
    assert (await c.ws_recv(sid)).payload == b"before"
    c.ws_sid = sid  # type: ignore[attr-defined]
    return c


async def still_served(c: H2Client) -> None:
    sid = c.ws_sid  # type: ignore[attr-defined]
    c.ws_send(sid, OP_TEXT, b"after")
    assert (await c.ws_recv(sid)).payload == b"after"
    assert c.goaway is None


def echo(srv: Running) -> None:
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))


def assert_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("wshub")]
    assert any(text in line for line in lines), lines
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


async def test_rapid_reset_gets_goaway(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(limit_by_ip=50)
    echo(srv)
    good = await bystander(srv)
    bad = await RawH2.connect(srv.port)
    fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":path", "/")]
    fields += [*authority(srv), ("sec-websocket-version", "13")]
    burst = []
    for i in range(2000):
        sid = 1 + 2 * i
        burst.append(bad.headers(sid, fields, end=False))
        burst.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
    bad.send(b"".join(burst))
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    # Bounded work: the server stopped answering long before 2000 streams.
    answered = bad.count(0x1)  # HEADERS: our 200s
    assert answered <= http2.RESET_BUDGET[0] + 10, answered
    assert_logged(caplog, "too many stream resets")
    # A stream the peer reset before its answer is not an error of ours.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]
    await still_served(good)
    # Nothing leaked: every opened WebSocket closed, its per-IP slot released
    # (limit_by_ip=50 would refuse a new one otherwise).
    await wait_for(lambda: len(srv.ws.clients) == 1, what="the reset clients to be gone")
    c2 = await bystander(srv)
    await c2.close()
    await good.close()


@pytest.mark.parametrize(
    ("name", "frame", "why"),
    [
        ("settings", SettingsFrame(0).serialize(), "SETTINGS flood"),
        ("ping", PingFrame(0, opaque_data=b"12345678").serialize(), "PING flood"),
        ("priority", PriorityFrame(1, depends_on=0, stream_weight=5).serialize(), "frame flood"),
        ("empty-data", None, "empty DATA flood"),
    ],
)
async def test_control_frame_floods_get_goaway(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    name: str,
    frame: bytes | None,
    why: str,
) -> None:
    srv = await start_server(handler=lambda request: "ok")
    echo(srv)
    good = await bystander(srv)
    bad = await RawH2.connect(srv.port)
    if frame is None:
        # A POST whose body never comes: thousands of empty DATA frames.
        opening = bad.headers(1, [(":method", "POST"), (":path", "/"), *authority(srv)], False)
        frame = DataFrame(1, data=b"").serialize()
        bad.send(opening)
    bad.send(frame * 20000)
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    # Bounded work: h2 acknowledges what one socket read held (asyncio reads
    # at most 256 KiB) before the budget stops it, never all 20000.
    one_read = 256 * 1024 // len(frame) + 2
    if name == "ping":
        assert bad.count(0x6, 0x1) <= one_read
    if name == "settings":
        assert bad.count(0x4, 0x1) <= one_read
    assert_logged(caplog, why)
    await still_served(good)
    await good.close()


async def test_too_many_concurrent_streams_gets_goaway(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(handler=lambda request: "ok")
    echo(srv)
    good = await bystander(srv)
    bad = await RawH2.connect(srv.port)
    fields = [(":method", "POST"), (":path", "/"), *authority(srv)]
    # Bodies never finished: every stream stays open.
    n = http2.MAX_CONCURRENT_STREAMS + 5
    bad.send(b"".join(bad.headers(1 + 2 * i, fields, end=False) for i in range(n)))
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.PROTOCOL_ERROR
    assert_logged(caplog, "HTTP/2 protocol error")
    await still_served(good)
    await good.close()
    await wait_for(lambda: len(srv.server.connections.protocols) == 0, what="connections closed")


async def test_garbage_after_the_preface_gets_goaway(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()
    bad = await RawH2.connect(srv.port)
    # A DATA frame on stream 0 is a connection error (RFC 9113 §6.1).
    bad.send(DataFrame(1, data=b"x").serialize()[:5] + b"\x00\x00\x00\x00x")
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.PROTOCOL_ERROR
    assert_logged(caplog, "HTTP/2 protocol error")


async def test_a_websocket_stream_cannot_grow_the_servers_memory(
    start_server: StartServer,
) -> None:
    """A client that ignores its window is cut off by h2's flow control (GOAWAY)."""
    srv = await start_server()
    bad = await RawH2.connect(srv.port)
    fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":path", "/")]
    fields += [*authority(srv), ("sec-websocket-version", "13")]
    bad.send(bad.headers(1, fields, end=False))
    await wait_for(lambda: len(srv.ws.clients) == 1, what="the WebSocket to open")
    srv.ws.pause(srv.ws.clients[0])
    # Far past the stream window, ignoring flow control entirely.
    frame = ws_frame(OP_TEXT, b"y" * 16000)
    data = b"".join(DataFrame(1, data=frame).serialize() for _ in range(40))
    bad.send(data)
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.FLOW_CONTROL_ERROR
    await wait_for(lambda: not srv.ws.clients, what="the client to be closed")


async def test_too_many_streams_waiting_for_the_handshake_hook_gets_goaway(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``limit_by_ip`` off, what bounds the handshakes that wait for a
    slow async hook on one connection is SETTINGS_MAX_CONCURRENT_STREAMS:
    one stream more is a GOAWAY, and every waiting hook is cancelled."""
    waiting: list[str] = []
    cancelled: list[str] = []

    async def hook(hs: Handshake) -> None:
        if hs.path == "/slow":
            waiting.append(hs.path)
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.append(hs.path)

    srv = await start_server(on_handshake=hook, limit_by_ip=0)
    echo(srv)
    good = await bystander(srv)
    bad = await RawH2.connect(srv.port)
    fields = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":path", "/slow"),
        *authority(srv),
        ("sec-websocket-version", "13"),
    ]
    limit = http2.MAX_CONCURRENT_STREAMS
    bad.send(b"".join(bad.headers(1 + 2 * i, fields, end=False) for i in range(limit)))
    await wait_for(lambda: len(waiting) == limit, what="every stream's hook waiting")
    bad.send(bad.headers(1 + 2 * limit, fields, end=False))
    await bad.read_until_closed()
    assert bad.goaway_code() == ErrorCodes.PROTOCOL_ERROR
    await wait_for(lambda: len(cancelled) == limit, what="every waiting hook cancelled")
    assert len(waiting) == limit
    await still_served(good)
    await good.close()
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="nothing counted")
