"""Differential fuzzing: the C upgrade reader against httptools (issue #15).

The first read of an HTTP/1.1 connection is offered to
``_speedups.parse_upgrade_head``; whatever it returns None for, and every
later read, goes to httptools, which is also all the pure-Python path
(``WSHUB_NO_EXTENSIONS=1``) has.  One parser must decide: for any bytes the
C reader either returns exactly what the httptools path makes of them
(method GET, HTTP/1.1, the target, the fields folded by ``add_header`` with
OWS stripped, the end of the head, within the same size and count limits),
or None.  Returning None is always safe; accepting what httptools refuses,
or reading it differently, is the bug this file hunts.

Three layers:

* the reader against a reference built here on httptools' own parser, for
  near-valid upgrade requests with mutations (hypothesis) and a fixed corpus;
* the same bytes through :class:`~wshub.transport.http1.Http1Protocol` with
  and without the C reader: the same statuses, never a 500 or an error log;
* the corpus over real sockets to ``wshub serve`` with the accelerator and
  ``wshub serve`` with ``WSHUB_NO_EXTENSIONS=1``: the same statuses, and no
  traceback or ERROR line on either server's stderr.

``WSHUB_FUZZ_EXAMPLES`` sets the example count (``make fuzz``: 20000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_fuzz_handshake import SETTINGS, RecordingTransport
from tests.integration.cli_support import free_port, start_program, wshub_command
from wshub import HttpServer, WebSocket
from wshub.protocol.handshake import Headers, add_header
from wshub.transport import http1

pytestmark = pytest.mark.fuzz


C_READER: Callable[[bytes, int, int], Any] | None = http1._parse_upgrade_head
needs_c_reader = pytest.mark.skipif(
    C_READER is None, reason="no C accelerator on this path (WSHUB_NO_EXTENSIONS=1)"
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ------------------------------------------------------------- the reference

Parsed = tuple[str, Headers, int]


class _Recorder:
    """The httptools callbacks of Http1Protocol, written again from its rules:
    the URL pieces joined, each field's value stripped of SP and HTAB and
    added with :func:`add_header`, head size and field count counted."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = {}
        self.size = 0
        self.count = 0
        self.messages = 0
        self.complete = 0
        self.body = False

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value) + 4
        self.count += 1
        add_header(self.headers, name.decode("latin-1"), value.decode("latin-1").strip(" \t"))

    def on_body(self, body: bytes) -> None:
        self.body = True

    def on_message_complete(self) -> None:
        self.complete += 1


def reference(data: bytes, max_size: int, max_fields: int) -> Parsed | None:
    """What the httptools path reads from ``data`` as a first read, if it is
    one plain GET upgrade request it would hand to the handshake as is:
    ``(target, headers, end)``, ``end`` being where the WebSocket's bytes
    start.  None for anything else (an error, a refusal for size or count,
    another method or version, a body, an incomplete or second request)."""
    rec = _Recorder()
    parser = httptools.HttpRequestParser(rec)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as exc:
        # llhttp stops after the head of an upgrade: the rest is the WebSocket's.
        end = exc.args[0] if exc.args else len(data)
    except httptools.HttpParserError:
        return None
    else:
        # Not flagged as an upgrade: a complete request, then nothing more
        # (bytes after it would be read as the next request).
        end = len(data)
    if rec.messages != 1 or rec.complete != 1 or rec.body:
        return None
    if parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
        return None
    if rec.size > max_size or rec.count > max_fields:
        return None  # Http1Protocol answers 431
    return rec.url.decode("latin-1"), rec.headers, end


def check_agrees(data: bytes, max_size: int = 16384, max_fields: int = 100) -> Parsed | None:
    """Run the C reader on ``data``; fail unless it is None or the reference."""
    assert C_READER is not None
    fast = C_READER(data, max_size, max_fields)
    if fast is None:
        return None
    target, headers, end = fast
    slow = reference(data, max_size, max_fields)
    assert slow is not None, f"the C reader accepted what httptools does not: {data!r}"
    assert (target, headers, end) == slow, data
    assert list(headers.items()) == list(slow[1].items()), data  # the same order too
    assert target.startswith("/"), target  # origin-form only
    assert type(target) is str and all(type(v) is str for v in headers.values())
    return slow


