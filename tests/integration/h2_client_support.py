"""A small HTTP/2 client on the third-party ``h2`` library, for the HTTP/2 tests.

It speaks HTTP/2 over TLS (ALPN ``h2``) or h2c with prior knowledge, opens
RFC 8441 WebSocket streams and builds/reads RFC 6455 frames itself (masked,
as a client must), so nothing of wshub's own code sits on the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import zlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

# ---------------------------------------------------------------- RFC 6455 frames

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame: always masked (RFC 6455 §5.3)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + _mask(payload, mask)


def _mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class WsFrame:
    def __init__(self, fin: bool, rsv1: bool, opcode: int, payload: bytes) -> None:
        self.fin = fin
        self.rsv1 = rsv1
        self.opcode = opcode
        self.payload = payload

    @property
    def close_code(self) -> int:
        assert self.opcode == OP_CLOSE
        return int(struct.unpack("!H", self.payload[:2])[0]) if len(self.payload) >= 2 else 1005

    def __repr__(self) -> str:
        return f"WsFrame(op={self.opcode}, fin={self.fin}, rsv1={self.rsv1}, {len(self.payload)}B)"


def parse_frames(buf: bytearray) -> list[WsFrame]:
    """Take the complete server frames (unmasked) off the front of ``buf``."""
    frames = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            pos = 10
        if len(buf) < pos + n:
            break
        payload = bytes(buf[pos : pos + n])
        frames.append(WsFrame(bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload))
        del buf[: pos + n]
    return frames


def deflate_message(data: bytes) -> bytes:
    """RFC 7692 §7.2.1 compression without context takeover."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_message(data: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


# ------------------------------------------------------------------ the client


class StreamState:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.data = bytearray()
        self.frames: list[WsFrame] = []
        self.ended = False
        self.websocket = False  # parse DATA as RFC 6455 frames
        self.reset: int | None = None
        self.changed = asyncio.Event()

    @property
    def status(self) -> int:
        assert self.headers is not None
        return int(dict(self.headers)[b":status"])

    def header(self, name: str) -> str | None:
        assert self.headers is not None
        for k, v in self.headers:
            if k.decode() == name:
                return v.decode()
        return None


class H2Client:
    """HTTP/2 over one TCP connection; ``auto_ack=False`` leaves DATA unacknowledged."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.streams: dict[int, StreamState] = {}
        self.events: list[Any] = []
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.settings_seen = asyncio.Event()
        self.changed = asyncio.Event()
        self.auto_ack = True
        self.alpn: str | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: bool, alpn: tuple[str, ...] = ("h2", "http/1.1")
    ) -> H2Client:
        self = cls()
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(list(alpn))
        self._reader, self._writer = await asyncio.open_connection(host, port, ssl=ctx)
        if tls:
            obj = self._writer.get_extra_info("ssl_object")
            self.alpn = obj.selected_alpn_protocol()
        self.conn.initiate_connection()
        self.flush()
        self._task = asyncio.ensure_future(self._read_loop())
        return self

    def flush(self) -> None:
        assert self._writer is not None
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    def write_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    self._on_event(ev)
                self.flush()
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.changed.set()
            for st in self.streams.values():
                st.changed.set()

    def _on_event(self, ev: Any) -> None:
        self.events.append(ev)
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid) if sid else None
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_seen.set()
        elif isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = list(ev.headers)
        elif isinstance(ev, h2.events.DataReceived) and st is not None:
            st.data += ev.data
            if st.websocket:
                st.frames.extend(parse_frames(st.data))
            if self.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        if st is not None:
            st.changed.set()

    async def wait(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                if self.closed.is_set() and not predicate():
                    raise AssertionError(f"connection closed while waiting for {what}")
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def remote_setting(self, code: int) -> int:
        return int(self.conn.remote_settings[code])

    # ---------------------------------------------------------------- requests

    def request(
        self,
        method: str,
        path: str,
        *,
        authority: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        scheme: str = "https",
        end: bool | None = None,
        protocol: str | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method)]
        if protocol is not None:
            hdrs.append((":protocol", protocol))
        hdrs += [(":scheme", scheme), (":path", path), (":authority", authority)]
        hdrs += headers or []
        self.streams[sid] = StreamState()
        end_stream = (not body) if end is None else end
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in hdrs], end_stream)
        if body:
            self.send_data(sid, body, end=end is None or end)
        self.flush()
        return sid

    def send_headers(self, headers: list[tuple[str, str]], end: bool) -> int:
        """A new stream with exactly these fields (pseudo-headers included)."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamState()
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in headers], end)
        self.flush()
        return sid

    def send_data(self, sid: int, data: bytes, end: bool = False) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, self.conn.max_outbound_frame_size)
            self.conn.send_data(sid, data[pos : pos + n])
            pos += n
        if end:
            self.conn.end_stream(sid)
        self.flush()

    async def response(self, sid: int, timeout: float = 10.0) -> StreamState:
        st = self.streams[sid]
        await self.wait(lambda: st.headers is not None or st.reset is not None, timeout, "headers")
        return st

    async def body(self, sid: int, timeout: float = 10.0) -> bytes:
        st = self.streams[sid]
        await self.wait(lambda: st.ended or st.reset is not None, timeout, "end of stream")
        return bytes(st.data)

    # -------------------------------------------------------------- WebSockets

    async def open_ws(
        self,
        path: str,
        *,
        authority: str,
        headers: list[tuple[str, str]] | None = None,
        scheme: str = "https",
    ) -> int:
        await self.wait(self.settings_seen.is_set, what="server SETTINGS")
        sid = self.request(
            "CONNECT",
            path,
            authority=authority,
            protocol="websocket",
            scheme=scheme,
            headers=[("sec-websocket-version", "13"), *(headers or [])],
            end=False,
        )
        self.streams[sid].websocket = True
        return sid

    def ws_send(self, sid: int, opcode: int, payload: bytes, **kw: Any) -> None:
        self.send_data(sid, ws_frame(opcode, payload, **kw))

    async def ws_recv(self, sid: int, timeout: float = 10.0) -> WsFrame:
        st = self.streams[sid]
        await self.wait(
            lambda: bool(st.frames) or st.ended or st.reset is not None,
            timeout,
            f"a frame on stream {sid}",
        )
        if not st.frames:
            raise AssertionError(f"stream {sid} ended without a frame (reset={st.reset})")
        return st.frames.pop(0)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


SETTINGS = h2.settings.SettingCodes
