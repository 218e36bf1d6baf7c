"""Per-delivery cost of WebSocket.broadcast(), in-process (no sockets).

500 open links over a transport that only counts bytes; each round
broadcasts 8 messages and then flushes (one write per link, as the event
loop would at the end of the iteration). Prints the best of several runs
in microseconds per delivery.  A CPU-time yardstick for the hub's fan-out
path, independent of the kernel; the real figure is S7 of ``make bench``.
"""

from __future__ import annotations

import asyncio
import time

from wshub import WebSocket
from wshub.protocol.connection import Connection
from wshub.protocol.handshake import UpgradeInfo
from wshub.transport.link import FramedLink, LinkConfig, UpgradeRequest


class CountingTransport:
    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0


class MemoryLink(FramedLink):
    def __init__(self, conn: Connection, config: LinkConfig, transport: CountingTransport) -> None:
        super().__init__(conn, config)
        self.transport = transport

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _write_many(self, chunks: list[bytes]) -> None:
        self.transport.write(b"".join(chunks))

    def _buffered(self) -> int:
        return 0


def open_links(ws: WebSocket, count: int) -> list[MemoryLink]:
    """``count`` clients of ``ws``, each admitted and opened the way a transport does it."""
    links = []
    for i in range(count):
        admission = ws.admit(
            UpgradeRequest(
                target="/",
                headers={"host": "127.0.0.1"},
                info=UpgradeInfo(13, None, None, ""),
                peer=("127.0.0.1", 40000 + i),
                scheme="ws",
            )
        )
        link = MemoryLink(Connection(), admission.config, CountingTransport())
        admission.open(link)
        links.append(link)
    return links


async def main(receivers: int = 500, rounds: int = 200, window: int = 8) -> None:
    ws = WebSocket(ping_delay=0, limit_by_ip=0)
    links = open_links(ws, receivers)
    assert len(ws.clients) == receivers
    message = "x" * 64
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            for _ in range(window):
                ws.broadcast(message)
            for link in links:
                link.flush_batch()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
    deliveries = receivers * rounds * window
    print(f"{best / deliveries * 1e6:.3f} us per delivery ({receivers} receivers, window {window})")


if __name__ == "__main__":
    asyncio.run(main())
