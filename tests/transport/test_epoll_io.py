"""wshub's own I/O layer (``transport/epoll.py``): the ``asyncio.Transport``
contract it promises the protocols above it, checked with plain protocols
over real loopback sockets, and that a server runs on it by default.

Each test speaks to the layer through the kernel: a client socket (the
standard library's, in a thread, or asyncio's streams) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT, StartServer, wait_for
from wshub.transport import epoll

if not epoll.available():
    pytest.fail("the epoll I/O layer needs Linux: these tests cannot run here", pytrace=False)


class Recorder(asyncio.Protocol):
    """A protocol that records what the transport tells it."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.calls: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.keep_open_on_eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Layer:
    """An EpollIO with one listening socket whose protocols are ``make()``."""

    def __init__(self, io: epoll.EpollIO, server: epoll.EpollServer) -> None:
        self.io = io
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        self.protocols: list[Any] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
        count = len(self.protocols)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        await wait_for(lambda: len(self.protocols) > count, what="the connection accepted")
        return reader, writer, self.protocols[count]


@pytest.fixture
async def layer() -> AsyncIterator[Callable[..., Any]]:
    made: list[Layer] = []

    async def start(make: Callable[[], Any] = Recorder) -> Layer:
        io = epoll.EpollIO(asyncio.get_running_loop())
        holder: list[Layer] = []

        def factory() -> Any:
            protocol = make()
            holder[0].protocols.append(protocol)
            return protocol

        server = await epoll.listen(io, factory, "127.0.0.1", 0)
        holder.append(Layer(io, server))
        made.append(holder[0])
        return holder[0]

    yield start
    for one in made:
        one.server.close()
        for protocol in one.protocols:
            if protocol.transport is not None:
                protocol.transport.abort()
        one.io.close()


async def test_reads_writes_and_a_half_close_in_order(layer: Callable[..., Any]) -> None:
    lay = await layer()
    reader, writer, proto = await lay.connect()
    assert proto.calls == ["made"]
    assert isinstance(proto.transport, epoll.EpollTransport)
    assert proto.transport.get_extra_info("peername") == writer.get_extra_info("sockname")
    assert proto.transport.get_extra_info("sockname") == writer.get_extra_info("peername")
    assert proto.transport.get_extra_info("socket").family == socket.AF_INET
    # After a hand-over the address is not kept but asked of the kernel.
    proto.transport.set_protocol(proto)
    assert proto.transport.get_extra_info("peername") == writer.get_extra_info("sockname")

    writer.write(b"hello ")
    writer.write(b"world")
    await writer.drain()
    await wait_for(lambda: bytes(proto.data) == b"hello world", what="the bytes read")

    # The peer half-closes; the protocol keeps the transport open to answer.
    proto.keep_open_on_eof = True
    writer.write_eof()
    await wait_for(lambda: "eof" in proto.calls, what="eof_received")
    assert not proto.transport.is_closing()
    proto.transport.write(b"late answer")
    proto.transport.write_eof()
    with pytest.raises(RuntimeError):
        proto.transport.write(b"after write_eof")
    assert await reader.read() == b"late answer"  # then our FIN
    proto.transport.close()
    assert await proto.lost is None
    assert proto.calls == ["made", "eof", "lost"]
    writer.close()


async def test_a_falsy_eof_received_closes_the_transport(layer: Callable[..., Any]) -> None:
    lay = await layer()
    reader, writer, proto = await lay.connect()
    writer.write_eof()
    assert await proto.lost is None
    assert proto.calls == ["made", "eof", "lost"]
    assert await reader.read() == b""
    writer.close()


