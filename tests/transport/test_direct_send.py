"""Frames go straight to the socket while the transport has nothing buffered.

``Http1Link._write`` calls the C accelerator's ``send_nowait`` on the
socket of a plain TCP transport (asyncio's or uvloop's) whose write buffer
is empty, and hands the transport only what the kernel did not take.  These
tests check, on both event loops and with the ``websockets`` client, that
the path is really taken, that a reader who falls behind gets every byte in
order (part of a write taken by the kernel, the rest by the transport), that
an error or a closing transport leaves everything to the transport, and that
TLS never takes this path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import Coroutine
from typing import Any

import pytest
import websockets

from tests.event_loops import LOOPS, loop_factory
from tests.rawws import RawClient, client_frame, close_body, upgrade_request
from wshub import HttpServer, WebSocket
from wshub.protocol import frames
from wshub.tls import write_self_signed
from wshub.transport import epoll, http1
from wshub.transport import link as link_module


def _run(loop: str, coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)


class SendSpy:
    """Stands in for ``http1._send_nowait``: records (bytes offered, bytes
    sent) of every call; ``answer`` replaces the real call if set."""

    def __init__(self, answer: int | None = None) -> None:
        if http1._send_nowait is None:
            pytest.fail(
                "wshub._speedups has no send_nowait: build the C extension (make venv)"
                if frames.ACCELERATED
                else "these tests need the C extension (WSHUB_NO_EXTENSIONS is set)"
            )
        self.real = http1._send_nowait
        self.answer = answer
        self.calls: list[tuple[int, int]] = []
        # The lengths of the writes made with MSG_MORE (the last before the end).
        self.last: list[int] = []

    def __call__(self, fd: int, data: bytes, more: bool = False) -> int:
        sent = self.answer if self.answer is not None else int(self.real(fd, data, more))
        self.calls.append((len(data), sent))
        if more:
            self.last.append(len(data))
        return sent


async def _echo_server(
    tls: tuple[str, str] | None = None, **options: Any
) -> tuple[HttpServer, WebSocket]:
    server = HttpServer()
    ws = WebSocket(server, **options)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    ctx = None
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls)
    await server.serve("127.0.0.1", 0, ssl=ctx)
    return server, ws


async def _echoes(
    count: int = 50, word: str = "message", tls: tuple[str, str] | None = None
) -> list[str]:
    """``count`` echoes of "<word> <i>", one at a time; over TLS with the
    certificate and key files ``tls``."""
    server, _ws = await _echo_server(tls)
    client_ctx = None
    if tls is not None:
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    try:
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{server.port}/"
        async with websockets.connect(
            url, ssl=client_ctx, compression=None, ping_interval=None
        ) as client:
            got = []
            for i in range(count):
                await client.send(f"{word} {i}")
                got.append(str(await client.recv()))
            return got
    finally:
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", LOOPS)
def test_small_messages_take_the_direct_path(
    loop: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    own_io = request.config.getoption("--io") != "loop" and epoll.available()
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    assert _run(loop, _echoes()) == [f"message {i}" for i in range(50)]
    # One frame each, sent whole by our own send(): every echo on wshub's
    # own I/O layer (its transport knows its descriptor); on the loop's
    # transports those after the first two writes (the 101 and the first
    # echo go through the transport, see http1._FD_FIRST).
    echoes = [(n, sent) for n, sent in spy.calls if len("message 0") + 2 <= n < 20]
    assert len(echoes) == (50 if own_io else 49), spy.calls
    assert all(sent == n for n, sent in spy.calls), spy.calls


async def _reader_falls_behind() -> tuple[list[bytes], list[bytes]]:
    # 300 echoes of 60,000 bytes (18 MB) to a client that reads slowly while
    # it keeps sending: the kernel's buffers fill, so some writes are taken
    # only in part (or not at all) and the transport keeps the rest, while
    # later echoes come in as the client drains the socket.
    server, _ws = await _echo_server(write_limit=64 << 20, max_payload=1 << 20)
    sent = [os.urandom(60_000) for _ in range(300)]
    got: list[bytes] = []
    try:
        url = f"ws://127.0.0.1:{server.port}/"
        async with websockets.connect(
            url, compression=None, ping_interval=None, max_queue=1, max_size=None
        ) as client:

            async def read_slowly() -> None:
                await asyncio.sleep(0.3)  # the first echoes fill the buffers
                for _ in sent:
                    got.append(bytes(await asyncio.wait_for(client.recv(), 10)))
                    await asyncio.sleep(0.001)

            reader = asyncio.create_task(read_slowly())
            for payload in sent:
                await client.send(payload)
                await asyncio.sleep(0)
            await reader
            # And the connection still works afterwards.
            await client.send("after")
            assert await asyncio.wait_for(client.recv(), 10) == "after"
    finally:
        await server.close(timeout=2.0)
    return got, sent


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reader_that_falls_behind_gets_every_byte_in_order(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    got, sent = _run(loop, _reader_falls_behind())
    assert [len(g) for g in got] == [len(s) for s in sent]
    assert got == sent
    direct = [(n, s) for n, s in spy.calls if n > 60_000]
    assert direct, "no echo took the direct path"
    # Some write was taken only in part or not at all: the transport had
    # to keep the rest, and the messages still came back intact, in order.
    assert any(s < n for n, s in direct), direct


@pytest.mark.parametrize("loop", LOOPS)
def test_an_error_leaves_the_write_to_the_transport(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # send_nowait answering -1 (any error but "would block"), or 0 (would
    # block): the transport gets the whole frame and sends it itself.
    for answer in (-1, 0):
        spy = SendSpy(answer=answer)
        monkeypatch.setattr(http1, "_send_nowait", spy)
        assert _run(loop, _echoes()) == [f"message {i}" for i in range(50)]
        assert len(spy.calls) >= 50


def _frames(stream: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole server frame in ``stream``."""
    out = []
    pos = 0
    while pos + 2 <= len(stream):
        b0, b1 = stream[pos], stream[pos + 1]
        assert not b1 & 0x80, "server frames are not masked"
        n, head = b1 & 0x7F, 2
        if n == 126:
            (n,), head = struct.unpack_from("!H", stream, pos + 2), 4
        elif n == 127:
            (n,), head = struct.unpack_from("!Q", stream, pos + 2), 10
        if pos + head + n > len(stream):
            break
        out.append((b0 & 0x0F, stream[pos + head : pos + head + n]))
        pos += head + n
    return out


