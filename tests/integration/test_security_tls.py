"""The TLS handshake is under ``handshake_timeout`` (issue #15).

A client that opens a TCP connection to a TLS server and sends nothing (or
stops halfway through the handshake) held a connection for asyncio's
default of 60 s, whatever ``handshake_timeout`` said.  Both event loops are
checked: the option is passed to ``create_server`` and each loop honours it
on its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from wshub import HttpServer, WebSocket
from wshub.tls import write_self_signed

HANDSHAKE_TIMEOUT = 0.3
# Far below asyncio's 60 s default, far above HANDSHAKE_TIMEOUT: a bound
# that tells "dropped by our deadline" from "not dropped", not a speed.
DROPPED_WITHIN = 10.0


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            pytest.fail("uvloop is not installed: it is part of the dev extras (make venv)")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def _context(tmp: str) -> ssl.SSLContext:
    cert, key = write_self_signed(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _silent_client_is_dropped(ctx: ssl.SSLContext, partial: bool) -> None:
    server = HttpServer(handshake_timeout=HANDSHAKE_TIMEOUT)
    WebSocket(server)
    await server.serve("127.0.0.1", 0, ssl=ctx)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if partial:
            # The first bytes of a TLS record (a ClientHello's header), then silence.
            writer.write(b"\x16\x03\x01\x02\x00")
            await writer.drain()

        async def until_closed() -> None:
            try:
                while await reader.read(65536):
                    pass
            except ConnectionError:
                pass

        try:
            await asyncio.wait_for(until_closed(), DROPPED_WITHIN)
        except asyncio.TimeoutError:
            pytest.fail(
                f"a client that never finished the TLS handshake was not dropped "
                f"(handshake_timeout={HANDSHAKE_TIMEOUT})"
            )
        writer.close()
        assert not server.connections.protocols, "the dropped connection is still counted"
    finally:
        await server.close(timeout=2.0)


@pytest.mark.parametrize("partial", [False, True], ids=["silent", "partial-hello"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_handshake_is_under_the_handshake_timeout(
    loop: str, partial: bool, tmp_path: Path
) -> None:
    ctx = _context(str(tmp_path))
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(_silent_client_is_dropped(ctx, partial))


async def _tls_still_works(ctx: ssl.SSLContext) -> None:
    # The deadline does not cut off a client that completes the handshake.
    server = HttpServer(lambda request: "ok", handshake_timeout=HANDSHAKE_TIMEOUT * 10)
    await server.serve("127.0.0.1", 0, ssl=ctx)
    try:
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), DROPPED_WITHIN)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok")
        writer.close()
    finally:
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_clients_are_served(loop: str, tmp_path: Path) -> None:
    ctx = _context(str(tmp_path))
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(_tls_still_works(ctx))


def test_no_deadline_when_the_timeout_is_off() -> None:
    # handshake_timeout=0 means "no deadline": asyncio refuses 0 for
    # ssl_handshake_timeout, so it must not be passed on.
    async def go() -> None:
        server = HttpServer(handshake_timeout=0)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        await server.serve("127.0.0.1", 0, ssl=ctx)
        await server.close(timeout=2.0)

    asyncio.run(go())
