"""HTTP/2 plain-request streams that never end, and their bodies (issue #15).

* A HEADERS frame without END_STREAM had no deadline: the stream (and a
  connection doing nothing else) stayed open.  Now the request must be
  complete within ``handshake_timeout``; then it gets 408 and RST_STREAM,
  and a connection with no other stream is closed (GOAWAY).
* Request DATA was acknowledged at once and buffered up to
  ``max_body_size`` per stream, so 100 streams could hold 100 of them.
  Now the bodies held on one connection are capped (a stream past the cap
  is refused with REFUSED_STREAM); over-size is still 413 + RST_STREAM.

The deadlines are set small; nothing is timed.
"""

from __future__ import annotations

import logging

import h2.events
import pytest
from h2.errors import ErrorCodes

from tests.conftest import Running, StartServer
from tests.integration.h2_client_support import OP_TEXT, H2Client
from wshub import Request
from wshub.transport import http2

MAX_BODY = 256 * 1024


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wshub")


def echo_length(request: Request) -> str:
    return str(len(request.body))


async def start(start_server: StartServer, handshake_timeout: float) -> Running:
    srv = await start_server(
        handler=echo_length,
        server_options={"handshake_timeout": handshake_timeout, "max_body_size": MAX_BODY},
    )
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    return srv


async def connect(srv: Running) -> H2Client:
    client = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    await client.wait(client.settings_seen.is_set, what="server SETTINGS")
    return client


def open_request(
    client: H2Client, srv: Running, headers: list[tuple[str, str]] | None = None
) -> int:
    return client.request(
        "POST",
        "/upload",
        authority=f"127.0.0.1:{srv.port}",
        scheme="http",
        headers=headers,
        end=False,
    )


async def test_a_request_that_never_ends_is_reset_and_the_connection_closed(
    start_server: StartServer,
) -> None:
    srv = await start(start_server, handshake_timeout=0.3)
    client = await connect(srv)
    try:
        sid = open_request(client, srv)  # a bare HEADERS frame, no END_STREAM
        st = client.streams[sid]
        await client.wait(lambda: st.reset is not None, what="the stream to be reset")
        assert st.headers is not None and st.status == 408
        await client.wait(client.closed.is_set, what="the idle connection to be closed")
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        await client.close()


async def test_a_hanging_request_does_not_take_its_siblings_down(
    start_server: StartServer,
) -> None:
    srv = await start(start_server, handshake_timeout=0.3)
    client = await connect(srv)
    try:
        authority = f"127.0.0.1:{srv.port}"
        ws = await client.open_ws("/", authority=authority, scheme="http")
        assert (await client.response(ws)).status == 200
        sid = open_request(client, srv)
        st = client.streams[sid]
        await client.wait(lambda: st.reset is not None, what="the stream to be reset")
        # The connection carries a WebSocket: it stays, and works.
        client.ws_send(ws, OP_TEXT, b"still here")
        assert (await client.ws_recv(ws)).payload == b"still here"
        assert client.goaway is None
    finally:
        await client.close()


async def test_complete_requests_are_not_cut_off(start_server: StartServer) -> None:
    srv = await start(start_server, handshake_timeout=0.5)
    client = await connect(srv)
    try:
        sid = open_request(client, srv)
        await send_within_windows(client, {sid: MAX_BODY})
        client.conn.end_stream(sid)
        client.flush()
        assert await client.body(sid) == str(MAX_BODY).encode()
        assert client.streams[sid].status == 200
    finally:
        await client.close()


async def send_within_windows(client: H2Client, todo: dict[int, int]) -> dict[int, int]:
    """Send ``todo[sid]`` bytes of DATA on each stream, as the peer's windows
    allow (no END_STREAM); stop on a stream once the server resets it.
    Returns what was sent on each stream."""
    sent = dict.fromkeys(todo, 0)

    def pump() -> bool:
        busy = False
        for sid, total in todo.items():
            st = client.streams[sid]
            while st.reset is None and sent[sid] < total:
                window = min(
                    client.conn.local_flow_control_window(sid),
                    client.conn.max_outbound_frame_size,
                    total - sent[sid],
                )
                if window <= 0:
                    busy = True
                    break
                client.conn.send_data(sid, b"z" * window)
                sent[sid] += window
        client.flush()
        return not busy

    await client.wait(pump, what="the bodies to be sent")
    return sent


async def test_bodies_held_on_one_connection_are_capped(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start(start_server, handshake_timeout=5.0)
    client = await connect(srv)
    try:
        sids = [open_request(client, srv) for _ in range(12)]
        # 12 bodies of 200 KiB each, every one under max_body_size: 2.4 MiB
        # if each stream could hold its own.
        sent = await send_within_windows(client, dict.fromkeys(sids, 200 * 1024))
        cap = http2.BODY_BUFFER_FACTOR * MAX_BODY
        refused = [sid for sid in sids if client.streams[sid].reset is not None]
        assert refused, "no stream was refused"
        assert all(client.streams[s].reset == ErrorCodes.REFUSED_STREAM for s in refused)
        held = sum(sent[s] for s in sids if s not in refused)
        assert held <= cap, (held, cap)
        assert any("refused" in r.getMessage() for r in caplog.records)
        # The connection goes on: a small request is answered.
        sid = client.request("GET", "/", authority=f"127.0.0.1:{srv.port}", scheme="http", end=True)
        assert await client.body(sid) == b"0"
    finally:
        await client.close()


async def test_over_size_bodies_get_413(start_server: StartServer) -> None:
    srv = await start(start_server, handshake_timeout=5.0)
    client = await connect(srv)
    try:
        # Declared too large: refused before any DATA.
        sid = open_request(client, srv, [("content-length", str(MAX_BODY + 1))])
        st = await client.response(sid)
        assert st.status == 413
        # Sent too large: 413 once it passes max_body_size, then RST_STREAM.
        sid = open_request(client, srv)
        await send_within_windows(client, {sid: MAX_BODY + 100_000})
        st = await client.response(sid)
        assert st.status == 413
        await client.wait(lambda: st.reset is not None or st.ended, what="the stream's end")
        assert any(
            isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid for ev in client.events
        )
    finally:
        await client.close()
