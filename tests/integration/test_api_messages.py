"""send / drain / broadcast, encodings both ways, per-path and async events (websockets client)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import websockets

from tests.conftest import Running, StartServer, wait_for
from tests.rawws import RawClient, read_frame
from wshub import WebSocket


def connect(srv: Running, path: str = "/", **kwargs: Any) -> Any:
    return websockets.connect(
        srv.url + path, compression=None, ping_interval=None, open_timeout=5, **kwargs
    )


async def open_ids(ws: WebSocket, n: int) -> None:
    await wait_for(lambda: len(ws.clients) == n, what=f"{n} clients")


async def test_send_every_data_type_and_its_frame_type(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    results: list[bool] = []

    @ws.on("message")
    def reply(cid: str, data: str | bytes) -> None:
        assert data == "go"
        results.append(ws.send(cid, "text é"))
        results.append(ws.send(cid, b"\x00bytes"))
        results.append(ws.send(cid, bytearray(b"\x01bytearray")))
        results.append(ws.send(cid, memoryview(b"\x02memoryview")))
        results.append(ws.send(cid, ""))
        results.append(ws.send(cid, b""))

    async with connect(srv) as client:
        await client.send("go")
        got = [await client.recv() for _ in range(6)]
    assert got == ["text é", b"\x00bytes", b"\x01bytearray", b"\x02memoryview", "", b""]
    assert results == [True] * 6  # under the high-water mark: "go on"


async def test_send_rejects_other_types(start_server: StartServer) -> None:
    srv = await start_server()
    async with connect(srv) as client:
        await open_ids(srv.ws, 1)
        [cid] = srv.ws.clients
        for bad in (42, None, ["x"], {"a": 1}):
            with pytest.raises(TypeError):
                srv.ws.send(cid, bad)  # type: ignore[arg-type]
        srv.ws.send(cid, "still fine")
        assert await client.recv() == "still fine"


async def test_send_returns_false_above_high_water_and_drain_waits(
    start_server: StartServer,
) -> None:
    # A raw client that does not read: the server's buffer fills up.
    srv = await start_server(write_high=64 * 1024, write_low=16 * 1024, write_limit=1 << 30)
    ws = srv.ws
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await open_ids(ws, 1)
        [cid] = ws.clients
        chunk = b"\xab" * (1 << 20)
        sent = 0
        ok = True
        while ok and sent < 256:  # the kernel buffers a few MB at most
            ok = ws.send(cid, chunk)
            sent += 1
        assert ok is False, "send() never said 'slow down'"
        drain = asyncio.ensure_future(ws.drain(cid))
        await asyncio.sleep(0)
        assert not drain.done()  # nobody read: the buffer is still above the low mark
        for _ in range(sent):  # nothing was dropped
            fin, opcode, payload = await read_frame(raw.reader)
            assert (fin, opcode, payload) == (True, 0x2, chunk)
        await asyncio.wait_for(drain, 10)
        await ws.drain(cid)  # under the low mark: returns at once
    finally:
        raw.close()


async def test_broadcast_path_exclude_and_count(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    opened: list[str] = []
    ws.on("open", opened.append)
    async with (
        connect(srv, "/") as a,
        connect(srv, "") as b,
        connect(srv, "/room?x=1") as c,
        connect(srv, "/room") as d,
    ):
        await open_ids(ws, 4)
        id_a, _id_b, id_c, _id_d = opened  # "async with" connects them in order
        assert ws.url(id_c).query == "x=1"
        assert ws.broadcast("all") == 4
        for client in (a, b, c, d):
            assert await client.recv() == "all"
        assert ws.broadcast(b"\x00room", path="/room") == 2
        for client in (c, d):
            assert await client.recv() == b"\x00room"
        assert ws.broadcast("root", path="/") == 2
        for client in (a, b):
            assert await client.recv() == "root"
        assert ws.broadcast(bytearray(b"ex"), exclude=[id_c, id_a]) == 2
        for client in (b, d):
            assert await client.recv() == b"ex"
        assert ws.broadcast("nobody", path="/nowhere") == 0
        # a and c got nothing more: the next message each sees is this one.
        ws.broadcast("last")
        assert await a.recv() == "last"
        assert await c.recv() == "last"


async def test_broadcast_skips_closing_clients(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await open_ids(ws, 1)
        [raw_id] = ws.clients
        async with connect(srv) as other:
            await open_ids(ws, 2)
            assert ws.close(raw_id, 1000) is True  # raw never answers: it stays "readOnly"
            assert ws.ready_state(raw_id) == "readOnly"
            assert ws.broadcast("hi") == 1
            assert await other.recv() == "hi"
            assert await raw.recv_close() == (1000, "")
    finally:
        raw.close()


SEND_CASES = [
    ("utf8", "hé", "hé"),
    ("ascii", "hi", "hi"),
    ("base64", "aGk=", b"hi"),
    ("hex", "68ff", b"h\xff"),
    ("binary", "hé", b"h\xe9"),
    ("utf16le", "hi", b"h\x00i\x00"),
    ("ucs2", "hé", b"h\x00\xe9\x00"),
]


@pytest.mark.parametrize(("encoding", "text", "expected"), SEND_CASES)
async def test_send_with_each_encoding(
    start_server: StartServer, encoding: str, text: str, expected: str | bytes
) -> None:
    srv = await start_server()
    async with connect(srv) as client:
        await open_ids(srv.ws, 1)
        [cid] = srv.ws.clients
        assert srv.ws.send(cid, text, encoding) is True
        assert await client.recv() == expected


@pytest.mark.parametrize("encoding", ["klingon", "latin9", "utf-8"])
async def test_send_with_an_unknown_encoding_raises(
    start_server: StartServer, encoding: str
) -> None:
    # (A string a known encoding cannot represent is converted as Node's
    # Buffer.from converts it: tests/integration/test_api_encodings.py.)
    srv = await start_server()
    async with connect(srv) as client:
        await open_ids(srv.ws, 1)
        [cid] = srv.ws.clients
        with pytest.raises(ValueError):
            srv.ws.send(cid, "x", encoding)
        srv.ws.send(cid, "after")
        assert await client.recv() == "after"


RECEIVE_CASES = [
    ("utf8", "hé", "hé"),
    ("ascii", "hi", "hi"),
    ("base64", "hé", "aMOp"),
    ("hex", "hé", "68c3a9"),
    ("binary", "hé", "h\u00c3\u00a9"),
    ("utf16le", "hi!!", "\u6968\u2121"),
    ("ucs2", "hi!!", "\u6968\u2121"),
]


@pytest.mark.parametrize(("encoding", "sent", "seen"), RECEIVE_CASES)
async def test_receive_text_with_each_encoding(
    start_server: StartServer, encoding: str, sent: str, seen: str
) -> None:
    srv = await start_server()
    ws = srv.ws
    got: list[str | bytes] = []
    ws.on("message", lambda cid, data: got.append(data))
    ws.on("open", lambda cid: ws.set_encoding(cid, encoding))  # type: ignore[arg-type]
    async with connect(srv) as client:
        await client.send(sent)
        await client.send(b"\xff\x00")  # binary stays bytes whatever the encoding
        await wait_for(lambda: len(got) == 2, what="two messages")
    assert got == [seen, b"\xff\x00"]


async def test_hub_encoding_option_is_the_default_both_ways(start_server: StartServer) -> None:
    srv = await start_server(encoding="hex")
    ws = srv.ws
    got: list[Any] = []

    @ws.on("message")
    def on_message(cid: str, data: str | bytes) -> None:
        got.append(data)
        ws.send(cid, "6869")  # hex → the bytes "hi"

    async with connect(srv) as client:
        await client.send("AB")
        assert await client.recv() == b"hi"
        assert ws.broadcast("ff00") == 1
        assert await client.recv() == b"\xff\x00"
    assert got == ["4142"]
    with pytest.raises(ValueError):
        ws.encoding = "latin9"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        ws.set_encoding("nobody", "klingon")  # type: ignore[arg-type]


async def test_per_path_events(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    seen: list[tuple[str, Any]] = []
    ws.on("message", lambda cid, data: seen.append(("message", data)))
    ws.on("/chat", lambda cid, data: seen.append(("/chat", data)))
    ws.on("/a/b", lambda cid, data: seen.append(("/a/b", data)))
    async with (
        connect(srv, "/") as root,
        connect(srv, "/chat?token=123") as chat,
        connect(srv, "/a/b") as ab,
        connect(srv, "/unhandled") as other,
    ):
        await root.send("r")
        await wait_for(lambda: len(seen) == 1)
        await chat.send("c")
        await wait_for(lambda: len(seen) == 2)
        await ab.send(b"ab")
        await wait_for(lambda: len(seen) == 3)
        await other.send("dropped: no listener for /unhandled")
        await root.send("r2")
        await wait_for(lambda: len(seen) == 4)
        assert other.state.name == "OPEN"
    assert seen == [("message", "r"), ("/chat", "c"), ("/a/b", b"ab"), ("message", "r2")]


async def test_slash_is_message_and_off_removes(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    first: list[Any] = []
    second: list[Any] = []

    def one(cid: str, data: Any) -> None:
        first.append(data)

    ws.on("/", one)  # the same as "message"
    ws.on("message", lambda cid, data: second.append(data))
    async with connect(srv) as client:
        await client.send("1")
        await wait_for(lambda: len(second) == 1)
        ws.off("message", one)
        await client.send("2")
        await wait_for(lambda: len(second) == 2)
    assert first == ["1"]  # several callbacks run in order; off() removed one
    assert second == ["1", "2"]
    with pytest.raises(ValueError):
        ws.off("message", one)
    with pytest.raises(ValueError):
        ws.on("nonsense", one)
    with pytest.raises(TypeError):
        ws.on("message", "not callable")  # type: ignore[call-overload]


async def test_async_callbacks_keep_per_client_order_and_run_clients_concurrently(
    start_server: StartServer,
) -> None:
    srv = await start_server()
    ws = srv.ws
    order: dict[str, list[str]] = {}
    b_arrived = asyncio.Event()

    @ws.on("message")
    async def handler(cid: str, data: str | bytes) -> None:
        assert isinstance(data, str)
        if data == "a-wait":
            # Holds client A's queue until client B's message arrives: if the
            # hub ran all clients' callbacks one at a time, this would hang.
            await asyncio.wait_for(b_arrived.wait(), 10)
        if data.startswith("b"):
            b_arrived.set()
        await asyncio.sleep(0.001 * (hash(data) % 3))
        order.setdefault(data[0], []).append(data)
        ws.send(cid, "done " + data)

    async with connect(srv) as a, connect(srv) as b:
        await a.send("a-wait")
        for i in range(10):
            await a.send(f"a{i}")
        await b.send("b0")
        assert await b.recv() == "done b0"
        replies = [await a.recv() for _ in range(11)]
    assert order["a"] == ["a-wait"] + [f"a{i}" for i in range(10)]
    assert replies == ["done a-wait"] + [f"done a{i}" for i in range(10)]


class AwaitableCount(int):
    """An int that is also awaitable: must be awaited like any awaitable."""

    def __await__(self) -> Any:
        return asyncio.sleep(0.05).__await__()


async def test_callbacks_returning_plain_values_or_awaitable_subclasses(
    start_server: StartServer,
) -> None:
    """What a handler returns: a bool (``lambda cid, d: ws.send(cid, d)``), a
    str or a list is not waited for; an awaitable, even of a subclass of
    int, is, and holds the client's next message until it is done."""
    srv = await start_server()
    ws = srv.ws
    finished: list[str] = []
    ws.on("message", lambda cid, data: ws.send(cid, data))  # returns a bool
    ws.on("/str", lambda cid, data: ws.send(cid, data) and "sent")
    ws.on("/list", lambda cid, data: [ws.send(cid, data)])

    async def later(data: str) -> None:
        await asyncio.sleep(0.01)  # due before the AwaitableCount's 50 ms
        finished.append(data)

    def awaitable_int(cid: str, data: str | bytes) -> AwaitableCount:
        assert isinstance(data, str)
        if data == "first":
            asyncio.get_running_loop().create_task(later(data))
        else:
            finished.append(data)
        ws.send(cid, data)
        return AwaitableCount(1)

    ws.on("/awaitable", awaitable_int)
    async with (
        connect(srv) as plain,
        connect(srv, "/str") as text,
        connect(srv, "/list") as listed,
        connect(srv, "/awaitable") as held,
    ):
        for client in (plain, text, listed):
            await client.send("one")
            await client.send("two")
            assert [await client.recv(), await client.recv()] == ["one", "two"]
        await held.send("first")
        await held.send("second")
        assert [await held.recv(), await held.recv()] == ["first", "second"]
    # The AwaitableCount returned for "first" was awaited (50 ms) before
    # "second" was handed over: "first"'s own 10 ms task had finished by then.
    assert finished == ["first", "second"]


async def test_callback_exception_is_logged_and_an_error_event(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()
    ws = srv.ws
    errors: list[tuple[str, Exception]] = []

    @ws.on("message")
    def boom(cid: str, data: Any) -> None:
        if data == "boom":
            raise RuntimeError("callback failed")
        ws.send(cid, data)

    @ws.on("/async")
    async def aboom(cid: str, data: Any) -> None:
        await asyncio.sleep(0)
        raise LookupError("async callback failed")

    ws.on("error", lambda cid, exc: errors.append((cid, exc)))
    with caplog.at_level(logging.ERROR, logger="wshub"):
        async with connect(srv) as client, connect(srv, "/async") as aclient:
            await client.send("boom")
            await client.send("still alive")
            assert await client.recv() == "still alive"
            await aclient.send("x")
            await wait_for(lambda: len(errors) == 2, what="two error events")
            await aclient.send("y")
            await wait_for(lambda: len(errors) == 3, what="the async client still served")
    assert isinstance(errors[0][1], RuntimeError)
    assert isinstance(errors[1][1], LookupError)
    assert "callback failed" in caplog.text
    assert any(r.exc_info for r in caplog.records)
