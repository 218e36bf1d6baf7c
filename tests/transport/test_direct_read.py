"""Large binary frames are received straight into the message (HTTP/1.1).

While such a frame is read, ``Http1Link`` hands its transport to a
``BufferedProtocol`` (``_DirectReader``) that receives into
``Connection.read_window()``.  Checked on both event loops with the
``websockets`` client: the messages come back intact, the direct path was
really taken, the transport is handed back afterwards, and the byte counters
still count every byte.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from typing import Any

import pytest
import websockets

from tests.event_loops import loop_factory
from tests.rawws import RawClient, client_frame
from wshub import HttpServer, WebSocket
from wshub.transport import http1

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
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        result = runner.run(_exchange(direct_reads))
    expected = []
    for n in SIZES:
        expected += [n, len("small")]
    expected += [SIZES[3], SIZES[4]]
    assert result["sizes"] == expected
    # The direct path was taken (at least for the frames that needed more
    # than one read), and the transport went back to the link.
    assert result["direct_reads"] >= 2, result
    assert result["protocol"] == "Http1Link"
    # Every byte the client sent is counted: the upgrade request and all
    # frames (masked headers: 2+4 for small, 2+2+4 up to 65535, 2+8+4 above).
    frames = sum(n + (14 if n > 65535 else 8) for n in SIZES) + len(SIZES) * (6 + 5 + 6 + 5)
    frames += SIZES[3] + 14 + SIZES[4] + 14
    assert frames < result["bytes_read"] < frames + 1000, result


async def _lowat_exchange() -> list[tuple[str, int, int]]:
    """A 1 MiB frame sent in three parts with pauses, then a small one; the
    server socket's SO_RCVLOWAT is read at each pause, with how much of the
    frame the server still lacks then (0: no frame being read)."""
    server = HttpServer()
    ws = WebSocket(server, max_payload=8 << 20)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    await server.serve("127.0.0.1", 0)
    seen: list[tuple[str, int, int]] = []
    try:
        client = await RawClient.connect("127.0.0.1", server.port)
        [cid] = ws.clients
        link = ws._clients[cid].link
        assert isinstance(link, http1.Http1Link)
        sock = link.transport.get_extra_info("socket")

        def mark(when: str) -> None:
            buf = link.conn.direct_payload
            missing = 0 if buf is None else buf.total - buf.filled
            seen.append((when, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT), missing))

        payload = os.urandom(1 << 20)
        frame = client_frame(0x2, payload)
        cuts = [0, 300_000, len(frame) - 10_000, len(frame)]
        mark("before")
        for i, (start, end) in enumerate(itertools.pairwise(cuts)):
            await client.send(frame[start:end])
            await asyncio.sleep(0.2)  # let the server read what it can
            if i < len(cuts) - 2:
                mark(f"after part {i + 1}")
        # Only the last 10,000 bytes were missing: if the mark had stayed
        # above that, this would never arrive.
        assert await asyncio.wait_for(client.recv(), 10) == (True, 0x2, payload)
        mark("after the frame")
        await client.send(client_frame(0x1, b"small"))
        assert await asyncio.wait_for(client.recv(), 10) == (True, 0x1, b"small")
        client.close()
    finally:
        await server.close(timeout=2.0)
    return seen


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_low_water_mark_while_reading_a_large_frame(loop: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        seen = runner.run(_lowat_exchange())
    marks = {when: mark for when, mark, _ in seen}
    missing = {when: lacking for when, _, lacking in seen}
    assert marks["before"] == 1
    # 1 MiB + 14 bytes of header: after 300,000 bytes, more than 256 KiB is
    # missing, so the mark is 256 KiB ...
    assert missing["after part 1"] > http1._LOWAT
    assert marks["after part 1"] == http1._LOWAT
    # ... and once less than that is missing, it is exactly what is missing,
    # so the last 10,000 bytes complete the frame (the exchange checked that
    # the frame came back).  How much of part 2 the server has read by then
    # depends on how the kernel split its reads: a rest of part 2 smaller
    # than the mark waits in the socket for part 3.
    assert missing["after part 2"] >= 10_000
    assert marks["after part 2"] == min(missing["after part 2"], http1._LOWAT)
    # Back to normal after the frame: the small message came back.
    assert marks["after the frame"] == 1
