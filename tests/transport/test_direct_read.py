"""Large binary frames are received straight into the message (HTTP/1.1).

While such a frame is read, ``Http1Protocol`` hands its transport to a
``BufferedProtocol`` (``_DirectReader``) that receives into
``Connection.read_window()``.  Checked on both event loops with the
``websockets`` client: the messages come back intact, the direct path was
really taken, the transport is handed back afterwards, and the byte counters
still count every byte.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from wshub import HttpServer, WebSocket
from wshub.transport import http1


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        pytest.fail("uvloop is not installed: it is part of the dev extras (make venv)")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


SIZES = [65_535, 65_536, 70_000, 1 << 20, 5 << 20]


async def _exchange(direct_reads: list[int]) -> dict[str, Any]:
    server = HttpServer()
    # The client may fall behind reading 6 MiB of echoes: no 1008 for that.
    ws = WebSocket(server, max_payload=8 << 20, write_limit=32 << 20)
    got_sizes: list[int] = []

    @ws.on("message")
    def echo(cid: str, data: str | bytes) -> None:
        got_sizes.append(len(data))
        ws.send(cid, data)

    await server.serve("127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/"
        async with websockets.connect(
            url, compression=None, max_size=None, ping_interval=None
        ) as client:
            sent = [os.urandom(n) for n in SIZES]
            for payload in sent:
                await client.send(payload)
                # A ping and a small text right behind the big frame.
                pong = await client.ping(b"after")
                await client.send("small")
                assert await client.recv() == payload
                assert await client.recv() == "small"
                await asyncio.wait_for(pong, 5)
            # Two large messages in flight at once, like the benchmark's S3.
            await client.send(sent[3])
            await client.send(sent[4])
            assert await client.recv() == sent[3]
            assert await client.recv() == sent[4]
            [cid] = ws.clients
            link = ws._clients[cid].link
            assert isinstance(link, http1.Http1Link)
            protocol = link.transport.get_protocol()
            read = ws.bytes_read(cid)
        return {
            "sizes": got_sizes,
            "protocol": type(protocol).__name__,
            "bytes_read": read,
            "direct_reads": len(direct_reads),
        }
    finally:
        await server.close(timeout=2.0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_large_frames_read_in_place(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    direct_reads: list[int] = []
    original = http1._DirectReader.buffer_updated

    def spy(self: http1._DirectReader, nbytes: int) -> None:
        direct_reads.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(http1._DirectReader, "buffer_updated", spy)
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        result = runner.run(_exchange(direct_reads))
    expected = []
    for n in SIZES:
        expected += [n, len("small")]
    expected += [SIZES[3], SIZES[4]]
    assert result["sizes"] == expected
    # The direct path was taken (at least for the frames that needed more
    # than one read), and the transport went back to the HTTP protocol.
    assert result["direct_reads"] >= 2, result
    assert result["protocol"] == "Http1Protocol"
    # Every byte the client sent is counted: the upgrade request and all
    # frames (masked headers: 2+4 for small, 2+2+4 up to 65535, 2+8+4 above).
    frames = sum(n + (14 if n > 65535 else 8) for n in SIZES) + len(SIZES) * (6 + 5 + 6 + 5)
    frames += SIZES[3] + 14 + SIZES[4] + 14
    assert frames < result["bytes_read"] < frames + 1000, result
