"""How wshub's own I/O layer accepts connections.

With the C accelerator, ``EpollServer`` accepts a burst of connections in
one call (``wshub._speedups.accept_burst``: accept4 non-blocking and
close-on-exec, no Python socket object per connection); without it,
``socket.accept()`` as before.  TCP_NODELAY is set on the listening
socket only, and Linux gives it to each accepted connection.  Both paths
must hand the protocol the same thing: a non-blocking TCP_NODELAY socket whose
``peername`` is what ``socket.accept()`` answers, IPv4 and IPv6 alike.
The clients here are plain sockets; the peer's own ``getsockname()`` is
the reference.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from typing import Any

import pytest

from tests.conftest import wait_for
from wshub.protocol import frames
from wshub.transport import epoll

if not epoll.available():
    pytest.fail("the epoll I/O layer needs Linux: these tests cannot run here", pytrace=False)

PATHS = ["c", "python"]


class Holder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(params=PATHS)
def accept_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        if not frames.ACCELERATED:
            pytest.fail("the C accelerator is not built: `make venv` builds it", pytrace=False)
        assert epoll._accept_burst is not None
    else:
        monkeypatch.setattr(epoll, "_accept_burst", None)
    return str(request.param)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_accepted_connection_is_nonblocking_nodelay_with_its_peer(
    accept_path: str, host: str
) -> None:
    if host == "::1" and not _has_ipv6_loopback():
        pytest.fail("this machine has no IPv6 loopback (::1) to test on", pytrace=False)
    io = epoll.EpollIO(asyncio.get_running_loop())
    held: list[Holder] = []

    def factory() -> Holder:
        held.append(Holder())
        return held[-1]

    server = await epoll.listen(io, factory, host, 0)
    port = server.sockets[0].getsockname()[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    clients = [socket.socket(family, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for client in clients:
            client.setblocking(False)
            assert client.connect_ex((host, port)) in (0, errno.EINPROGRESS)
        await wait_for(lambda: len(held) == 3, what="three connections accepted")
        peers = sorted(h.transport.get_extra_info("peername") for h in held)
        assert peers == sorted(c.getsockname() for c in clients)
        assert all(len(p) == (4 if family == socket.AF_INET6 else 2) for p in peers)
        for h in held:
            fd = h.transport.fileno()
            assert os.get_blocking(fd) is False
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            sock = socket.socket(fileno=os.dup(fd))
            try:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            finally:
                sock.close()
    finally:
        for client in clients:
            client.close()
        server.close()
        for h in held:
            h.transport.abort()
        io.close()


def test_accept_burst_reports_what_stopped_it() -> None:
    if not frames.ACCELERATED:
        pytest.fail("the C accelerator is not built: `make venv` builds it", pytrace=False)
    burst = epoll._accept_burst
    assert burst is not None
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        # The limit is kept: two now, the third next time, then nothing waiting.
        first, err = burst(listener.fileno(), 2)
        assert (len(first), err) == (2, 0)
        second, err = burst(listener.fileno(), 10)
        assert (len(second), err) == (1, 0)
        assert burst(listener.fileno(), 10) == ([], 0)
        for fd, _peer in first + second:
            os.close(fd)
        # A socket that does not listen: its errno, nothing accepted.
        with socket.socket() as idle:
            assert burst(idle.fileno(), 10) == ([], errno.EINVAL)
    finally:
        for client in clients:
            client.close()
        listener.close()