async def test_a_peer_that_does_not_read_pauses_the_writer_and_loses_nothing(
    layer: Callable[..., Any],
) -> None:
    lay = await layer()
    reader, writer, proto = await lay.connect()
    transport = proto.transport
    transport.set_write_buffer_limits(high=256 * 1024)
    assert transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
    sent = hashlib.sha256()
    total = 0
    chunk = os.urandom(64 * 1024)
    # Write until the transport says stop (the client reads nothing yet).
    while "pause" not in proto.calls:
        piece = bytes(chunk[:-1]) + bytes([total % 251])  # each piece differs
        transport.write(piece)
        sent.update(piece)
        total += len(piece)
        assert total < 64 * 1024 * 1024, "never paused"
    assert transport.get_write_buffer_size() > 256 * 1024
    # writelines() while buffered keeps the order too.
    tail = [b"x" * 1000, memoryview(b"y" * 3000), bytearray(b"z" * 50)]
    transport.writelines(tail)
    for piece in tail:
        sent.update(piece)
        total += len(piece)
    transport.close()  # after what is buffered
    got = hashlib.sha256()
    received = 0
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        got.update(data)
        received += len(data)
    assert received == total
    assert got.hexdigest() == sent.hexdigest()
    assert await proto.lost is None
    assert proto.calls == ["made", "pause", "resume", "lost"]
    writer.close()


async def test_pause_reading_holds_the_data_until_resumed(layer: Callable[..., Any]) -> None:
    lay = await layer()
    _reader, writer, proto = await lay.connect()
    proto.transport.pause_reading()
    assert not proto.transport.is_reading()
    writer.write(b"held")
    await writer.drain()
    await asyncio.sleep(0.1)
    assert proto.data == b""
    proto.transport.resume_reading()
    assert proto.transport.is_reading()
    await wait_for(lambda: proto.data == b"held", what="the held bytes read")
    writer.close()


async def test_a_reset_peer_of_a_paused_connection_does_not_spin_the_loop(
    layer: Callable[..., Any],
) -> None:
    lay = await layer()
    _reader, writer, proto = await lay.connect()
    proto.transport.pause_reading()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # RST
    passes = 0
    ready = lay.io.ready

    def counting() -> None:
        nonlocal passes
        passes += 1
        ready()

    loop = asyncio.get_running_loop()
    fd = lay.io.fileno()
    loop.remove_reader(fd)
    loop.add_reader(fd, counting)
    await asyncio.sleep(0.2)
    # A hang-up reported to a paused connection would wake the loop on
    # every iteration (thousands in 0.2 s).
    assert passes <= 2, f"the epoll set woke the loop {passes} times"
    proto.transport.resume_reading()
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, ConnectionResetError) or exc is None
    loop.remove_reader(fd)
    loop.add_reader(fd, ready)


class Failing(Recorder):
    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise ValueError("a bug in the protocol")
        self.transport.write(data)


