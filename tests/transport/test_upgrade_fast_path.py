"""The C reader of upgrade requests and httptools answer every request alike.

Http1Protocol reads a whole, plain upgrade request as a connection's first
bytes with ``_speedups.parse_upgrade_head`` and leaves everything else to
httptools.  The same requests go to a real server with the fast path on and
off (the pure-Python path never has it); status, headers and what follows
must be the same, and the fast path must really have been taken.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import StartServer
from tests.rawws import client_frame, read_frame, read_http_head, upgrade_request
from wshub.protocol import frames
from wshub.transport import http1


def request(*fields: tuple[str, str], target: str = "/", version: str = "13") -> bytes:
    return upgrade_request(target, version=version, extra=list(fields))


CASES = {
    "plain": request(),
    "path-and-query": request(target="/room/7?x=1&y=%20"),
    "origin-allowed": request(("Origin", "http://good.example")),
    "origin-refused": request(("Origin", "http://evil.example")),
    "repeated-fields": request(("X-A", "1"), ("x-a", "2"), ("Cookie", "a=1"), ("Cookie", "b=2")),
    "version-7": request(version="7"),
    "bad-key": request().replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: xx"),
    "no-upgrade-token": request().replace(b"Connection: Upgrade", b"Connection: keep-alive"),
    "frame-in-same-packet": request() + client_frame(0x1, b"early"),
}


async def exchange(host: str, port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        reply = await asyncio.wait_for(read_http_head(reader), 5)
        headers = {
            k: v[0]
            for k, v in reply.headers.items()
            if k not in ("sec-websocket-accept", "set-cookie", "date")
        }
        after = b""
        if reply.status == 101 and data.endswith(client_frame(0x1, b"early")):
            _fin, opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            after = bytes([opcode]) + payload
        return reply.status, headers, after
    finally:
        writer.close()


@pytest.mark.parametrize("name", sorted(CASES))
async def test_fast_path_and_httptools_answer_alike(
    name: str, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not frames.ACCELERATED:
        pytest.fail("needs the C accelerator (run without WSHUB_NO_EXTENSIONS; make venv)")
    srv = await start_server(allow_origin=["http://good.example"])
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    taken: list[int] = []
    real = http1._parse_upgrade_head

    def spy(data: bytes, max_size: int, max_fields: int) -> object:
        result = real(data, max_size, max_fields)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(http1, "_parse_upgrade_head", spy)
    fast = await exchange(srv.host, srv.port, CASES[name])
    assert taken == [True], "the fast path was not taken"
    monkeypatch.setattr(http1, "_parse_upgrade_head", None)
    slow = await exchange(srv.host, srv.port, CASES[name])
    assert fast == slow
    if name == "frame-in-same-packet":
        assert fast[2] == b"\x01early"