# -------------------------------------------------------------- the requests

VALID = [
    ("Host", "127.0.0.1:9001"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def request(
    fields: list[tuple[str, str]] | None = None,
    *,
    target: str = "/",
    method: str = "GET",
    version: str = "HTTP/1.1",
    eol: str = "\r\n",
) -> bytes:
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in fields or VALID]
    return (eol.join(lines) + eol + eol).encode("latin-1")


def with_field(name: str, value: str, fields: list[tuple[str, str]] | None = None) -> bytes:
    return request([*(fields or VALID), (name, value)])


def replaced(old: bytes, new: bytes, data: bytes | None = None) -> bytes:
    base = request() if data is None else data
    assert old in base
    return base.replace(old, new, 1)


FRAME = b"\x81\x82\x00\x00\x00\x00hi"

# Hostile and odd requests, each a whole first read.
CORPUS: dict[str, bytes] = {
    "valid": request(),
    "target-fragment": request(target="/chat?room=1#frag"),
    "target-brackets-in-path": request(target="/a[b]"),
    # targets httptools refuses, or that are not origin-form
    "target-?x": request(target="?x"),
    "target-chat": request(target="chat"),
    "target-;/a": request(target=";/a"),
    "target-[x]": request(target="[x]"),
    "target-[::1]": request(target="[::1]"),
    "target-@a": request(target="@a"),
    "target-%2F": request(target="%2F"),
    "target-*": request(target="*"),
    "target-*x": request(target="*x"),
    "target-absolute": request(target="http://a/b"),
    "target-absolute-bad-ipv6": request(target="ws://[::1/"),
    "target-//a": request(target="//a"),
    "target-//[x": request(target="//[x"),
    "target-space": request(target="/a b"),
    "target-tab": request(target="/a\tb"),
    "target-nul": request(target="/a\x00b"),
    "target-del": request(target="/a\x7fb"),
    "target-obs-text": request(target="/\x80\xff"),
    "target-vchar-outside-rfc3986": request(target='/a"b{c}|d\\e^f`g<h>'),
    "target-empty": request(target=""),
    "target-20000": request(target="/" + "a" * 20000),
    # request lines
    "method-POST": request(method="POST"),
    "method-get": request(method="get"),
    "method-HEAD": request(method="HEAD"),
    "method-CONNECT": request(method="CONNECT", target="a:80"),
    "method-two-spaces": request(method="GET "),
    "HTTP/1.0": request(version="HTTP/1.0"),
    "HTTP/2.0": request(version="HTTP/2.0"),
    "version-trailing-space": request(version="HTTP/1.1 "),
    "version-lower-case": request(version="http/1.1"),
    "bare-LF-everywhere": request(eol="\n"),
    "CRLF-before-request-line": b"\r\n" + request(),
    "two-spaces-after-GET": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    # line endings and folding
    "bare-LF-one-line": replaced(b"Connection: Upgrade\r\n", b"Connection: Upgrade\n"),
    "CR-CR-LF": replaced(b"Connection: Upgrade\r\n", b"Connection: Upgrade\r\r\n"),
    "leading-space-line": replaced(b"\r\nUpgrade", b"\r\n Upgrade"),
    "obs-fold": replaced(b"websocket\r\n", b"web\r\n socket\r\n"),
    "obs-fold-tab": replaced(b"websocket\r\n", b"websocket\r\n\tcontinued\r\n"),
    # field names
    "space-before-colon": replaced(b"Host:", b"Host :"),
    "tab-before-colon": replaced(b"Host:", b"Host\t:"),
    "space-in-name": replaced(b"Host:", b"Ho st:"),
    "obs-text-in-name": replaced(b"Host:", b"H\xe9st:"),
    "empty-name": replaced(b"Host:", b":"),
    "paren-in-name": with_field("X(y)", "1"),
    "name-80-chars": with_field("X-" + "n" * 80, "long name"),
    "line-without-colon": replaced(b"\r\n\r\n", b"\r\nNoColon\r\n\r\n"),
    # field values
    "empty-Origin": with_field("Origin", ""),
    "whitespace-only-Origin": with_field("Origin", " \t "),
    "OWS-around-value": with_field("X", "  pad\t "),
    "NUL-in-value": with_field("X", "a\x00b"),
    "DEL-in-value": with_field("X", "a\x7fb"),
    "VT-in-value": with_field("X", "a\x0bb"),
    "obs-text-in-value": with_field("X", "\x85\xa0\xe9\xff"),
    "repeated-cookie-and-field": request(
        [*VALID, ("Cookie", "a=1"), ("cookie", "b=2"), ("X", "1"), ("x", "2")]
    ),
    "two-Hosts": request([*VALID, ("Host", "other")]),
    "two-keys": request([*VALID, ("Sec-WebSocket-Key", KEY)]),
    "two-versions": with_field("Sec-WebSocket-Version", "13"),
    "version-superscript-13": replaced(b"Version: 13", "Version: ¹³".encode("latin-1")),
    "version-arabic-indic-13-utf8": replaced(b"Version: 13", "Version: ١٣".encode()),
    "version-013": replaced(b"Version: 13", b"Version: 013"),
    "version-8": replaced(b"Version: 13", b"Version: 8"),
    "Host-[::1": replaced(b"Host: 127.0.0.1:9001", b"Host: [::1"),
    "Host-a]": replaced(b"Host: 127.0.0.1:9001", b"Host: a]"),
    "Host-[x]": replaced(b"Host: 127.0.0.1:9001", b"Host: [x]"),
    "Host-[::1]:9001": replaced(b"Host: 127.0.0.1:9001", b"Host: [::1]:9001"),
    "no-Host": replaced(b"Host: 127.0.0.1:9001\r\n", b""),
    "Origin-[::1": with_field("Origin", "http://[::1"),
    "Origin-same": with_field("Origin", "http://127.0.0.1:9001"),
    # bodies
    "Content-Length-0": with_field("Content-Length", "0"),
    "Content-Length-5-with-body": with_field("Content-Length", "5") + b"hello",
    "Content-Length-negative": with_field("Content-Length", "-1"),
    "chunked": with_field("Transfer-Encoding", "chunked") + b"0\r\n\r\n",
    "two-Content-Lengths": request([*VALID, ("Content-Length", "0"), ("Content-Length", "1")]),
    # counts and sizes
    "100-fields": request([*VALID, *[(f"X-{i}", "v") for i in range(95)]]),
    "101-fields": request([*VALID, *[(f"X-{i}", "v") for i in range(96)]]),
    "155-fields": request([*VALID, *[(f"X-{i}", "v") for i in range(150)]]),
    "value-16000": with_field("X-Big", "a" * 16000),
    "value-20000": with_field("X-Big", "a" * 20000),
    # what follows the head
    "then-frame": request() + FRAME,
    "then-CRLF": request() + b"\r\n",
    "then-request": request() + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "then-garbage": request() + b"\x00garbage",
    "Connection-keep-alive-Upgrade-then-frame": replaced(
        b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"
    )
    + FRAME,
    "Connection-upgrade-NBSP-then-frame": replaced(
        b"Connection: Upgrade", b"Connection: upgrade\xa0"
    )
    + FRAME,
    "Connection-upgrade-NBSP": replaced(b"Connection: Upgrade", b"Connection: upgrade\xa0"),
    "Connection-up-grade-then-frame": replaced(b"Connection: Upgrade", b"Connection: up grade")
    + FRAME,
    "Connection-Upgrade;q-then-frame": replaced(b"Connection: Upgrade", b"Connection: Upgrade;q=1")
    + FRAME,
    "Connection-keep-alive-then-frame": replaced(b"Connection: Upgrade", b"Connection: keep-alive")
    + FRAME,
    "Connection-keep-alive-then-request": replaced(
        b"Connection: Upgrade", b"Connection: keep-alive"
    )
    + b"GET / HTTP/1.1\r\n\r\n",
    "two-Connections-then-frame": replaced(
        b"Connection: Upgrade", b"Connection: close\r\nConnection: upgrade"
    )
    + FRAME,
    "no-Upgrade-then-frame": replaced(b"Upgrade: websocket\r\n", b"") + FRAME,
    "Upgrade-h2c-websocket-then-frame": replaced(b"Upgrade: websocket", b"Upgrade: h2c, websocket")
    + FRAME,
    "empty-Upgrade-then-frame": replaced(b"Upgrade: websocket", b"Upgrade:") + FRAME,
    "Proxy-Connection-then-frame": replaced(b"Connection: Upgrade", b"Proxy-Connection: Upgrade")
    + FRAME,
    # cut short
    "cut-1": request()[:-1],
    "cut-2": request()[:-2],
    "cut-20": request()[:20],
    "request-line-only": b"GET / HTTP/1.1\r\n",
    "empty": b"",
    "garbage": b"\x00\x01\x02\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


# Pieces for near-valid requests, put together with a Random that hypothesis
# seeds (hypothesis' own Random draws lopsided numbers; a failure prints the
# bytes all the same): mostly valid requests with a few changes, at rates
# where about a quarter are still read by both parsers and compared.
_ALL = "".join(map(chr, range(256)))
_URI = "/?#[]:@!$&'()*+,;=%-._~aZ09\"<>\\^`{|} "
_TARGETS = [
    "/", "/chat", "/chat?room=1", "/a#f", "/a?b?c#d#e", "//a", "/[x]", "/%zz", "/?", "/#",
    "?x", "chat", ";/a", "[x]", "*", "*x", "http://a/b", "ws://h/p?q", "", " /", "/a b",
    "/a\tb", "/\x00", "/\x7f", "/\xe9", '/a"b', "/{x}|", "/a\\b",
]  # fmt: skip
_NAMES = [
    "Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
    "Cookie", "cookie", "COOKIE", "X-A", "x-a", "Content-Length", "Transfer-Encoding",
    "Proxy-Connection", "Sec-WebSocket-Extensions", "x_y!z~", "Host ", " Host", "Ho st",
    "Ho\tst", "X(y)", "X/y", "", "H\xe9st", "X\x00", "X\x7f", "X-" + "n" * 70, "Host\t",
]  # fmt: skip
_VALUES = [
    "", " ", "\t", "websocket", "WebSocket", "h2c, websocket", "Upgrade", "upgrade",
    "keep-alive, Upgrade", "Upgrade, keep-alive", "close, upgrade", "upgrade\t",
    " , upgrade , ", "upgrade,", ",upgrade", "upgradex", "up grade", "upgrade\xa0",
    "upgrade;q=1", '"upgrade"', "upgrade upgrade", "13", "8", " 13 ", "013", "\xb9\xb3",
    "[::1", "a]", "127.0.0.1:9001", KEY, "x" * 300, "a\x00b", "a\x7fb", "\xe9", "\x85",
    "a\rb", "a\nb", "0", "5", "-1", "chunked", "a=1; b=2",
]  # fmt: skip
_SEPARATORS = [":", " : ", ":\t", ": \t ", "\t:", " :", ":  "]
_EOLS = ["\n", "\r", "\r\n ", "\r\n\t", "\n\r", "\r\r\n"]
_TAILS = [FRAME, FRAME, b"\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\x00", b"x" * 40]


def _text(rnd: random.Random, alphabet: str, most: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, most)))