async def test_a_failing_protocol_is_logged_and_cut_alone(
    layer: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    lay = await layer(Failing)
    bad_reader, bad_writer, bad = await lay.connect()
    good_reader, good_writer, _good = await lay.connect()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        bad_writer.write(b"boom")
        await asyncio.wait_for(bad.lost, 5)
    assert "Fatal error: protocol.data_received() call failed." in caplog.text
    assert "a bug in the protocol" in caplog.text
    assert await bad_reader.read() == b""
    good_writer.write(b"still here")
    assert await good_reader.readexactly(10) == b"still here"
    good_writer.close()
    bad_writer.close()


async def test_abort_drops_what_is_buffered_and_reports_once(layer: Callable[..., Any]) -> None:
    lay = await layer()
    _reader, writer, proto = await lay.connect()
    transport = proto.transport
    transport.write(b"a" * (8 << 20))  # more than the socket takes
    assert transport.get_write_buffer_size() > 0
    transport.abort()
    transport.abort()
    transport.close()
    assert transport.get_write_buffer_size() == 0
    assert transport.is_closing()
    assert await proto.lost is None
    await asyncio.sleep(0.05)
    assert proto.calls.count("lost") == 1
    assert transport.get_protocol() is not proto  # no cycle kept after the end
    # Still known, as with asyncio's transports (not after a hand-over:
    # then it is asked of the kernel, and the socket is gone).
    assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
    transport.set_protocol(proto)
    assert transport.get_extra_info("peername", "gone") == "gone"
    writer.close()


async def test_the_epoll_set_goes_with_the_last_connection(layer: Callable[..., Any]) -> None:
    lay = await layer()
    _reader, writer, proto = await lay.connect()
    lay.server.close()
    lay.io.close()
    assert not lay.io.closed  # one connection still open
    writer.write(b"after close")
    await wait_for(lambda: proto.data == b"after close", what="the bytes read")
    writer.close()
    await asyncio.wait_for(proto.lost, 5)
    assert lay.io.closed
    assert lay.io.live == 0


async def test_a_server_runs_on_it_by_default_and_on_the_loop_when_asked(
    start_server: StartServer,
) -> None:
    for io, own in (("auto", True), ("loop", False)):
        srv = await start_server(server_options={"io": io}, allow_origin="*")
        srv.ws.on("message", srv.ws.send)
        async with websockets.connect(srv.url) as client:
            await client.send("ping me back")
            assert await client.recv() == "ping me back"
            (link,) = srv.server.connections.links
            assert isinstance(link.transport, epoll.EpollTransport) is own


def test_io_option_is_checked() -> None:
    from wshub import HttpServer

    with pytest.raises(ValueError, match="io must be"):
        HttpServer(io="kqueue")


def test_out_of_descriptors_pauses_accepting_with_a_log_line() -> None:
    # A server with a low descriptor limit is flooded with connections: it
    # logs EMFILE, pauses accepting for a second instead of spinning, serves
    # the connections it has, and accepts again once some are gone.
    script = textwrap.dedent(
        """
        import asyncio, logging, resource, socket, sys
        from wshub.transport import epoll

        logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="LOG %(message)s")

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
            def data_received(self, data):
                self.transport.write(data)

        async def main():
            io = epoll.EpollIO(asyncio.get_running_loop())
            server = await epoll.listen(io, Echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            # The clients, in a child process (their sockets would count
            # against this one's limit), connect once the limit is low.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import socket, sys, time\\n"
                "time.sleep(0.3)\\n"
                "cs = [socket.create_connection(('127.0.0.1', %d)) for _ in range(80)]\\n"
                "time.sleep(0.5)\\n"
                "last = cs[-1]; last.sendall(b'hi'); last.settimeout(5)\\n"
                "cs[0].close(); [c.close() for c in cs[:40]]\\n"
                "print('echo', last.recv(2).decode(), flush=True)\\n" % port,
                stdout=asyncio.subprocess.PIPE,
            )
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            print(out.decode().strip(), "live", io.live, flush=True)

        asyncio.run(main())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Too many open files; not accepting for 1 s" in done.stdout, done.stdout
    # The 80th connection waited in the backlog and was served after the pause.
    assert "echo hi" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


async def test_the_runs_io_option_reaches_the_servers(
    start_server: StartServer, request: pytest.FixtureRequest
) -> None:
    # make test runs tests/transport twice: on the default (the own layer)
    # and with --io loop (the event loop's transports, as io="loop" gives).
    srv = await start_server(allow_origin="*")
    async with websockets.connect(srv.url):
        (link,) = srv.server.connections.links
        on_own_layer = isinstance(link.transport, epoll.EpollTransport)
        assert on_own_layer is (request.config.getoption("--io") == "auto")


async def test_writelines_keeps_what_the_kernel_did_not_take_as_it_was_given(
    layer: Callable[..., Any],
) -> None:
    # One writev() takes only part of 8 MiB: the rest is kept, and a mutable
    # piece is copied, so changing it after the call changes nothing sent.
    lay = await layer()
    reader, writer, proto = await lay.connect()
    transport = proto.transport
    first = os.urandom(4 << 20)
    second = bytearray(os.urandom(4 << 20))
    expected = first + bytes(second)
    transport.writelines([first, b"", second, memoryview(b"tail")])
    assert transport.get_write_buffer_size() > 0
    second[:] = bytes(len(second))  # the caller reuses its buffer
    transport.close()
    assert await reader.readexactly(len(expected) + 4) == expected + b"tail"
    assert await reader.read() == b""
    assert await proto.lost is None
    writer.close()
