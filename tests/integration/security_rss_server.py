"""A broadcast server in its own process, so that its memory can be measured.

Usage: ``python -m tests.integration.security_rss_server [close_timeout]``.
Prints its port, then serves: every message from a client is broadcast to
all.  ``GET /stats`` answers JSON: VmRSS / VmHWM (kB, from /proc/self/status),
connected clients, per-IP table size, and how many clients were closed for
passing the write-buffer limit.  Every option is wshub's default except the
close timeout (so the test does not wait 10 s for the stalled clients).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from wshub import HttpServer, WebSocket
from wshub.http import Request, Response


def memory() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class CountOverflows(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "write_limit" in record.getMessage():
            self.count += 1


async def main() -> None:
    close_timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    counter = CountOverflows()
    log = logging.getLogger("wshub")
    log.addHandler(counter)
    log.setLevel(logging.WARNING)
    ws: WebSocket

    def stats(request: Request) -> Response:
        body = {
            **memory(),
            "clients": len(ws.clients),
            # Connections counted under limit_by_ip, less the one asking.
            "per_ip": ws._per_ip.count("127.0.0.1") - 1,
            "overflows": counter.count,
            "write_limit": ws._link_config.write_limit,
        }
        return Response(json.dumps(body), content_type="application/json")

    server = HttpServer(stats)
    ws = WebSocket(server, close_timeout=close_timeout, ping_delay=0)
    ws.on("message", lambda cid, data: ws.broadcast(data))
    await server.serve("127.0.0.1", 0)
    print(server.port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