def _odd(rnd: random.Random, choices: list[str], alphabet: str, most: int) -> str:
    return rnd.choice(choices) if rnd.random() < 0.7 else _text(rnd, alphabet, most)


def near_valid_bytes(rnd: random.Random) -> bytes:
    """A valid upgrade request with a few things changed (or none)."""
    fields = list(VALID)
    for _ in range(rnd.choice([0, 0, 0, 0, 1, 1, 2, 4])):
        op = rnd.choice(["drop", "name", "value", "value", "add", "add", "dup", "dup", "many"])
        at = rnd.randrange(len(fields)) if fields else 0
        if op == "drop" and fields:
            fields.pop(at)
        elif op == "name" and fields:
            fields[at] = (_odd(rnd, _NAMES, _ALL, 8), fields[at][1])
        elif op == "value" and fields:
            fields[at] = (fields[at][0], _odd(rnd, _VALUES, _ALL, 12))
        elif op == "add":
            fields.insert(at, (_odd(rnd, _NAMES, _ALL, 8), _odd(rnd, _VALUES, _ALL, 12)))
        elif op == "dup" and fields:
            fields.append(fields[at])
        elif op == "many":
            fields += [(f"X-{i}", "v") for i in range(rnd.choice([3, 9, 94, 95, 96, 120]))]
    method = "GET" if rnd.random() < 0.9 else rnd.choice(["POST", "get", "HEAD", "CONNECT", "GET "])
    version = "HTTP/1.1"
    if rnd.random() < 0.1:
        version = rnd.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1", "HTTP/1.10"])
    target = rnd.choice(["/", "/chat", "/chat?room=1"])
    if rnd.random() < 0.3:
        target = rnd.choice(
            [rnd.choice(_TARGETS), "/" + _text(rnd, _URI, 20), _text(rnd, _ALL, 20)]
        )
    lines = [f"{method} {target} {version}"]
    for name, value in fields:
        sep = ": " if rnd.random() < 0.95 else rnd.choice(_SEPARATORS)
        lines.append(f"{name}{sep}{value}")
    text = "".join(line + ("\r\n" if rnd.random() < 0.97 else rnd.choice(_EOLS)) for line in lines)
    data = bytearray((text + "\r\n").encode("latin-1"))
    if rnd.random() < 0.15:  # a few bytes changed, dropped or put in anywhere
        for _ in range(rnd.randint(1, 3)):
            at, byte = rnd.randint(0, len(data)), rnd.randrange(256)
            op = rnd.choice(["set", "insert", "delete"])
            if op == "insert" or at == len(data):
                data[at:at] = bytes([byte])
            elif op == "set":
                data[at] = byte
            else:
                del data[at]
    if rnd.random() < 0.4:  # something after the head
        data += rnd.choice(_TAILS) if rnd.random() < 0.7 else rnd.randbytes(rnd.randint(1, 12))
    if rnd.random() < 0.1:  # cut short
        data = data[: rnd.randint(0, len(data))]
    return bytes(data)


