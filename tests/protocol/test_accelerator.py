"""The C accelerator and its pure-Python twin must behave identically.

The same byte streams, cut into the same chunks, go through a Connection
that uses ``wshub._speedups`` and one forced onto the pure-Python path; the
events must be equal.  ``make test`` also runs the protocol tests and the
Autobahn gate with ``WSHUB_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import base64
import hmac
import os
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawws import upgrade_request
from wshub.protocol import connection as connection_module
from wshub.protocol import frames
from wshub.protocol.connection import Connection, Event, MessageCodec
from wshub.protocol.deflate import DeflateOptions, negotiate_extensions


def _require_accelerator() -> None:
    if os.environ.get("WSHUB_NO_EXTENSIONS"):
        pytest.fail(
            "WSHUB_NO_EXTENSIONS is set: these tests compare both paths, run them without it"
        )
    if not frames.ACCELERATED:
        pytest.fail(
            "the C accelerator (wshub._speedups) is not built: run 'make venv' with a C compiler"
        )


def _pure_events(
    chunks: list[bytes],
    max_payload: int,
    monkeypatch: pytest.MonkeyPatch,
    codec: MessageCodec | None = None,
) -> list[Event]:
    with monkeypatch.context() as m:
        m.setattr(connection_module, "_scan_frames", None)
        m.setattr(connection_module, "apply_mask", frames._apply_mask_py)
        m.setattr(connection_module, "PayloadBuffer", frames._PayloadBufferPy)
        return _events(chunks, max_payload, codec)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` in the chunks that ``cuts`` (taken modulo its length) make."""
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True) if b > a]


def _events(
    chunks: list[bytes], max_payload: int, codec: MessageCodec | None = None
) -> list[Event]:
    conn = Connection(max_payload=max_payload, codec=codec)
    out: list[Event] = []
    for c in chunks:
        out.extend(conn.receive_data(c))
    return out


def masked_frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bytes = b"\x11\x22\x33\x44"
) -> bytes:
    n = len(payload)
    head = bytes([opcode | (0x80 if fin else 0) | (rsv << 4)])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + frames._apply_mask_py(payload, mask)


def test_apply_mask_matches_pure_python() -> None:
    _require_accelerator()
    # Around the 8-byte, SSE2 (16/64-byte) and AVX2 (32/128-byte) steps.
    sizes = [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 129]
    for n in [*sizes, 159, 160, 191, 255, 256, 257, 1000, 4096, 65537, 1 << 20]:
        data = os.urandom(n)
        mask = os.urandom(4)
        assert frames.apply_mask(data, mask) == frames._apply_mask_py(data, mask)
        assert frames.apply_mask(bytearray(data), mask) == frames._apply_mask_py(data, mask)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=1200), start=st.integers(0, 31), mask=st.binary(min_size=4, max_size=4)
)
def test_apply_mask_any_length_and_alignment(data: bytes, start: int, mask: bytes) -> None:
    # A view that starts anywhere: the vector loops load unaligned memory.
    _require_accelerator()
    view = memoryview(data)[min(start, len(data)) :]
    assert frames.apply_mask(view, mask) == frames._apply_mask_py(bytes(view), mask)


def test_scanner_decodes_simple_frames_and_stops_at_others() -> None:
    _require_accelerator()
    assert frames.scan_frames is not None
    data = (
        masked_frame(1, "héllo".encode())
        + masked_frame(2, b"\x00" * 300)
        + masked_frame(2, b"x" * 70000)
        + masked_frame(9, b"ping")
        + masked_frame(1, b"after")
    )
    events, pos = frames.scan_frames(data, 0, 0)
    assert events == ["héllo", b"\x00" * 300, b"x" * 70000]
    assert data[pos] == 0x89  # stopped at the ping, left to Python
    # Invalid UTF-8, a fragment, RSV bits, an oversized frame: left to Python.
    for stop in (
        masked_frame(1, b"\xff"),
        masked_frame(1, b"a", fin=False),
        masked_frame(1, b"a", rsv=4),
        masked_frame(2, b"x" * 11),
    ):
        events, pos = frames.scan_frames(masked_frame(2, b"ok") + stop, 0, 10)
        assert events == [b"ok"] and pos == 8


