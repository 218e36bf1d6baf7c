"""What the event loop alone holds per idle TCP connection (no WebSocket).

A server that accepts 5,000 connections from a child process and only
keeps them, measured as S6 does (the server's RSS before and after, per
connection), in three designs:

    python3 bench/idle_floor.py uvloop    # loop.create_server, an empty Protocol
    python3 bench/idle_floor.py asyncio   # the same on asyncio's own loop
    python3 bench/idle_floor.py epoll     # one select.epoll, a dict entry per connection

It is the floor under S6 for a server built on each: see
docs/performance.md, "What an idle connection holds".
"""

from __future__ import annotations

import asyncio
import os
import resource
import select
import socket
import sys
import time

CONNECTIONS = 5000
SETTLE = 8.0  # seconds for the child to open them all


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_clients(port: int) -> int:
    """A child process that opens the connections and holds them."""
    pid = os.fork()
    if pid:
        return pid
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    time.sleep(SETTLE * 4)
    del held
    os._exit(0)


class Idle(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def on_loop() -> tuple[int, int]:
    server = await asyncio.get_running_loop().create_server(Idle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(0.5)
    before = rss_kib()
    child = open_clients(port)
    await asyncio.sleep(SETTLE)
    after = rss_kib()
    os.kill(child, 9)
    return before, after


def on_epoll() -> tuple[int, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    held: dict[int, None] = {}
    time.sleep(0.5)
    before = rss_kib()
    child = open_clients(listener.getsockname()[1])
    end = time.monotonic() + SETTLE
    while time.monotonic() < end:
        for _fd, _events in epoll.poll(0.1):
            while True:
                try:
                    conn, _peer = listener.accept()
                except BlockingIOError:
                    break
                fd = conn.detach()
                epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
                held[fd] = None
    after = rss_kib()
    os.kill(child, 9)
    if len(held) != CONNECTIONS:
        raise SystemExit(f"only {len(held)} of {CONNECTIONS} connections were accepted")
    return before, after


def main() -> None:
    design = sys.argv[1] if len(sys.argv) > 1 else "uvloop"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CONNECTIONS * 2 + 100:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below {CONNECTIONS * 2 + 100}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (CONNECTIONS * 2 + 100, hard))
    if design == "epoll":
        before, after = on_epoll()
    elif design in ("uvloop", "asyncio"):
        if design == "uvloop":
            import uvloop

            before, after = uvloop.run(on_loop())
        else:
            before, after = asyncio.run(on_loop())
    else:
        raise SystemExit("usage: idle_floor.py uvloop|asyncio|epoll")
    print(f"{design}: {(after - before) * 1024 / CONNECTIONS:,.0f} bytes per idle connection")


if __name__ == "__main__":
    main()