near_valid = st.randoms(use_true_random=True).map(near_valid_bytes)


limits = st.sampled_from([(16384, 100), (1024, 8), (200, 100), (90, 3)])


# ------------------------------------------------- the reader vs the reference


def test_the_reference_reads_a_valid_request_like_the_c_reader() -> None:
    # The comparison below means something only if both read this the same.
    data = request([*VALID, ("Cookie", "a=1"), ("cookie", "b=2"), ("X", " \tpad\t ")]) + FRAME
    ref = reference(data, 16384, 100)
    assert ref is not None
    target, headers, end = ref
    assert target == "/" and end == len(data) - len(FRAME)
    assert headers["cookie"] == "a=1; b=2" and headers["x"] == "pad"
    if C_READER is not None:
        assert check_agrees(data) == ref


@needs_c_reader
@pytest.mark.parametrize("data", list(CORPUS.values()), ids=list(CORPUS))
def test_corpus_c_reader_agrees_with_httptools(data: bytes) -> None:
    for max_size, max_fields in [(16384, 100), (1024, 8)]:
        check_agrees(data, max_size, max_fields)


@needs_c_reader
@pytest.mark.parametrize("target", ["?x", "chat", ";/a", "[x]", "*", "http://a/b", "@a", "%2F", ""])
def test_c_reader_leaves_other_than_origin_form_to_httptools(target: str) -> None:
    assert C_READER is not None
    assert C_READER(request(target=target), 16384, 100) is None
    assert C_READER(request(target="/" + target), 16384, 100) is not None


