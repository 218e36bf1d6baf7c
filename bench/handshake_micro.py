"""Our own CPU cost per WebSocket handshake, in-process (no sockets, no kernel).

Drives Http1Protocol with a fake transport through what S5 of
``make bench`` does per cycle: upgrade request -> 101, a masked Close ->
our Close, connection lost.  Prints microseconds per cycle (best of 5) and,
with --profile, the functions that take the time.  The real figure is S5.
"""

from __future__ import annotations

import asyncio
import base64
import cProfile
import os
import pstats
import sys
import time
from typing import Any

from wshub import HttpServer, WebSocket
from wshub.transport.http1 import Http1Protocol


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False
        self._extra = {"peername": ("127.0.0.1", 40000), "socket": None}
        self.protocol: Any = None  # who gets the reads: the link after the 101

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.out.extend(chunks)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Origin: http://127.0.0.1:{port}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


CLOSE = bytes([0x88, 0x82]) + b"\x01\x02\x03\x04" + bytes([0x03 ^ 0x01, 0xE8 ^ 0x02])


async def cycles(server: HttpServer, n: int) -> float:
    """Seconds per cycle; 16 connections at a time, like S5's 16 loops, each
    step followed by a loop iteration (where the queued writes are flushed)."""
    reqs = [request(8080) for _ in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 16):
        transports = []
        for req in reqs[i : i + 16]:
            t = FakeTransport()
            t.protocol = Http1Protocol(server)
            t.protocol.connection_made(t)
            t.protocol.data_received(req)
            transports.append(t)
        await asyncio.sleep(0)
        for t in transports:
            t.protocol.data_received(CLOSE)
        await asyncio.sleep(0)
        for t in transports:
            t.protocol.connection_lost(None)
    return (time.perf_counter() - start) / n


async def main() -> None:
    server = HttpServer()
    ws = WebSocket(server, ping_delay=0, allow_origin="*")
    ws.on("message", lambda cid, data: None)
    await cycles(server, 200)  # warm up
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        await cycles(server, 5000)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("N", "18")))
        return
    best = min([await cycles(server, 3000) for _ in range(5)])
    print(f"{best * 1e6:.1f} us per handshake cycle (our code only)")


if __name__ == "__main__":
    asyncio.run(main())
