"""Logging (issue #18 item 5): structured fields, the JSON formatter, rate-limited refusals.

A flood of bad handshakes from real TCP clients must leave a bounded number
of log lines plus a summary that accounts for every refusal held back; the
JSON lines (in-process and from ``wshub serve --log-format json``) must
parse and carry the structured fields.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, wait_for
from tests.integration.cli_support import free_port, start_program, wshub_command
from tests.integration.security_support import http_raw, mask_frame, read_close, upgrade
from tests.integration.v1_support import V1Peer, allow_all
from wshub.logging import JsonFormatter, RefusalRateLimit, refusal_log

NO_KEY = (
    b"GET /flood?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def fresh_limit() -> Iterator[RefusalRateLimit]:
    """A new token bucket on the refusal logger for this test (the process's one
    may have been spent by earlier tests); the old one is put back after."""
    old = [f for f in refusal_log.filters if isinstance(f, RefusalRateLimit)]
    for f in old:
        refusal_log.removeFilter(f)
    limit = RefusalRateLimit(rate=5.0, burst=20, summary_delay=0.2)
    refusal_log.addFilter(limit)
    yield limit
    refusal_log.removeFilter(limit)
    for f in old:
        refusal_log.addFilter(f)


async def bad_handshake(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(NO_KEY)
        return await asyncio.wait_for(reader.readline(), 10.0)
    finally:
        writer.close()


async def test_a_flood_of_bad_handshakes_leaves_a_bounded_log(
    start_server: StartServer, fresh_limit: RefusalRateLimit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_server(limit_by_ip=0, metrics_path="/metrics")
    total = 2000
    began = time.monotonic()
    status_lines: list[bytes] = []
    for start in range(0, total, 50):
        batch = [bad_handshake(srv.port) for _ in range(min(50, total - start))]
        status_lines += await asyncio.gather(*batch)
    elapsed = time.monotonic() - began
    assert all(line.startswith(b"HTTP/1.1 400 ") for line in status_lines), set(status_lines)
    assert srv.ws.stats.handshakes.get(400) == total  # every refusal counted in the metrics

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "wshub.refusals"]

    def summaries() -> list[logging.LogRecord]:
        return [r for r in refusals() if hasattr(r, "suppressed")]

    # The summary of what was held back comes once the limiter's delay passes.
    await wait_for(
        lambda: (
            sum(r.suppressed for r in summaries()) + len(refusals()) - len(summaries()) == total
        ),
        what="the suppression summary",
    )
    lines = [r for r in refusals() if not hasattr(r, "suppressed")]
    # The token bucket: the burst, then the rate (one more for rounding).
    assert len(lines) <= fresh_limit.burst + fresh_limit.rate * elapsed + 1
    assert len(lines) >= fresh_limit.burst
    assert summaries(), "no suppression summary"
    assert "suppressed" in summaries()[0].getMessage()
    # Each refusal line says who, what and why, as fields too.
    first = lines[0]
    assert first.levelno == logging.INFO
    assert first.status == 400  # type: ignore[attr-defined]
    assert first.peer == "127.0.0.1"  # type: ignore[attr-defined]
    assert first.path == "/flood"  # type: ignore[attr-defined]
    # Nothing else of wshub's logged one line per refusal.
    others = [r for r in caplog.records if r.name != "wshub.refusals" and r.levelno >= logging.INFO]
    assert len(others) < 10, [r.getMessage() for r in others[:10]]


async def test_a_flood_of_bad_wshub_v1_requests_leaves_a_bounded_log(
    start_server: StartServer, fresh_limit: RefusalRateLimit, caplog: pytest.LogCaptureFixture
) -> None:
    # A bad wshub.v1 request gets an error and the connection stays open, so
    # one connected client can send them as fast as it likes: their lines
    # share the refusals' token bucket.
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_server(pubsub=True, authorize=allow_all)
    peer = await V1Peer.connect(srv)
    await wait_for(lambda: len(srv.ws.clients) == 1, what="the client")
    (client_id,) = srv.ws.clients
    total = 1000
    began = time.monotonic()
    for n in range(total):
        await peer.send(type="no-such-type", id=n)
    for _ in range(total):
        assert (await peer.recv_type("error"))["code"] == "bad_request"
    elapsed = time.monotonic() - began
    assert (await peer.subscribe("still-here"))["topic"] == "still-here"
    await peer.close()

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "wshub.v1 request" in r.getMessage()]

    def summaries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if hasattr(r, "suppressed")]

    await wait_for(
        lambda: sum(r.suppressed for r in summaries()) + len(refused()) == total,
        what="the suppression summary",
    )
    assert fresh_limit.burst <= len(refused()) <= fresh_limit.burst + fresh_limit.rate * elapsed + 1
    assert refused()[0].client_id == client_id  # type: ignore[attr-defined]


async def test_a_flood_of_connections_with_bad_frames_leaves_a_bounded_log(
    start_server: StartServer, fresh_limit: RefusalRateLimit, caplog: pytest.LogCaptureFixture
) -> None:
    # Each connection is accepted, then sends a frame of a reserved opcode
    # (1002) or a wshub.v1 request that is not JSON (1008): one line each
    # would let a client that reconnects in a loop flood the log.
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_server(pubsub=True, authorize=allow_all, limit_by_ip=0)

    async def bad_frame() -> int:
        reply, reader, writer = await http_raw(srv, upgrade(f"{srv.host}:{srv.port}"))
        assert reply.status == 101
        try:
            writer.write(mask_frame(0x3, b"reserved"))
            return await read_close(reader)
        finally:
            writer.close()

    async def not_json() -> int:
        peer = await V1Peer.connect(srv)
        await peer.conn.send("{not json")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(peer.conn.recv(), 10)
        assert peer.conn.close_code is not None
        return int(peer.conn.close_code)

    each = 150
    began = time.monotonic()
    codes: list[int] = []
    for _ in range(0, each, 30):
        codes += await asyncio.gather(*(bad_frame() for _ in range(30)))
        codes += await asyncio.gather(*(not_json() for _ in range(30)))
    elapsed = time.monotonic() - began
    assert sorted(set(codes)) == [1002, 1008], set(codes)

    def lines() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.levelno >= logging.INFO and not hasattr(r, "suppressed")
        ]

    def held_back() -> int:
        return sum(r.suppressed for r in caplog.records if hasattr(r, "suppressed"))

    await wait_for(lambda: held_back() + len(lines()) >= 2 * each, what="the summary")
    assert len(lines()) <= fresh_limit.burst + fresh_limit.rate * elapsed + 1


async def test_a_flood_of_bad_http2_connections_leaves_a_bounded_log(
    start_server: StartServer, fresh_limit: RefusalRateLimit, caplog: pytest.LogCaptureFixture
) -> None:
    # HTTP/2 with prior knowledge, then a SETTINGS frame whose length is not
    # a multiple of 6: a connection error (GOAWAY) that any peer can cause.
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_server(limit_by_ip=0)
    bad_settings = b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5

    async def bad_connection() -> bytes:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        try:
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bad_settings)
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    total = 300
    began = time.monotonic()
    answers: list[bytes] = []
    for _ in range(0, total, 50):
        answers += await asyncio.gather(*(bad_connection() for _ in range(50)))
    elapsed = time.monotonic() - began
    assert all(goaway_sent(a) for a in answers), answers[:3]

    def lines() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.levelno >= logging.INFO and not hasattr(r, "suppressed")
        ]

    def held_back() -> int:
        return sum(r.suppressed for r in caplog.records if hasattr(r, "suppressed"))

    await wait_for(lambda: held_back() + len(lines()) >= total, what="the summary")
    assert len(lines()) <= fresh_limit.burst + fresh_limit.rate * elapsed + 1


def goaway_sent(data: bytes) -> bool:
    """Whether these HTTP/2 frames from the server include a GOAWAY."""
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        if data[at + 3] == 0x07:
            return True
        at += 9 + length
    return False


async def test_json_lines_carry_the_structured_fields(
    start_server: StartServer, fresh_limit: RefusalRateLimit
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wshub")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        srv = await start_server(allow_origin=["http://good.example"], ping_delay=0)
        async with websockets.connect(srv.url + "/room?x=1", origin="http://good.example"):
            await wait_for(lambda: len(srv.ws.clients) == 1, what="the client")
            (client_id,) = srv.ws.clients
        await wait_for(lambda: not srv.ws.clients, what="the close")
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(srv.url + "/room", origin="http://evil.example")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("Z")
    opened = [e for e in entries if e.get("client_id") == client_id and "close_code" not in e]
    closed = [e for e in entries if e.get("client_id") == client_id and "close_code" in e]
    assert opened and opened[0]["path"] == "/room" and opened[0]["address"] == "127.0.0.1"
    assert opened[0]["level"] == "DEBUG"
    assert closed and closed[0]["close_code"] == 1000
    (refused,) = [e for e in entries if e.get("status") == 403]
    assert refused["logger"] == "wshub.refusals"
    assert refused["level"] == "INFO"
    assert refused["peer"] == "127.0.0.1"
    assert refused["path"] == "/room"


def test_json_formatter_keeps_exceptions_and_odd_values() -> None:
    formatter = JsonFormatter()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("wshub.test").makeRecord(
            "wshub.test",
            logging.ERROR,
            __file__,
            1,
            "failed for %s",
            ("someone",),
            exc_info=__import__("sys").exc_info(),
            extra={"client_id": "abc", "peer": ("127.0.0.1", 5)},
        )
    entry: dict[str, Any] = json.loads(formatter.format(record))
    assert entry["message"] == "failed for someone"
    assert entry["client_id"] == "abc"
    assert entry["peer"] == "('127.0.0.1', 5)"
    assert "RuntimeError: boom" in entry["exception"]


async def test_cli_log_format_json() -> None:
    port = free_port()
    program = await start_program(
        [
            *wshub_command(),
            "serve",
            "--port",
            str(port),
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        port,
    )
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/?room=1") as client:
            await client.send("hi")
            assert await client.recv() == "hi"
        status = await bad_handshake(port)
        assert status.startswith(b"HTTP/1.1 400 ")
    finally:
        code, err = await program.stop()
    assert code == 0, err
    lines = [line for line in err.splitlines() if line and not line.startswith("wshub serve:")]
    entries = [json.loads(line) for line in lines]  # every log line is one JSON object
    assert any(e.get("path") == "/" and e["level"] == "DEBUG" for e in entries), entries
    assert any(e.get("close_code") == 1000 for e in entries), entries
    assert any(e.get("status") == 400 and e["logger"] == "wshub.refusals" for e in entries)