@needs_c_reader
def test_c_reader_gives_the_websocket_only_what_httptools_would() -> None:
    # Bytes after the head are the WebSocket's only when llhttp, too, sees an
    # upgrade (Upgrade and a "Connection: upgrade" token); otherwise it reads
    # them as the next request, so the C reader must not take them.
    assert C_READER is not None
    assert C_READER(request() + FRAME, 16384, 100) is not None
    for conn in ["keep-alive, Upgrade", "Upgrade , close", "x,upgrade", "UPGRADE"]:
        data = replaced(b"Connection: Upgrade", f"Connection: {conn}".encode()) + FRAME
        assert check_agrees(data) is not None, conn
    for conn in ["keep-alive", "upgrade\xa0", "upgrade;q=1", "upgradex", "up grade"]:
        data = replaced(b"Connection: Upgrade", f"Connection: {conn}".encode("latin-1"))
        assert C_READER(data, 16384, 100) is not None, conn  # the whole read: fine
        assert C_READER(data + FRAME, 16384, 100) is None, conn
    no_upgrade = replaced(b"Upgrade: websocket\r\n", b"")
    assert C_READER(no_upgrade, 16384, 100) is not None
    assert C_READER(no_upgrade + FRAME, 16384, 100) is None


@needs_c_reader
@SETTINGS
@given(data=near_valid, limit=limits)
def test_c_reader_agrees_with_httptools(data: bytes, limit: tuple[int, int]) -> None:
    check_agrees(data, *limit)


