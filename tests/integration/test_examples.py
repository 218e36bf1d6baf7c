"""examples/node_readme_example.py (the Node library's README back-end) used by real clients."""

from __future__ import annotations

import json
import re
import signal
import sys
from typing import Any

import websockets

from tests.conftest import run_node
from tests.integration.cli_support import ROOT, free_port, start_program
from tests.rawws import http_exchange


async def test_node_readme_example_chat() -> None:
    port = free_port()
    program = await start_program(
        [sys.executable, str(ROOT / "examples" / "node_readme_example.py"), str(port)], port
    )
    try:
        url = f"ws://127.0.0.1:{port}/chat?token=123"
        async with websockets.connect(url, compression=None) as a:
            await a.send("Hello World")
            # The single-client reply, then the broadcast (a is the only client).
            assert [await a.recv(), await a.recv()] == ["Hello World", "Hello World"]
            async with websockets.connect(url, compression=None) as b:
                await b.send(b"\x00binary")
                assert [await b.recv(), await b.recv()] == [b"\x00binary"] * 2
                assert await a.recv() == b"\x00binary"  # the broadcast reached a
            # And a Node ws client, as the original's front-end would be.
            plan: dict[str, Any] = {"send": [{"text": "from node"}], "expect": 2}
            plan["close"] = [1000, ""]
            result = await run_node("client.mjs", url, json.dumps(plan))
            assert [m["data"] for m in result["messages"]] == ["from node", "from node"]
            assert await a.recv() == "from node"
        # The original's plain HTTP handler: res.end().
        reply = await http_exchange(
            "127.0.0.1", port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert reply.status == 200 and reply.body == b""
    finally:
        status, _err = await program.stop(signal.SIGTERM)
    assert status == 0
    out = program.stdout
    ids = re.findall(r"^Connect (\S+) ws://127\.0\.0\.1:\d+/chat\?token=123$", out, re.M)
    assert len(ids) == 3, out
    assert f"Data {ids[0]} 'Hello World'" in out
    assert re.search(rf"^Close {ids[1]} CloseEvent\(code=1000", out, re.M), out