# The settings of the tests that feed both paths random streams.
STREAMS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def deflated(data: bytes, final: bool = False) -> bytes:
    """``data`` as a client compresses it (RFC 7692 §7.2.1), or in a final block."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    if final:
        return c.compress(data) + c.flush()
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


NO_TAKEOVER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


def deflate_codec(offer: str, compressor: str = "auto") -> MessageCodec:
    negotiated = negotiate_extensions(offer, DeflateOptions(compressor=compressor))
    assert negotiated is not None
    return negotiated[1]


def test_scanner_inflates_compressed_frames_only_with_a_decoder() -> None:
    _require_accelerator()
    assert frames.scan_frames is not None
    codec = deflate_codec(NO_TAKEOVER)
    decoder = codec.message_decoder
    assert decoder is not None
    # With context takeover messages depend on the ones before: no decoder.
    assert deflate_codec("permessage-deflate").message_decoder is None
    text = "héllo " * 200
    data = (
        masked_frame(1, deflated(text.encode()), rsv=4)
        + masked_frame(2, deflated(b"\x00" * 3000), rsv=4)
        + masked_frame(1, b"plain")
        + masked_frame(1, deflated(b"RFC 7692", final=True), rsv=4)
    )
    events, pos = frames.scan_frames(data, 0, 0, decoder)
    assert events == [text, b"\x00" * 3000, "plain", "RFC 7692"] and pos == len(data)
    events, pos = frames.scan_frames(data, 0, 0, None)
    assert events == [] and pos == 0  # no decoder: RSV1 is Python's
    # What the decoder refuses, and text that is not UTF-8 once inflated,
    # is left to Python (which inflates it again and closes 1007 or 1009);
    # so are RSV2/RSV3 and fragments.
    for stop in (
        masked_frame(2, b"\xff\xff\xff\xff", rsv=4),  # not a deflate stream
        masked_frame(2, deflated(b"x", final=True) + b"junk", rsv=4),  # data after the end
        masked_frame(1, deflated(b"\xff\xfe"), rsv=4),  # not UTF-8
        masked_frame(2, deflated(b"y" * 11), rsv=4),  # inflates past max_payload 10
        masked_frame(2, deflated(b"z"), rsv=6),
        masked_frame(2, deflated(b"z"), fin=False, rsv=4),
    ):
        ok = masked_frame(2, deflated(b"ok"), rsv=4)
        events, pos = frames.scan_frames(ok + stop, 0, 10, decoder)
        assert events == [b"ok"] and pos == len(ok)
    with pytest.raises(TypeError):
        frames.scan_frames(data, 0, 0, (len,))


compressed_strategy = st.one_of(
    st.builds(lambda p: masked_frame(1, deflated(p.encode()), rsv=4), st.text(max_size=300)),
    st.builds(lambda p: masked_frame(1, deflated(p), rsv=4), st.binary(max_size=40)),
    st.builds(lambda p: masked_frame(2, deflated(p), rsv=4), st.binary(max_size=2000)),
    st.builds(lambda p: masked_frame(2, deflated(p, final=True), rsv=4), st.binary(max_size=50)),
    st.builds(
        lambda p, junk: masked_frame(2, deflated(p, final=True) + junk, rsv=4),
        st.binary(max_size=50),
        st.binary(min_size=1, max_size=3),
    ),
    st.builds(lambda p: masked_frame(2, p, rsv=4), st.binary(max_size=40)),  # corrupt
    st.builds(
        lambda p: (
            masked_frame(1, deflated(p)[:3], fin=False, rsv=4) + masked_frame(0, deflated(p)[3:])
        ),
        st.binary(max_size=60),
    ),
    st.builds(lambda p: masked_frame(2, p), st.binary(max_size=300)),
    st.builds(lambda p: masked_frame(9, p), st.binary(max_size=125)),
)


@STREAMS
@given(
    stream=st.lists(compressed_strategy, max_size=10).map(b"".join),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    max_payload=st.sampled_from([0, 64, 1000]),
    offer=st.sampled_from([NO_TAKEOVER, "permessage-deflate"]),
    compressor=st.sampled_from(["auto", "zlib"]),
)
def test_accelerated_and_pure_paths_agree_on_compressed_frames(
    stream: bytes,
    cuts: list[int],
    max_payload: int,
    offer: str,
    compressor: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require_accelerator()
    chunks = _cut(stream, cuts)
    fast = _events(chunks, max_payload, deflate_codec(offer, compressor))
    pure = _pure_events(chunks, max_payload, monkeypatch, deflate_codec(offer, compressor))
    assert fast == pure


frame_strategy = st.one_of(
    st.builds(lambda p: masked_frame(1, p.encode()), st.text(max_size=300)),
    st.builds(lambda p: masked_frame(1, p), st.binary(max_size=40)),  # often invalid UTF-8
    st.builds(lambda p: masked_frame(2, p), st.binary(max_size=300)),
    st.builds(lambda p: masked_frame(2, p, fin=False) + masked_frame(0, p), st.binary(max_size=50)),
    st.builds(lambda p: masked_frame(9, p), st.binary(max_size=125)),
    st.builds(lambda p: masked_frame(10, p), st.binary(max_size=125)),
    st.builds(lambda p, r: masked_frame(2, p, rsv=r), st.binary(max_size=20), st.integers(1, 7)),
    st.binary(max_size=20),  # garbage
    # Large binary frames, received in place when cut (Connection.read_window).
    st.builds(
        lambda n, b: masked_frame(2, bytes([b]) * n), st.integers(65530, 70000), st.integers(0, 255)
    ),
)


@STREAMS
@given(
    stream=st.lists(frame_strategy, max_size=12).map(b"".join),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
    max_payload=st.sampled_from([0, 64, 1000]),
)
def test_accelerated_and_pure_paths_agree(
    stream: bytes, cuts: list[int], max_payload: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_accelerator()
    chunks = _cut(stream, cuts)
    assert _events(chunks, max_payload) == _pure_events(chunks, max_payload, monkeypatch)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 300_000),
    initial=st.integers(-5, 100_000),
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 90_000)), max_size=20),
)
def test_payload_buffer_twins_agree(
    total: int, initial: int, steps: list[tuple[bool, int]]
) -> None:
    _require_accelerator()
    mask = os.urandom(4)
    data = os.urandom(total)
    masked = frames._apply_mask_py(data, mask)
    twins = [
        frames.PayloadBuffer(total, initial, mask),
        frames._PayloadBufferPy(total, initial, mask),
    ]
    assert type(twins[0]) is not type(twins[1])
    for through_window, n in steps:
        seen = []
        for buf in twins:
            pos = buf.filled
            if through_window and pos < total:
                window = buf.window()
                k = min(n, len(window))
                window[:k] = masked[pos : pos + k]
                window.release()
                buf.filled_in(k)
            else:
                k = min(n, total - pos)
                buf.write(masked[pos : pos + k])
            seen.append((buf.filled, buf.allocated))
        assert seen[0] == seen[1]
    for buf in twins:
        buf.write(masked[buf.filled :])
    assert twins[0].take() == twins[1].take() == data


# ------------------------------------------------ the upgrade request reader


def _httptools_head(data: bytes) -> tuple[str, str, str, dict[str, str], int] | None:
    """What Http1Protocol's httptools callbacks make of a request head, or
    None if httptools refuses it or wants more bytes."""
    import httptools

    from wshub.protocol.handshake import add_header

    class Collect:
        def __init__(self) -> None:
            self.url = b""
            self.headers: dict[str, str] = {}
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            value_text = value.decode("latin-1").strip(" \t")
            add_header(self.headers, name.decode("latin-1"), value_text)

        def on_headers_complete(self) -> None:
            self.done = True

    c = Collect()
    parser = httptools.HttpRequestParser(c)
    end = len(data)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as exc:
        end = exc.args[0] if exc.args else len(data)
    except httptools.HttpParserError:
        return None
    if not c.done:
        return None
    return (
        parser.get_method().decode(),
        parser.get_http_version(),
        c.url.decode("latin-1"),
        c.headers,
        end,
    )


def _upgrade(target: str = "/", fields: list[tuple[str, str]] | None = None) -> bytes:
    return upgrade_request(
        target,
        host="127.0.0.1:9001",
        key="dGhlIHNhbXBsZSBub25jZQ==",
        extra=fields,
        encoding="latin-1",  # every byte 0x80-0xFF on its own, as obs-text
    )


_field_names = st.sampled_from(
    ["Origin", "Cookie", "cookie", "X-Thing", "Sec-WebSocket-Extensions", "ACCEPT", "x_y!z"]
)
_field_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(
    target=st.text(alphabet="abc/?=&%-._~:@!$'()*+,;#[]019", min_size=0, max_size=30),
    fields=st.lists(st.tuples(_field_names, _field_values), max_size=8),
    tail=st.binary(max_size=20),
    cut=st.integers(0, 400),
)
def test_upgrade_head_reader_agrees_with_httptools(
    target: str, fields: list[tuple[str, str]], tail: bytes, cut: int
) -> None:
    _require_accelerator()
    from wshub import _speedups  # type: ignore[attr-defined]

    data = _upgrade("/" + target, fields) + tail
    data = data[: max(cut, len(data) - 30)] if cut % 3 == 0 else data  # sometimes incomplete
    fast = _speedups.parse_upgrade_head(data, 16384, 100)
    if fast is None:
        return  # left to httptools: nothing to compare
    target_out, headers, end = fast
    slow = _httptools_head(data[:end])
    assert slow is not None, data
    method, version, url, slow_headers, _ = slow
    assert (method, version, url, slow_headers) == ("GET", "1.1", target_out, headers)


def test_upgrade_head_reader_leaves_the_unusual_to_httptools() -> None:
    _require_accelerator()
    from wshub import _speedups  # type: ignore[attr-defined]

    parse = _speedups.parse_upgrade_head
    good = _upgrade("/chat?room=1", [("Cookie", "a=1"), ("cookie", "b=2"), ("X", "  pad  ")])
    target, headers, end = parse(good + b"\x81\x80rest", 16384, 100)
    assert target == "/chat?room=1" and end == len(good)
    assert headers["cookie"] == "a=1; b=2" and headers["x"] == "pad"
    assert headers["upgrade"] == "websocket" and "Upgrade" not in headers
    others = [
        good[:-2],  # incomplete
        good.replace(b"GET", b"PUT", 1),
        good.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        good.replace(b"Host:", b"Host :", 1),  # space before the colon
        good.replace(b"\r\nUpgrade", b"\r\n Upgrade", 1),  # folded / leading space
        good.replace(b"Connection: Upgrade\r\n", b"Connection: Upgrade\n", 1),  # bare LF
        good.replace(b"websocket", b"web\x00socket", 1),
        good.replace(b"websocket", b"web\x7fsocket", 1),
        _upgrade("/a b"),
        _upgrade("/<script>"),
        _upgrade("/", [("Content-Length", "0")]),
        _upgrade("/", [("Transfer-Encoding", "chunked")]),
        _upgrade("/", [("X-" + "n" * 80, "long name")]),
    ]
    for data in others:
        assert parse(data, 16384, 100) is None, data
    assert parse(good, len(good) - 1, 100) is None  # over max_size
    assert parse(good, 16384, 7) is None  # 8 fields > max_fields
    assert parse(good, 16384, 8) is not None


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_upgrade_head_reader_never_fails_on_garbage(data: bytes) -> None:
    _require_accelerator()
    from wshub import _speedups  # type: ignore[attr-defined]

    for blob in (data, b"GET / HTTP/1.1\r\n" + data, _upgrade()[:-2] + data + b"\r\n\r\n"):
        result = _speedups.parse_upgrade_head(blob, 16384, 100)
        assert result is None or (isinstance(result, tuple) and 0 < result[2] <= len(blob))


# ------------------------------------------------ the handshake's digests


def _cpu_has_sha_ni() -> bool | None:
    """Whether the CPU has the SHA extensions (Linux's flags); None where
    the flags cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return " sha_ni" in f.read()
    except OSError:
        return None


@pytest.fixture(params=["cpu", "portable"])
def sha_blocks(request: pytest.FixtureRequest) -> Iterator[str]:
    """The digests' block functions under test: the CPU's SHA instructions
    where it has them ("cpu"), or the portable C loops ("portable")."""
    _require_accelerator()
    from wshub import _speedups  # type: ignore[attr-defined]

    on = _speedups.set_sha_ni(request.param == "cpu")
    if request.param == "cpu":
        # Where the CPU has them, they are what runs (and what is tested).
        has = _cpu_has_sha_ni()
        assert on == has if has is not None else isinstance(on, bool)
    else:
        assert on is False
    try:
        yield request.param
    finally:
        _speedups.set_sha_ni(True)


def test_accept_key_twins_agree(sha_blocks: str) -> None:
    from wshub import _speedups  # type: ignore[attr-defined]
    from wshub.protocol import handshake

    assert handshake.accept_key_bytes is _speedups.accept_key  # what the server uses
    # RFC 6455 section 1.3's example, then keys of every length around the
    # SHA-1 block boundaries (key + GUID: 55/56 and 119/120 bytes).
    sample = "dGhlIHNhbXBsZSBub25jZQ=="
    assert _speedups.accept_key(sample) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert handshake._accept_key_py(sample) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    for n in range(0, 200):
        key = base64.b64encode(os.urandom(n)).decode()[:n]
        assert _speedups.accept_key(key) == handshake._accept_key_py(key), n
    for bad in ("ключ", "\udc80"):
        with pytest.raises(UnicodeEncodeError):
            _speedups.accept_key(bad)
        with pytest.raises(UnicodeEncodeError):
            handshake._accept_key_py(bad)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.binary(max_size=64), message=st.binary(max_size=300))
