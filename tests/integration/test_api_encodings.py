"""Encodings convert exactly as Node's Buffer does, checked against ``node`` itself.

Every row of the Encodings table in docs/api.md: for each encoding, strings
with characters it cannot represent (non-ASCII, non-Latin-1, astral, lone
surrogates, bad base64 and hex) are sent, and payloads it cannot show are
received.  The expected bytes and strings come from Node's
``Buffer.from(string, encoding)`` and ``buffer.toString(encoding)``, run in
one ``node`` process; the same conversions are then checked end to end with
a websockets client.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import websockets

from tests.conftest import Running, StartServer, node_path, wait_for
from wshub.encodings import ENCODINGS, decode_text, encode_str

# Strings to send: what each encoding can and cannot represent.
SENT = [
    "hi",
    "hé",
    "€",
    "✓ ok",
    "😀",
    "a\ud800b",  # a lone high surrogate
    "\udc00",  # a lone low surrogate
    "x\ud83d",  # a high surrogate at the end
    "aGk=",
    "aGk",
    "a-_b",
    "a G k = x",
    "aGk=aGk=",
    "not base64!",
    "aGšk",
    "68ff",
    "abc",
    "abz1",
    "zz",
    "AB cd",
    "ab\u0161d",
    "",
]
# Text payloads to receive (valid UTF-8 on the wire, as RFC 6455 requires).
RECEIVED = ["hi", "hé", "é", "€✓", "😀", "hi!!", "odd", "\x7f\x00", "ÿ", ""]

_NODE_SCRIPT = """
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = {sent: {}, received: {}};
for (const enc of cases.encodings) {
  out.sent[enc] = cases.sent.map(s => Buffer.from(s, enc).toString('hex'));
  out.received[enc] = cases.received.map(s => Buffer.from(s, 'utf8').toString(enc));
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node_buffer() -> dict[str, Any]:
    """What Node's Buffer makes of SENT and RECEIVED, per encoding."""
    cases = json.dumps({"encodings": list(ENCODINGS), "sent": SENT, "received": RECEIVED})
    proc = subprocess.run(
        [node_path(), "-e", _NODE_SCRIPT],
        input=cases.encode("ascii"),  # lone surrogates travel as JSON escapes
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"node failed: {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sending_converts_as_buffer_from(node_buffer: dict[str, Any], encoding: str) -> None:
    expected = [bytes.fromhex(h) for h in node_buffer["sent"][encoding]]
    got = [encode_str(s, encoding)[0] for s in SENT]
    assert got == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_receiving_converts_as_buffer_to_string(node_buffer: dict[str, Any], encoding: str) -> None:
    assert [decode_text(s, encoding) for s in RECEIVED] == node_buffer["received"][encoding]


def test_frame_types() -> None:
    # utf8 is always text; ascii is text when the bytes are ASCII, and
    # binary otherwise (a text frame must be UTF-8); the others are binary.
    assert encode_str("hé\ud800", "utf8")[1] is True
    assert encode_str("hi", "ascii")[1] is True
    assert encode_str("hé", "ascii") == (b"h\xe9", False)
    for encoding in ("base64", "hex", "binary", "latin1", "utf16le", "ucs2"):
        assert encode_str("68", encoding)[1] is False


def connect(srv: Running) -> Any:
    return websockets.connect(srv.url + "/", compression=None, ping_interval=None)


@pytest.mark.parametrize("encoding", ["ascii", "latin1", "binary", "utf16le", "ucs2", "hex"])
async def test_unrepresentable_text_is_delivered_converted(
    start_server: StartServer, node_buffer: dict[str, Any], encoding: str
) -> None:
    srv = await start_server(encoding=encoding)
    ws = srv.ws
    got: list[str | bytes] = []
    errors: list[Exception] = []
    ws.on("message", lambda cid, data: got.append(data))
    ws.on("error", lambda cid, exc: errors.append(exc))
    async with connect(srv) as client:
        for text in RECEIVED:
            await client.send(text)
        await wait_for(lambda: len(got) == len(RECEIVED), what="every message")
    assert got == node_buffer["received"][encoding]
    assert errors == []


@pytest.mark.parametrize("encoding", ["utf8", "ascii", "latin1", "utf16le", "base64", "hex"])
async def test_unrepresentable_strings_are_sent_converted(
    start_server: StartServer, node_buffer: dict[str, Any], encoding: str
) -> None:
    srv = await start_server()
    ws = srv.ws
    async with connect(srv) as client:
        await wait_for(lambda: len(ws.clients) == 1, what="the client")
        [cid] = ws.clients
        received = []
        for text in SENT:
            ws.send(cid, text, encoding)
            received.append(await client.recv())
    # What arrives is what Node's Buffer.from makes; a text frame arrives
    # as str (UTF-8), a binary frame as bytes.
    as_bytes = [m.encode("utf-8") if isinstance(m, str) else m for m in received]
    assert as_bytes == [bytes.fromhex(h) for h in node_buffer["sent"][encoding]]