@needs_c_reader
@SETTINGS
@given(
    data=st.binary(max_size=200)
    | st.builds(lambda b: b"GET /" + b, st.binary(max_size=200))
    | st.builds(lambda b: request() + b, st.binary(max_size=20)),
    limit=limits,
)
def test_c_reader_agrees_with_httptools_on_any_bytes(data: bytes, limit: tuple[int, int]) -> None:
    check_agrees(data, *limit)


# ------------------------------------- Http1Protocol with and without it


class _Errors(logging.Handler):
    """Records wshub's ERROR lines and tracebacks (caplog does not mix with
    hypothesis' repeated calls of one test function)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[_Errors]:
    handler = _Errors()
    logger = logging.getLogger("wshub")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def statuses(out: bytes) -> list[int]:
    """The statuses of the HTTP responses in ``out``, up to a 101."""
    found: list[int] = []
    while True:
        match = _STATUS.match(out)
        if match is None:
            return found
        status = int(match.group(1))
        found.append(status)
        head_end = out.find(b"\r\n\r\n")
        if status == 101 or head_end < 0:
            return found
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", out[: head_end + 2])
        out = out[head_end + 4 + (int(length.group(1)) if length else 0) :]


async def serve_one_read(data: bytes, reader: Any, max_size: int, max_fields: int) -> list[int]:
    """``data`` as the first (and only) read of a connection; the statuses."""
    saved = http1._parse_upgrade_head
    http1._parse_upgrade_head = reader
    try:
        server = HttpServer(max_header_size=max_size, max_headers=max_fields)
        ws = WebSocket(server)
        transport = RecordingTransport()
        proto = http1.Http1Protocol(server)
        transport.protocol = proto
        proto.connection_made(transport)
        proto.data_received(data)
    finally:
        http1._parse_upgrade_head = saved
    for _ in range(3):
        await asyncio.sleep(0)
    if not transport.closed:
        transport.abort()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not ws._clients and not ws._reserved and len(ws._per_ip) == 0
    out = bytes(transport.out)
    assert b"Traceback" not in out
    return statuses(out)


def check_same_statuses(
    loop: asyncio.AbstractEventLoop,
    errors: _Errors,
    data: bytes,
    max_size: int = 16384,
    max_fields: int = 100,
) -> list[int]:
    errors.records.clear()
    pure = loop.run_until_complete(serve_one_read(data, None, max_size, max_fields))
    assert 500 not in pure, data
    if C_READER is not None:
        fast = loop.run_until_complete(serve_one_read(data, C_READER, max_size, max_fields))
        assert fast == pure, data
    assert not errors.records, [r.getMessage() for r in errors.records]
    return pure


@pytest.mark.parametrize("data", list(CORPUS.values()), ids=list(CORPUS))
def test_corpus_same_status_with_and_without_the_c_reader(
    loop: asyncio.AbstractEventLoop, errors: _Errors, data: bytes
) -> None:
    for max_size, max_fields in [(16384, 100), (1024, 8)]:
        check_same_statuses(loop, errors, data, max_size, max_fields)


@SETTINGS
@given(data=near_valid, limit=st.sampled_from([(16384, 100), (1024, 8)]))
def test_same_status_with_and_without_the_c_reader(
    loop: asyncio.AbstractEventLoop, errors: _Errors, data: bytes, limit: tuple[int, int]
) -> None:
    check_same_statuses(loop, errors, data, *limit)


def test_a_big_first_read_gets_the_same_answer(
    loop: asyncio.AbstractEventLoop, errors: _Errors
) -> None:
    # A valid head and a big frame in one read, more than Http1Protocol lets
    # a request head run to (2 * max_header_size + 64 KiB): httptools and
    # the C reader must judge it alike, whatever the size rule says.
    big = request() + b"\x82\xff" + (200_000).to_bytes(8, "big") + b"\0" * 4 + b"x" * 100_000
    assert check_same_statuses(loop, errors, big) in ([101], [431])
    garbage = b"GET / HTTP/1.1\r\nX: " + b"x" * 120_000
    assert check_same_statuses(loop, errors, garbage) == [431]
    assert check_same_statuses(loop, errors, request() + FRAME) == [101]


# --------------------------------------- real servers: accelerated and pure

_ACCELERATED = "import sys, wshub.protocol.frames as f; sys.exit(0 if f.ACCELERATED else 1)"


async def _status_over_socket(port: int, data: bytes) -> int | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()  # the server sees the whole request, then EOF
        out = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    found = statuses(out)
    return found[0] if found else None


@needs_c_reader
async def test_corpus_same_status_from_accelerated_and_pure_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = dict(os.environ)
    env.pop("WSHUB_NO_EXTENSIONS", None)
    accelerated = subprocess.run([sys.executable, "-c", _ACCELERATED], env=env, check=False)
    assert accelerated.returncode == 0, "the wshub serve process would not have the C reader"
    argv = [*wshub_command(), "serve", "--log-level", "info"]
    monkeypatch.delenv("WSHUB_NO_EXTENSIONS", raising=False)
    fast_port = free_port()
    fast = await start_program([*argv, "--port", str(fast_port)], fast_port)
    try:
        monkeypatch.setenv("WSHUB_NO_EXTENSIONS", "1")
        pure_port = free_port()
        pure = await start_program([*argv, "--port", str(pure_port)], pure_port)
    except BaseException:
        await fast.stop()
        raise
    monkeypatch.delenv("WSHUB_NO_EXTENSIONS")
    differ = []
    try:
        for name, data in CORPUS.items():
            got_fast = await _status_over_socket(fast_port, data)
            got_pure = await _status_over_socket(pure_port, data)
            if got_fast != got_pure or got_fast == 500:
                differ.append((name, got_fast, got_pure))
    finally:
        _, fast_err = await fast.stop()
        _, pure_err = await pure.stop()
    assert not differ, differ
    for err in (fast_err, pure_err):
        assert "Traceback" not in err, err[-3000:]
        assert " ERROR " not in err, err[-3000:]
    # Each server logged its refusals (one line each), so they did see them.
    assert "refused" in fast_err and "refused" in pure_err