def test_hmac_twins_agree_with_hmac_sha256(sha_blocks: str, key: bytes, message: bytes) -> None:
    from wshub import (
        _speedups,  # type: ignore[attr-defined]
        policy,
    )

    block = key.ljust(64, b"\0")
    want = base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")).rstrip(b"=").decode()
    states = _speedups.hmac_sha256_states(block)
    assert _speedups.hmac_sha256_b64url(states, message) == want
    assert policy._hmac_b64url_py(policy._hmac_states_py(block), message) == want


def test_session_cookies_alike_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cookie signed on one path is valid on the other: the same value.
    _require_accelerator()
    from wshub import policy

    fast = policy.SessionSigner(b"secret")
    assert policy._hmac_b64url is not policy._hmac_b64url_py
    with monkeypatch.context() as m:
        m.setattr(policy, "_hmac_states", policy._hmac_states_py)
        m.setattr(policy, "_hmac_b64url", policy._hmac_b64url_py)
        pure = policy.SessionSigner(b"secret")
        value = pure.sign("0f8fad5b-d9cb-469f-a165-70867728950e", 4102444800.0)
    assert fast.sign("0f8fad5b-d9cb-469f-a165-70867728950e", 4102444800.0) == value
    assert fast.verify(value, 4102444000.0) == "0f8fad5b-d9cb-469f-a165-70867728950e"
