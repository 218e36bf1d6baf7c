"""``wshub serve`` and ``python -m wshub serve`` as real processes, with real clients.

Startup time is measured and printed (``-s`` shows it), never asserted: the
benchmark owns timing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from typing import Any

import pytest
import websockets

from tests.conftest import run_node, system_congestion_control
from tests.integration.cli_support import free_port, start_program, wshub_command
from tests.rawws import RawClient, client_frame


def serve_argv(how: str, port: int, *extra: str) -> list[str]:
    base = wshub_command() if how == "script" else [sys.executable, "-m", "wshub"]
    return [*base, "serve", "--port", str(port), "--deflate", "off", *extra]


@pytest.mark.parametrize("how", ["script", "module"])
async def test_serve_echo_and_sigterm(how: str) -> None:
    port = free_port()
    program = await start_program(serve_argv(how, port, "--mode", "echo"), port)
    print(f"\nwshub serve ({how}) accepted connections {program.startup:.3f}s after exec")
    closed_with: list[int] = []
    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as a,
            websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as b,
        ):
            await a.send("echo é")
            assert await a.recv() == "echo é"
            await a.send(b"\x00\xff")
            assert await a.recv() == b"\x00\xff"
            await b.send("only b")
            assert await b.recv() == "only b"
            program.send_signal(signal.SIGTERM)
            for client in (a, b):
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(client.recv(), 10)
                assert client.close_code is not None
                closed_with.append(client.close_code)
    finally:
        status, err = await program.stop(signal.SIGTERM)
    assert closed_with == [1012, 1012]  # SIGTERM drains: "service restart", come back
    assert status == 0, err
    assert "Traceback" not in err


async def test_serve_broadcast_includes_the_sender() -> None:
    port = free_port()
    program = await start_program(serve_argv("script", port, "--mode", "broadcast"), port)
    try:
        url = f"ws://127.0.0.1:{port}/"
        async with (
            websockets.connect(url, compression=None) as a,
            websockets.connect(url, compression=None) as b,
        ):
            # b is connected once its handshake returned; a message from a now reaches both.
            await a.send("to all")
            assert await a.recv() == "to all"
            assert await b.recv() == "to all"
            await b.send(b"\x01bin")
            assert await a.recv() == b"\x01bin"
            assert await b.recv() == b"\x01bin"
            # A Node ws client joins: its message reaches everyone, itself included.
            plan: dict[str, Any] = {"send": [{"text": "node"}], "expect": 1, "close": [1000, ""]}
            result = await run_node("client.mjs", url, json.dumps(plan))
            assert result["messages"] == [{"type": "text", "data": "node"}]
            assert await a.recv() == "node"
            assert await b.recv() == "node"
    finally:
        status, err = await program.stop()
    assert status == 0, err


async def test_serve_defaults_to_loopback_and_rejects_bad_arguments() -> None:
    proc = await asyncio.create_subprocess_exec(
        *wshub_command(),
        "serve",
        "--mode",
        "shout",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2  # argparse usage error
    assert b"--mode" in err
    help_proc = await asyncio.create_subprocess_exec(
        *wshub_command(),
        "serve",
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _err = await asyncio.wait_for(help_proc.communicate(), 30)
    assert help_proc.returncode == 0
    assert b"127.0.0.1" in out and b"--deflate" in out


@pytest.mark.parametrize("compressor", ["auto", "zlib", "isal"])
async def test_serve_compressor_choice(compressor: str) -> None:
    port = free_port()
    argv = [*wshub_command(), "serve", "--port", str(port), "--compressor", compressor]
    program = await start_program(argv, port)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            message = json.dumps([{"id": i, "symbol": "AAPL", "qty": i * 3} for i in range(200)])
            for _ in range(3):
                await ws.send(message)
                assert await ws.recv() == message
    finally:
        status, err = await program.stop()
    assert status == 0, err


async def reply_is_compressed(port: int, message: bytes) -> bool:
    """Send ``message`` compressed (permessage-deflate, raw socket); RSV1 of the echo."""
    client = await RawClient.connect(
        "127.0.0.1", port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]
    )
    try:
        assert "permessage-deflate" in (client.reply.header("sec-websocket-extensions") or "")
        compressor = zlib.compressobj(wbits=-15)
        body = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await client.send(client_frame(0x2, body[:-4], rsv=0b100))
        b0, b1 = await client.reader.readexactly(2)
        assert b0 & 0x0F == 0x2 and b0 & 0x80, hex(b0)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await client.reader.readexactly(2))
        payload = await client.reader.readexactly(n)
        compressed = bool(b0 & 0x40)
        if compressed:
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        assert payload == message
        return compressed
    finally:
        client.close()


async def test_serve_deflate_min_size() -> None:
    # Node's ws calls it `threshold`: replies shorter are sent uncompressed on
    # a permessage-deflate connection; what arrives compressed is inflated.
    message = json.dumps([{"id": i, "symbol": "AAPL"} for i in range(150)]).encode()
    assert 4000 < len(message) < 65536
    for min_size, expect_compressed in ((None, True), (len(message) + 1, False)):
        port = free_port()
        extra = [] if min_size is None else ["--deflate-min-size", str(min_size)]
        program = await start_program(
            [*wshub_command(), "serve", "--port", str(port), *extra], port
        )
        try:
            assert await reply_is_compressed(port, message) is expect_compressed
            # A real peer takes the uncompressed replies on its deflate connection.
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
                await ws.send(message)
                assert await ws.recv() == message
        finally:
            status, err = await program.stop()
        assert status == 0, err


async def test_serve_without_isal_exits_3_for_compressor_isal() -> None:
    # The benchmark contract: exit 3 for an option this installation cannot do.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; sys.modules['isal'] = None; from wshub.cli import main; "
        "sys.argv = ['wshub', 'serve', '--compressor', 'isal']; sys.exit(main())",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3, err
    assert b"pip install isal" in err


def _server_side_cc(port: int) -> str:
    """The congestion control of the server's end of the one connection on ``port`` (ss)."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is needed to read the server socket's congestion control")
    out = subprocess.run(
        ["ss", "-tin", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("reno", "cubic", "bbr", "dctcp", "vegas", "westwood", "htcp"):
        if f" {name} " in f" {out} ".replace("\n", " "):
            return name
    raise AssertionError(f"no congestion control in ss output:\n{out}")


@pytest.mark.parametrize(("option", "expect"), [("reno", "reno"), ("system", None), (None, None)])
async def test_serve_loopback_congestion(option: str | None, expect: str | None) -> None:
    # None: no option given; the tuning is off by default.
    default = system_congestion_control()
    port = free_port()
    extra = () if option is None else ("--loopback-congestion", option)
    program = await start_program(serve_argv("script", port, *extra), port)
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/", compression=None, max_size=None
        ) as ws:
            await ws.send(b"x" * 10)
            assert await ws.recv() == b"x" * 10
            assert _server_side_cc(port) == default
            await ws.send(bytes(100_000))
            assert await ws.recv() == bytes(100_000)
            assert _server_side_cc(port) == (expect or default)
    finally:
        status, err = await program.stop()
    assert status == 0, err


async def test_serve_refuses_a_bad_congestion_name() -> None:
    proc = await asyncio.create_subprocess_exec(
        *serve_argv("script", free_port(), "--loopback-congestion", "a b"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3, err
    assert b"--loopback-congestion" in err
