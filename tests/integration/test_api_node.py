"""The same API driven by Node's ws client (npm), a second implementation we did not write."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import StartServer, run_node, wait_for
from wshub import CloseEvent


async def test_echo_both_types_and_client_close(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    events: list[tuple[str, Any]] = []
    ws.on("open", lambda cid: events.append(("open", cid)))
    ws.on("close", lambda cid, ev: events.append(("close", ev)))

    @ws.on("message")
    def echo(cid: str, data: str | bytes) -> None:
        events.append(("message", data))
        assert ws.send(cid, data) is True

    big = "€" * 50_000  # 150 kB: a 64-bit length frame
    plan = {
        "send": [
            {"text": "héllo"},
            {"hex": "00010203ff"},
            {"text": "€", "repeat": 50_000},
            {"hex": ""},
        ],
        "expect": 4,
        "close": [4100, "node done"],
    }
    result = await run_node("client.mjs", srv.url + "/", json.dumps(plan))
    assert result["messages"] == [
        {"type": "text", "data": "héllo"},
        {"type": "binary", "hex": "00010203ff"},
        {"type": "text", "data": big},
        {"type": "binary", "hex": ""},
    ]
    assert result["close"]["code"] == 4100
    await wait_for(lambda: events[-1][0] == "close")
    assert [e[0] for e in events] == ["open"] + ["message"] * 4 + ["close"]
    assert [e[1] for e in events[1:5]] == ["héllo", b"\x00\x01\x02\x03\xff", big, b""]
    close = events[-1][1]
    assert isinstance(close, CloseEvent)
    assert (close.code, close.reason, close.was_clean) == (4100, "node done", True)


async def test_server_close_code_and_reason_reach_node(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws

    @ws.on("/bye")
    def bye(cid: str, data: Any) -> None:
        ws.close(cid, 4200, f"closing {data}")

    plan = {"send": [{"text": "now"}]}
    result = await run_node("client.mjs", srv.url + "/bye?x=1", json.dumps(plan))
    assert result["close"] == {"code": 4200, "reason": "closing now"}


async def test_broadcast_to_node_clients_on_a_path(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    counts: list[int] = []

    @ws.on("open")
    def start_when_both_are_here(cid: str) -> None:
        if len(ws.clients) == 2:
            ws.broadcast("start", path="/room")

    @ws.on("/room")
    def fan_out(cid: str, data: Any) -> None:
        counts.append(ws.broadcast(data, path="/room"))

    # Each client speaks once "start" arrives, then expects both messages.
    def plan(text: str) -> str:
        return json.dumps(
            {"send": [{"text": text}], "sendAfter": 1, "expect": 3, "close": [1000, ""]}
        )

    a, b = await asyncio.gather(
        run_node("client.mjs", srv.url + "/room", plan("from a")),
        run_node("client.mjs", srv.url + "/room?second", plan("from b")),
    )
    for result in (a, b):
        texts = [m["data"] for m in result["messages"]]
        assert texts[0] == "start"
        assert sorted(texts[1:]) == ["from a", "from b"]
    assert counts == [2, 2]
