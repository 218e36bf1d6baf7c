"""EXPERIMENT, not part of wshub: its HTTP/1.1 protocol over an I/O layer of
our own (one ``epoll`` object for all connections, no event-loop transport
per connection), to measure what such a layer would give S5, S6 and S7
before building it for real.

    # the benchmark's server contract: --port N --mode echo|broadcast
    PY='env PYTHONPATH=src bench/.venv/bin/python'
    python3 bench/run.py --trials 3 --scenarios S1,S5,S6,S7 \\
        --servers wshub-dev,epoll-prototype \\
        --server "wshub-dev=$PY -m wshub serve" \\
        --server "epoll-prototype=$PY bench/epoll_prototype.py"

What it is: a listening socket and every accepted connection registered
with one ``select.epoll``, whose descriptor is the only thing the asyncio
loop (uvloop by default, ``--loop asyncio``) watches.  Each connection is a
small object with the methods of ``asyncio.Transport`` that wshub's
``Http1Protocol`` calls; reads are ``os.read`` of up to 256 KiB, writes
``os.write``, with what the kernel did not take kept until ``EPOLLOUT``.

What it is not: plain TCP on Linux only (no TLS), no write-buffer limits
(a peer that never reads is not paused or cut: the server's backpressure
tests would fail), no half-close, errors end the connection without a
log line, no graceful shutdown.  Those are what building it for real
takes; see docs/performance.md, "What an idle connection holds".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import sys
from typing import Any

from wshub import HttpServer, WebSocket, allocator
from wshub.transport.http1 import Http1Protocol

READ = select.EPOLLIN | select.EPOLLRDHUP
WRITE = select.EPOLLOUT
READ_SIZE = 262144


class EpollTransport:
    """One accepted connection: what ``Http1Protocol`` needs of a transport."""

    __slots__ = ("buffer", "closing", "fd", "io", "peer", "protocol", "reading")

    def __init__(self, io: EpollIO, fd: int, peer: Any, protocol: Any) -> None:
        self.io = io
        self.fd = fd
        self.peer = peer
        self.protocol = protocol
        self.buffer: bytearray | None = None  # what the kernel did not take yet
        self.closing = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol  # the link, after the 101

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes | memoryview) -> None:
        if self.closing:
            return
        if self.buffer is not None:
            self.buffer += data
            return
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lost(exc)
            return
        if sent < len(data):
            self.buffer = bytearray(memoryview(data)[sent:])
            self.io.watch(self.fd, (READ if self.reading else 0) | WRITE)

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def can_write(self) -> None:
        buffer = self.buffer
        assert buffer is not None
        try:
            sent = os.write(self.fd, buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(exc)
            return
        del buffer[:sent]
        if buffer:
            return
        self.buffer = None
        if self.closing:
            self.lost(None)
        else:
            self.io.watch(self.fd, READ if self.reading else 0)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.buffer is None:
                self.lost(None)

    def abort(self) -> None:
        self.buffer = None
        self.closing = True
        self.lost(None)

    def lost(self, exc: Exception | None) -> None:
        fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        self.closing = True
        self.io.forget(fd)
        self.io.loop.call_soon(self.protocol.connection_lost, exc)  # (the link's, after the 101)

    def is_closing(self) -> bool:
        return self.closing

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        if self.reading and self.fd >= 0:
            self.reading = False
            self.io.watch(self.fd, WRITE if self.buffer else 0)

    def resume_reading(self) -> None:
        if not self.reading and self.fd >= 0:
            self.reading = True
            self.io.watch(self.fd, READ | (WRITE if self.buffer else 0))

    def get_write_buffer_size(self) -> int:
        return len(self.buffer) if self.buffer else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # not in the prototype: see the module docstring

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass


class EpollIO:
    """The listening socket and its connections on one epoll object."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: HttpServer, port: int) -> None:
        self.loop = loop
        self.server = server
        self.epoll = select.epoll()
        self.transports: dict[int, EpollTransport] = {}
        listener = self.listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        listener.setblocking(False)
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        loop.add_reader(self.epoll.fileno(), self.ready)

    def watch(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def forget(self, fd: int) -> None:
        del self.transports[fd]
        os.close(fd)  # (a closed descriptor leaves the epoll set by itself)

    def ready(self) -> None:
        transports = self.transports
        listening = self.listener.fileno()
        for fd, events in self.epoll.poll(0, 256):
            if fd == listening:
                self.accept()
                continue
            transport = transports.get(fd)
            if transport is None:
                continue
            if events & WRITE and transport.buffer is not None:
                transport.can_write()
                if transport.fd < 0:
                    continue
            if not events & ~WRITE:
                continue
            protocol = transport.protocol
            try:
                if isinstance(protocol, asyncio.BufferedProtocol):  # a large frame
                    window = protocol.get_buffer(-1)
                    got = os.readv(fd, [window])
                    if got:
                        protocol.buffer_updated(got)
                    else:
                        transport.lost(None)
                    continue
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                transport.lost(exc)
                continue
            if data:
                protocol.data_received(data)
            else:
                transport.lost(None)

    def accept(self) -> None:
        for _ in range(64):
            try:
                conn, peer = self.listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = conn.detach()
            protocol = Http1Protocol(self.server)
            transport = EpollTransport(self, fd, peer, protocol)
            self.transports[fd] = transport
            self.epoll.register(fd, READ)
            protocol.connection_made(transport)  # type: ignore[arg-type]


def build(mode: str) -> HttpServer:
    """``wshub serve --mode echo|broadcast`` with its defaults."""
    server = HttpServer()
    ws = WebSocket(
        server, allow_origin="*", ping_delay=0, max_payload=64 * 1024 * 1024, limit_by_ip=0
    )
    if mode == "broadcast":
        broadcast = ws.broadcast

        @ws.on("message")
        def fan_out(client_id: str, data: str | bytes) -> None:
            broadcast(data)

    else:
        send = ws.send

        @ws.on("message")
        def echo(client_id: str, data: str | bytes) -> None:
            send(client_id, data)

    return server


async def serve(server: HttpServer, port: int) -> None:
    hub = server.websocket
    if hub is not None:
        await hub.start()
    EpollIO(asyncio.get_running_loop(), server, port)
    if hub is not None:
        hub.server_started()
    print(f"epoll prototype on ws://127.0.0.1:{port}/", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--mode", default="echo", help="echo (also S6's idle) or broadcast")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args, _ = parser.parse_known_args()
    print(f"epoll prototype: {allocator.keep_freed_memory()}", file=sys.stderr)  # as wshub serve
    server = build(args.mode)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(server, args.port))
    else:
        asyncio.run(serve(server, args.port))


if __name__ == "__main__":
    main()
