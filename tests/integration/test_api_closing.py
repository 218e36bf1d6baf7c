"""A client in its closing handshake, as code written for the Node library expects.

* It leaves ``ws.clients`` as soon as its closing handshake starts, and a
  ``send`` to an ID listed a moment before returns False instead of
  raising: the Node README's loop ``for id in ws.clients: ws.send(id, data)``
  reaches every other client.
* A close the server decides (pong timeout 1011, protocol error 1002,
  message too big 1009, ...) fires ``"close"`` at once with the code sent
  and ``was_clean=False``, and frees the ID (a reconnect with the session
  cookie gets it back at once), while the connection finishes its closing
  handshake in the background; its socket counts under ``limit_by_ip``
  until it is gone.
* Option changes apply to connected clients: ``max_payload`` from their
  next frame, ``pong_timeout`` from the next ping, ``close_timeout`` from
  the next closing handshake, ``encoding`` to the clients without their own.

Real peers: the websockets client, and raw sockets (tests/rawws.py) for the
clients that never answer a Close or a ping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from tests.conftest import Running, StartServer, wait_for
from tests.rawws import RawClient, client_frame, close_body
from wshub import CloseEvent


def connect(srv: Running, **kwargs: Any) -> Any:
    return websockets.connect(srv.url + "/", compression=None, ping_interval=None, **kwargs)


class Closes:
    """The "close" events, in order."""

    def __init__(self, srv: Running) -> None:
        self.events: list[tuple[str, int, bool]] = []
        srv.ws.on("close", self._on_close)

    def _on_close(self, client_id: str, event: CloseEvent) -> None:
        self.events.append((client_id, event.code, event.was_clean))


async def test_readme_loop_skips_a_closing_client_and_reaches_the_others(
    start_server: StartServer,
) -> None:
    # close_timeout is long: the raw client never answers our Close, so it
    # stays in its closing handshake for the whole test.
    srv = await start_server(close_timeout=60)
    ws = srv.ws
    closes = Closes(srv)
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1, what="the raw client")
        [raw_id] = ws.clients
        async with connect(srv) as a, connect(srv) as b, connect(srv) as c:
            await wait_for(lambda: len(ws.clients) == 4, what="four clients")
            listed = ws.clients
            assert ws.close(raw_id, 1000, "bye") is True
            assert raw_id not in ws.clients and len(ws.clients) == 3
            # The Node README's broadcast, over a list taken before the close:
            sent = [ws.send(cid, "hello") for cid in listed]
            assert sent[listed.index(raw_id)] is False and sent.count(True) == 3
            # ... and as the README spells it, over the live list.
            for cid in ws.clients:
                ws.send(cid, "again")
            assert ws.broadcast("all") == 3
            for client in (a, b, c):
                assert [await client.recv() for _ in range(3)] == ["hello", "again", "all"]
            assert await raw.recv_close() == (1000, "bye")  # nothing after our Close
            assert closes.events == []  # its closing handshake is not over
            assert ws.ready_state(raw_id) == "readOnly"
    finally:
        raw.close()
    await wait_for(lambda: len(closes.events) == 4, what="every close event")
    assert (raw_id, 1006, False) in closes.events  # it hung up without a Close


async def test_pong_timeout_reports_1011_at_once_and_frees_the_id(
    start_server: StartServer,
) -> None:
    srv = await start_server(secret="s3cret", close_timeout=60)
    ws = srv.ws
    closes = Closes(srv)
    opened: list[str] = []
    ws.on("open", opened.append)
    messages: list[tuple[str, str | bytes]] = []
    ws.on("message", lambda c, data: messages.append((c, data)))
    raw = await RawClient.connect("127.0.0.1", srv.port)  # never answers a ping
    try:
        await wait_for(lambda: len(opened) == 1, what="the raw client")
        [cid] = opened
        cookie = raw.reply.header("set-cookie")
        assert cookie is not None
        async with connect(srv) as other:
            await wait_for(lambda: len(ws.clients) == 2, what="the other client")
            assert ws.ping(cid, 0.2) is True
            await wait_for(lambda: closes.events, what="the close event of the pong timeout")
            assert closes.events == [(cid, 1011, False)]
            assert cid not in ws.clients
            # The connection is still there, in its closing handshake: our
            # Close went out, and the socket still counts under limit_by_ip.
            assert await raw.recv_close() == (1011, "pong timeout")
            assert ws._per_ip.count("127.0.0.1") == 2
            # The ID is free: the session cookie gets it back at once.
            again = await RawClient.connect(
                "127.0.0.1", srv.port, extra=[("Cookie", cookie.split(";")[0])]
            )
            try:
                await wait_for(lambda: len(opened) == 3, what="the reconnection")
                assert opened[2] == cid and cid in ws.clients
                assert ws._per_ip.count("127.0.0.1") == 3
                # The old connection ends later without another event: what
                # it still sends goes nowhere (not to the new client of its ID).
                await raw.send(client_frame(0x1, b"late"))
                await raw.send(client_frame(0x8, close_body(1011)))
                assert await raw.at_eof()  # both Close frames passed: the server hung up
                await wait_for(
                    lambda: ws._per_ip.count("127.0.0.1") == 2, what="the old socket to go"
                )
                assert closes.events == [(cid, 1011, False)]
                assert messages == []
                assert ws.send(cid, "to the new one") is True
                assert (await again.recv())[2] == b"to the new one"
                await other.send("still fine")
            finally:
                again.close()
    finally:
        raw.close()


async def test_protocol_error_reports_1002_at_once(start_server: StartServer) -> None:
    # A client that breaks the framing and then never hangs up: the server
    # fails the connection and lingers (close_timeout) for it to go, but the
    # application hears of the close at once.
    srv = await start_server(close_timeout=60)
    ws = srv.ws
    closes = Closes(srv)
    errors: list[Exception] = []
    ws.on("error", lambda cid, exc: errors.append(exc))
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1, what="the raw client")
        [cid] = ws.clients
        await raw.send(client_frame(0x1, b"unmasked", mask=None))
        await wait_for(lambda: closes.events, what="the close event")
        assert closes.events == [(cid, 1002, False)]
        assert len(errors) == 1  # the error event first, then "close"
        assert await raw.recv_close() == (1002, "client frame not masked")
        assert ws._per_ip.count("127.0.0.1") == 1  # lingering: still counted
    finally:
        raw.close()
    await wait_for(lambda: len(ws._per_ip) == 0, what="the socket to be gone")
    assert len(closes.events) == 1


async def test_max_payload_changes_apply_to_connected_clients(
    start_server: StartServer,
) -> None:
    srv = await start_server(max_payload=1000)
    ws = srv.ws
    closes = Closes(srv)
    got: list[int] = []

    @ws.on("message")
    def echo(cid: str, data: str | bytes) -> None:
        got.append(len(data))
        ws.send(cid, data)

    async with connect(srv) as client:
        await wait_for(lambda: len(ws.clients) == 1, what="the client")
        [cid] = ws.clients
        ws.max_payload = 4000  # raised: a message that was too large passes
        await client.send(b"x" * 3000)
        assert await client.recv() == b"x" * 3000
        ws.max_payload = 100  # lowered: the next larger message gets 1009
        await client.send(b"y" * 500)
        await wait_for(lambda: closes.events, what="the 1009 close event")
        assert closes.events == [(cid, 1009, False)]
        try:
            await asyncio.wait_for(client.recv(), 10)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1009
        else:
            raise AssertionError("the client was not closed")
    assert got == [3000]


async def test_a_closing_client_keeps_its_id_until_its_close_event(
    start_server: StartServer,
) -> None:
    # A close the application asked for keeps the closing handshake: while
    # it runs the ID stays taken (a reconnect with the cookie gets a new
    # one), and "close" comes when it is over, clean.
    srv = await start_server(secret="s3cret", close_timeout=60)
    ws = srv.ws
    closes = Closes(srv)
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1, what="the raw client")
        [cid] = ws.clients
        cookie = raw.reply.header("set-cookie")
        assert cookie is not None
        assert ws.close(cid, 4000, "done") is True
        assert await raw.recv_close() == (4000, "done")
        other = await RawClient.connect(
            "127.0.0.1", srv.port, extra=[("Cookie", cookie.split(";")[0])]
        )
        try:
            await wait_for(lambda: len(ws.clients) == 1, what="the second client")
            assert ws.clients != [cid]
        finally:
            other.close()
        assert closes.events == []
        await raw.send(client_frame(0x8, close_body(4000, "done")))
        await wait_for(lambda: len(closes.events) == 2, what="both close events")
        assert (cid, 4000, True) in closes.events
    finally:
        raw.close()


async def test_timeouts_changed_apply_to_connected_clients(start_server: StartServer) -> None:
    # Both start long; shortened while the raw clients are connected, they
    # apply from the next ping (pong_timeout) and the next closing
    # handshake (close_timeout).
    srv = await start_server(pong_timeout=60, close_timeout=60)
    ws = srv.ws
    closes = Closes(srv)
    silent = await RawClient.connect("127.0.0.1", srv.port)  # answers nothing
    mute = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 2, what="two raw clients")
        first, second = ws.clients
        ws.pong_timeout = 0.2
        assert ws.ping(first) is True
        await wait_for(lambda: closes.events, what="the pong timeout")
        assert closes.events == [(first, 1011, False)]
        ws.close_timeout = 0.2
        assert ws.close(second) is True  # never answered: dropped after 0.2 s
        await wait_for(lambda: len(closes.events) == 2, what="the close timeout")
        assert closes.events[1] == (second, 1006, False)
    finally:
        silent.close()
        mute.close()


async def test_hub_encoding_changes_reach_clients_without_their_own(
    start_server: StartServer,
) -> None:
    srv = await start_server()
    ws = srv.ws
    got: dict[str, list[str | bytes]] = {}
    ws.on("message", lambda cid, data: got.setdefault(cid, []).append(data))
    async with connect(srv) as follows, connect(srv) as own:
        await wait_for(lambda: len(ws.clients) == 2, what="two clients")
        await follows.send("id?")
        await wait_for(lambda: got, what="the first message")
        [follows_id] = got
        [own_id] = [cid for cid in ws.clients if cid != follows_id]
        ws.set_encoding(own_id, "utf8")  # its own: the hub's changes pass it by
        ws.encoding = "hex"
        await follows.send("hi")
        await own.send("hi")
        await wait_for(lambda: len(got) == 2 and len(got[follows_id]) == 2, what="two messages")
        assert got[follows_id] == ["id?", "6869"] and got[own_id] == ["hi"]
        assert ws.send(follows_id, "6869") is True  # str -> bytes through hex
        assert await follows.recv() == b"hi"
        assert ws.send(own_id, "6869") is True
        assert await own.recv() == "6869"