async def _room_in_the_kernel_but_not_in_the_transport() -> tuple[list[tuple[int, bytes]], bytes]:
    server, ws = await _echo_server(write_limit=64 << 20)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, upgrade_request(host=f"127.0.0.1:{server.port}"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        stream = head.split(b"\r\n\r\n", 1)[1]
        [cid] = ws.clients
        link = ws._clients[cid].link
        assert isinstance(link, http1.Http1Link)
        # More than the kernel takes while we do not read: the transport
        # keeps the rest.
        big = os.urandom(16 << 20)
        ws.send(cid, big)
        for _ in range(5):
            await asyncio.sleep(0)
        assert link.transport.get_write_buffer_size() > 0
        # Read (without the loop) until the kernel has room again: the
        # transport has not had a chance to write more yet.
        taken = 0
        while taken < 4 << 20:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            stream += chunk
            taken += len(chunk)
        assert taken > 0 and link.transport.get_write_buffer_size() > 0
        # A frame written now must queue behind the transport's bytes, not
        # jump ahead of them straight into the socket.
        link._write(b"\x81\x06marker")
        while not stream.endswith(b"\x81\x06marker"):
            stream += await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        return _frames(stream), big
    finally:
        sock.close()
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_never_jumps_ahead_of_what_the_transport_holds(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    got, big = _run(loop, _room_in_the_kernel_but_not_in_the_transport())
    # The big message whole and intact, then the marker.
    assert [op for op, _ in got] == [0x2, 0x1]
    assert got[0][1] == big and got[1][1] == b"marker"


async def _write_after_close() -> tuple[int, int]:
    server, ws = await _echo_server()
    try:
        url = f"ws://127.0.0.1:{server.port}/"
        async with websockets.connect(url, compression=None, ping_interval=None) as client:
            for word in ("hello", "again"):  # (the first write looks nothing up)
                await client.send(word)
                assert await client.recv() == word
            [cid] = ws.clients
            link = ws._clients[cid].link
            assert isinstance(link, http1.Http1Link)
            spy = http1._send_nowait
            assert isinstance(spy, SendSpy)
            before = len(spy.calls)
            # The transport is closing: its descriptor may be closed and
            # reused by another connection at any time, so it is never used
            # again for a direct send.
            link.transport.close()
            link._write(b"\x81\x05late!")
            return before, len(spy.calls)
    finally:
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", LOOPS)
def test_no_direct_send_once_the_transport_is_closing(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    before, after = _run(loop, _write_after_close())
    assert before >= 1 and after == before


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_never_takes_the_direct_path(
    loop: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    cert_files = write_self_signed(str(tmp_path))
    assert _run(loop, _echoes(20, "secret", cert_files)) == [f"secret {i}" for i in range(20)]
    assert spy.calls == []  # plain bytes on a TLS socket would break the stream


@pytest.mark.parametrize("loop", LOOPS)
def test_without_the_extension_the_transport_writes(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "_send_nowait", None)  # as on the pure-Python path
    assert _run(loop, _echoes()) == [f"message {i}" for i in range(50)]


# ---------------------------------------------------------------- broadcast

RECEIVERS = 40  # enough for a shared batch (link.SHARED_BATCH_FROM)


class SendEachSpy:
    """Stands in for ``link._send_each``: records how many sockets each call
    had and what it answered; ``fail_first`` makes the first socket of each
    call report an error without sending to it."""

    def __init__(self, fail_first: bool = False) -> None:
        if link_module._send_each is None:
            pytest.fail(
                "wshub._speedups has no send_each: build the C extension (make venv)"
                if frames.ACCELERATED
                else "these tests need the C extension (WSHUB_NO_EXTENSIONS is set)"
            )
        self.real = link_module._send_each
        self.fail_first = fail_first
        self.calls: list[tuple[int, list[tuple[int, int]]]] = []

    def __call__(self, fds: list[int], data: bytes) -> list[tuple[int, int]]:
        if self.fail_first:
            rest = self.real(fds[1:], data)
            answer = [(0, -1)] + [(i + 1, sent) for i, sent in rest]
        else:
            answer = self.real(fds, data)
        self.calls.append((len(fds), answer))
        return answer


async def _bursts(
    rounds: int, burst: int, size: int, laggard: bool
) -> tuple[list[list[str]], list[str], list[str]]:
    """Broadcast ``rounds`` bursts of ``burst`` messages (one loop iteration
    each) to RECEIVERS websockets clients and, with ``laggard``, one raw
    client that reads nothing until the end; return what each got, what the
    laggard got, and what was sent."""
    server = HttpServer()
    ws = WebSocket(server, write_limit=64 << 20)
    await server.serve("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/"
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sent: list[str] = []
    try:
        clients = [
            await websockets.connect(url, compression=None, ping_interval=None, max_size=None)
            for _ in range(RECEIVERS)
        ]
        stream = b""
        if laggard:
            # A small receive window: the server's side fills soon.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(sock, upgrade_request(host=f"127.0.0.1:{server.port}"))
            while b"\r\n\r\n" not in stream:
                stream += await loop.sock_recv(sock, 4096)
            assert stream.startswith(b"HTTP/1.1 101"), stream
            stream = stream.split(b"\r\n\r\n", 1)[1]
        await wait_for_clients(ws, RECEIVERS + laggard)
        if laggard:
            # And a small send buffer on the server's side of it.
            port = sock.getsockname()[1]
            [lag_link] = [
                c.link
                for c in ws._clients.values()
                if c.link.transport.get_extra_info("peername")[1] == port
            ]
            lag_link.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
            )

        async def receive(client: Any) -> list[str]:
            return [str(await asyncio.wait_for(client.recv(), 20)) for _ in range(rounds * burst)]

        readers = [asyncio.create_task(receive(c)) for c in clients]
        filler = "x" * size
        for r in range(rounds):
            for b in range(burst):
                message = f"{r}.{b} {filler}"
                sent.append(message)
                assert ws.broadcast(message) == RECEIVERS + laggard
            await asyncio.sleep(0.01)
        got = await asyncio.gather(*readers)
        lagged: list[str] = []
        if laggard:
            while len(lagged) < len(sent):
                stream += await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
                frames_in = _frames(stream)
                lagged = [p.decode() for op, p in frames_in if op == 0x1]
        for c in clients:
            await c.close()
        return got, lagged, sent
    finally:
        sock.close()
        await server.close(timeout=2.0)


async def wait_for_clients(ws: WebSocket, n: int) -> None:
    for _ in range(200):
        if len(ws.clients) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(ws.clients)} clients connected, expected {n}")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_broadcast_goes_to_every_socket_in_one_call(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendEachSpy()
    monkeypatch.setattr(link_module, "_send_each", spy)
    got, _lagged, sent = _run(loop, _bursts(rounds=20, burst=8, size=50, laggard=False))
    assert all(g == sent for g in got)
    # The bursts went out through send_each, to every receiver at once,
    # each taking the whole burst.
    assert spy.calls and all(n == RECEIVERS for n, _ in spy.calls), spy.calls[:3]
    assert all(answer == [] for _, answer in spy.calls), spy.calls[:3]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_receiver_that_does_not_read_gets_the_rest_through_its_transport(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendEachSpy()
    monkeypatch.setattr(link_module, "_send_each", spy)
    # 100 bursts of 8 x 2 KB (under write_high: they stay shared) = 1.6 MB
    # for a laggard with a 4 KiB receive buffer: more than the kernel holds.
    got, lagged, sent = _run(loop, _bursts(rounds=100, burst=8, size=2_000, laggard=True))
    assert all(g == sent for g in got)
    assert lagged == sent  # every message, in order, once it reads
    # Its socket took a burst in part or not at all: the rest went to its
    # transport, and later bursts waited behind that (not in send_each).
    assert any(answer for _, answer in spy.calls), "the laggard's socket never filled"
    assert any(n == RECEIVERS for n, _ in spy.calls)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_error_on_one_socket_leaves_its_burst_to_the_transport(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SendEachSpy(fail_first=True)
    monkeypatch.setattr(link_module, "_send_each", spy)
    got, _lagged, sent = _run(loop, _bursts(rounds=10, burst=8, size=50, laggard=False))
    assert all(g == sent for g in got)
    assert spy.calls and all(answer[0] == (0, -1) for _, answer in spy.calls)


async def _never_reader_among_broadcast_receivers() -> tuple[list[tuple[int, bool]], list[int]]:
    """RECEIVERS websockets clients and one raw client that never reads;
    bursts of broadcasts (shared batches, the direct path) until the
    stalled one is closed; return its close (code, clean) and how many
    messages each reader got of how many were sent."""
    server = HttpServer()
    ws = WebSocket(server, write_limit=256 * 1024)
    await server.serve("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/"
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    closed: list[tuple[int, bool]] = []
    try:
        clients = [
            await websockets.connect(url, compression=None, ping_interval=None, max_size=None)
            for _ in range(RECEIVERS)
        ]
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, upgrade_request(host=f"127.0.0.1:{server.port}"))
        await wait_for_clients(ws, RECEIVERS + 1)
        port = sock.getsockname()[1]
        [stalled] = [
            cid
            for cid, c in ws._clients.items()
            if c.link.transport.get_extra_info("peername")[1] == port
        ]
        ws.on(
            "close",
            lambda cid, event: cid == stalled and closed.append((event.code, event.was_clean)),
        )
        counts = [0] * RECEIVERS

        async def receive(i: int, client: Any) -> None:
            async for _ in client:
                counts[i] += 1

        readers = [asyncio.create_task(receive(i, c)) for i, c in enumerate(clients)]
        sent = 0
        for _ in range(2_000):
            if stalled not in ws.clients:
                break
            for _ in range(8):
                ws.broadcast("y" * 2_000)
                sent += 1
            await asyncio.sleep(0.001)
        else:
            pytest.fail("the stalled receiver's write buffer was never capped")
        for _ in range(8):  # and the others still get what follows
            ws.broadcast("after")
            sent += 1
        for c in clients:
            await c.close()
        await asyncio.gather(*readers)
        return closed, [n - sent for n in counts]
    finally:
        sock.close()
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_broadcast_receiver_that_never_reads_is_closed_with_1008(loop: str) -> None:
    closed, missing = _run(loop, _never_reader_among_broadcast_receivers())
    assert closed == [(1008, False)]  # write_limit reached: the server's close
    assert missing == [0] * RECEIVERS  # every reader got every message


# struct tcp_info (linux/tcp.h): tcpi_segs_in (Linux 4.2), tcpi_data_segs_in (4.6).
_SEGS_IN = 140
_DATA_SEGS_IN = 152


def _segments_in(sock: Any) -> tuple[int, int]:
    """(segments, segments with data) that ``sock`` has received so far."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _DATA_SEGS_IN + 4:
        pytest.fail("this kernel's TCP_INFO has no tcpi_data_segs_in (Linux 4.6+)")
    (segments,) = struct.unpack_from("I", info, _SEGS_IN)
    (with_data,) = struct.unpack_from("I", info, _DATA_SEGS_IN)
    return segments, with_data


async def _bare_segments_at_the_close() -> list[int]:
    # Five clients, one after the other: three echoes each (so that on the
    # loop's transports the descriptor has been looked up), then the
    # client's Close; it reads our Close and the end of the connection.
    # For each: how many segments without data came meanwhile (a FIN apart
    # from our Close frame, or a bare ACK).
    server, _ws = await _echo_server()
    counts = []
    try:
        for _ in range(5):
            client = await RawClient.connect("127.0.0.1", server.port)
            try:
                for i in range(3):
                    await client.send(client_frame(0x1, b"echo %d" % i))
                    assert await client.recv() == (True, 0x1, b"echo %d" % i)
                sock = client.writer.get_extra_info("socket")
                before = _segments_in(sock)
                await client.send(client_frame(0x8, close_body(1000)))
                assert await client.recv_close() == (1000, "")
                assert await client.at_eof()
                after = _segments_in(sock)
                counts.append((after[0] - before[0]) - (after[1] - before[1]))
            finally:
                client.close()
    finally:
        await server.close(timeout=2.0)
    return counts


@pytest.mark.parametrize("loop", LOOPS)
def test_our_close_reply_and_the_fin_share_one_segment(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Close reply is the last write before the server closes the TCP
    # connection: it goes with MSG_MORE, so the kernel holds it for the FIN
    # and both travel in one segment.  Sent apart (as before), every close
    # brings one segment without data (the FIN); a bare ACK may come now
    # and then either way, so one close of five without any is the proof.
    spy = SendSpy()
    monkeypatch.setattr(http1, "_send_nowait", spy)
    counts = _run(loop, _bare_segments_at_the_close())
    assert spy.last == [4] * 5  # the Close reply (code 1000), each time
    assert 0 in counts, counts
    assert max(counts) <= 2, counts
