"""Hypothesis fuzzing of the HTTP/1.1 handshake path, from raw bytes to the hub.

Bytes (random, or a valid upgrade with mutated lines, cut at random points)
go through the real :class:`~wshub.transport.http1.Http1Protocol` with a
recording transport and a real hub attached.  Whatever comes in: no
exception escapes, the answer is one well-formed status line (or nothing),
never a traceback, an error status closes the connection, and once the
connection is gone the hub's per-IP table, ``_clients`` and ``_reserved``
are empty.

``WSHUB_FUZZ_EXAMPLES`` sets the example count (``make fuzz``: 20000).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub import HttpServer, WebSocket
from wshub.policy import OriginPolicy, SessionSigner, TrustedProxies, client_ip, ip_key
from wshub.protocol.handshake import HandshakeError, check_http1_upgrade
from wshub.transport.http1 import Http1Protocol

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("WSHUB_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


class RecordingTransport(asyncio.Transport):
    """Just enough of a socket transport: records writes and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol  # HTTP/2 (h2c prior knowledge) takes over

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.out += data

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self._lose()

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._lose()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def drive(chunks: list[bytes], **options: Any) -> bytes:
    server = HttpServer(max_body_size=4096, handshake_timeout=5)
    ws = WebSocket(server, limit_by_ip=options.pop("limit_by_ip", 2), **options)
    ws.on("message", lambda cid, data: None)
    transport = RecordingTransport()
    proto = Http1Protocol(server)
    transport.protocol = proto
    proto.connection_made(transport)
    for chunk in chunks:
        if transport.closed:
            break
        transport.protocol.data_received(chunk)
    await asyncio.sleep(0)
    if not transport.closed:
        transport.abort()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    out = bytes(transport.out)
    assert b"Traceback" not in out
    result = out
    if b"".join(chunks).startswith(b"PRI * HTTP/2.0\r\n"):
        out = b""  # h2c prior knowledge: HTTP/2 frames, judged by the h2 tests
    if out:
        # Keep-alive plain requests may each get an answer before the last one.
        assert STATUS_LINE.match(out) is not None, out[:200]
        heads = [h for h in re.split(rb"(?=HTTP/1\.1 \d{3} )", out) if h]
        statuses = [int(h[9:12]) for h in heads if STATUS_LINE.match(h)]
        assert all(101 <= s <= 599 for s in statuses), statuses
        closing = [i for i, h in enumerate(heads) if b"\r\nConnection: close\r\n" in h]
        # A refusal (Connection: close) or a 101 is the last answer on the connection.
        assert closing in ([], [len(heads) - 1]), statuses
        if 101 in statuses:
            assert statuses.index(101) == len(statuses) - 1, statuses
        if closing:
            assert transport.closed
    assert len(ws._per_ip) == 0, "per-IP slot leaked"
    assert not ws._clients and not ws._reserved
    assert not server.connections.protocols
    return result


def request_bytes(method: str, target: str, lines: list[tuple[str, str]]) -> bytes:
    head = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")


VALID = [
    ("Host", "example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
NAMES = [k for k, _ in VALID] + [
    "Origin",
    "Sec-WebSocket-Origin",
    "Cookie",
    "X-Forwarded-For",
    "Forwarded",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Content-Length",
    "Transfer-Encoding",
]
header_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=60
) | st.sampled_from(
    [
        "",
        "13",
        "8",
        "websocket",
        "upgrade, keep-alive",
        "https://example.com",
        "null",
        "wshub=a.b.c",
        "chunked",
        "-1",
        "99999999999999999999",
        "for=[::1]:80",
        "permessage-deflate; client_max_window_bits=8",
        "x" * 300,
    ]
)


@st.composite
def mutated_upgrade(draw: st.DrawFn) -> bytes:
    lines = list(VALID)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "replace", "add", "dup"]))
        if op == "drop" and lines:
            lines.pop(draw(st.integers(0, len(lines) - 1)))
        elif op == "replace" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = (lines[i][0], draw(header_text))
        elif op == "add":
            lines.append((draw(st.sampled_from(NAMES)), draw(header_text)))
        elif op == "dup" and lines:
            lines.append(lines[draw(st.integers(0, len(lines) - 1))])
    method = draw(st.sampled_from(["GET", "GET", "POST", "CONNECT", "G\x00T"]))
    target = draw(st.sampled_from(["/", "/chat?x=1", "*", "http://a/b", "/%00", "/" + "a" * 50]))
    data = request_bytes(method, target, lines)
    tail = draw(st.binary(max_size=40))
    return data + tail


@SETTINGS
@given(data=mutated_upgrade(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_mutated_upgrades(loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]) -> None:
    loop.run_until_complete(drive(cut(data, cuts), allow_origin="*"))


@SETTINGS
@given(
    data=st.binary(max_size=300) | st.builds(lambda b: b"GET / HTTP/1.1\r\n" + b, st.binary()),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_random_bytes(loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]) -> None:
    loop.run_until_complete(drive(cut(data, cuts)))


@SETTINGS
@given(
    headers=st.dictionaries(st.sampled_from([n.lower() for n in NAMES]), header_text),
    method=st.sampled_from(["GET", "POST", "get"]),
    version=st.sampled_from(["1.1", "1.0", "2", "0.9"]),
)
def test_check_http1_upgrade_only_raises_handshake_error(
    headers: dict[str, str], method: str, version: str
) -> None:
    try:
        info = check_http1_upgrade(method, version, headers)
    except HandshakeError as exc:
        assert 400 <= exc.status <= 599
    else:
        assert info.version in (13, 8) and info.key is not None


text = st.text(max_size=80) | st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=80
)


@SETTINGS
@given(origin=text, host=text, tls=st.booleans(), xff=text, fwd=text, peer=text, cookie=text)
def test_policy_functions_never_raise(
    origin: str, host: str, tls: bool, xff: str, fwd: str, peer: str, cookie: str
) -> None:
    for policy in (OriginPolicy(None), OriginPolicy("*"), OriginPolicy(["https://a.example"])):
        assert policy.allows(origin, host, tls) in (True, False)
    proxies = TrustedProxies(["0.0.0.0/0", "::/0"])
    ip = client_ip(peer, {"x-forwarded-for": xff, "forwarded": fwd}, proxies)
    assert isinstance(ip_key(ip), str)
    assert SessionSigner("k").verify(cookie, 0.0) is None


def test_the_harness_sees_a_valid_upgrade(loop: asyncio.AbstractEventLoop) -> None:
    # The fuzz above is only worth something if the unmutated request gets in.
    out = loop.run_until_complete(drive([request_bytes("GET", "/", VALID)], allow_origin="*"))
    assert out.startswith(b"HTTP/1.1 101 ")
    out = loop.run_until_complete(drive([b"\x00garbage\r\n\r\n"]))
    assert out.startswith(b"HTTP/1.1 400 ")
