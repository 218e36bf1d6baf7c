"""permessage-deflate's two compressors: zlib and ISA-L (``DeflateOptions.compressor``).

Whatever compresses, the peer must be able to inflate every message with the
window it was promised (``server_max_window_bits``): checked here by zlib
inflating in small output steps, so that every back-reference has to come
from a window of exactly that size, and by the ``websockets`` library's
decoder (``test_deflate.py::test_sent_messages_decode_with_websockets``
runs for both compressors).
"""

from __future__ import annotations

import os
import random
import zlib

import pytest

from tests.protocol.test_deflate import SAMPLE, negotiate
from wshub import DeflateOptions
from wshub.protocol import deflate

TAIL = b"\x00\x00\xff\xff"


def require_isal() -> None:
    if deflate._isal_zlib() is None:
        pytest.fail("the isal package is not installed: it is part of the dev extras (make venv)")


def strict_inflate(inflater: zlib._Decompress, data: bytes, step: int = 64) -> bytes:
    """Inflate ``step`` bytes at a time: a distance past the inflater's
    window then fails ("invalid distance too far back") instead of being
    served from the output buffer."""
    out = []
    while True:
        chunk = inflater.decompress(data, step)
        out.append(chunk)
        data = inflater.unconsumed_tail
        if not data and not chunk:
            return b"".join(out)


def test_strict_inflate_catches_a_distance_past_the_window() -> None:
    data = os.urandom(3000) * 4
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    far = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(zlib.error, match="too far back"):
        strict_inflate(zlib.decompressobj(-9), far)


def messages(bits: int, seed: int) -> list[bytes]:
    """Compressible data with repeats at every distance up to twice the window."""
    rnd = random.Random(seed)
    base = rnd.randbytes(2 << bits)
    out = []
    for _ in range(4):
        parts = []
        for _ in range(60):
            k = rnd.randrange(len(base))
            parts.append(base[k : k + rnd.randint(3, 400)])
            if rnd.random() < 0.2:
                parts.append(SAMPLE[: rnd.randint(10, 500)])
        out.append(b"".join(parts))
    return out


@pytest.mark.parametrize("compressor", ["zlib", "isal"])
@pytest.mark.parametrize("bits", range(8, 16))
@pytest.mark.parametrize("takeover", [True, False], ids=["takeover", "no-takeover"])
def test_output_fits_the_promised_window(compressor: str, bits: int, takeover: bool) -> None:
    if compressor == "isal":
        require_isal()
    offer = f"permessage-deflate; server_max_window_bits={bits}"
    if not takeover:
        offer += "; server_no_context_takeover"
    for level in (1, 6, 9):
        options = DeflateOptions(max_window_bits=15, level=level, compressor=compressor)
        _, codec = negotiate(offer, options)
        assert codec.server_window_bits == bits
        inflater = zlib.decompressobj(-bits)
        for i, data in enumerate(messages(bits, seed=bits * 10 + level)):
            payload = codec.encode(data)
            assert payload is not None
            if not takeover:
                inflater = zlib.decompressobj(-bits)
            assert strict_inflate(inflater, payload + TAIL) == data, (level, i)


def test_isal_compresses_json_at_least_as_well_as_zlib_level_1() -> None:
    require_isal()
    sizes = {}
    for compressor in ("zlib", "isal"):
        _, codec = negotiate(
            "permessage-deflate; server_no_context_takeover", DeflateOptions(compressor=compressor)
        )
        payload = codec.encode(SAMPLE)
        assert payload is not None
        sizes[compressor] = len(payload)
    assert sizes["isal"] <= sizes["zlib"], sizes


def test_level_0_stores_with_zlib_whatever_the_compressor() -> None:
    require_isal()
    _, codec = negotiate("permessage-deflate", DeflateOptions(level=0, compressor="isal"))
    payload = codec.encode(SAMPLE)
    assert payload is not None
    assert len(payload) > len(SAMPLE)  # stored, not compressed
    assert isinstance(codec._deflater, type(zlib.compressobj()))


def test_auto_means_isal_when_installed_and_zlib_on_the_pure_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_isal()
    monkeypatch.delenv("WSHUB_NO_EXTENSIONS", raising=False)
    assert deflate.resolve_compressor("auto") == "isal"
    _, codec = negotiate("permessage-deflate")
    assert codec.compressor == "isal"
    monkeypatch.setenv("WSHUB_NO_EXTENSIONS", "1")
    assert deflate.resolve_compressor("auto") == "zlib"
    assert deflate.resolve_compressor("isal") == "isal"
    assert deflate.resolve_compressor("zlib") == "zlib"


def test_compressor_option_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="compressor"):
        DeflateOptions(compressor="brotli")
    monkeypatch.setattr(deflate, "_isal_zlib", lambda: None)
    with pytest.raises(ValueError, match="pip install isal"):
        DeflateOptions(compressor="isal")
    DeflateOptions(compressor="auto")  # falls back to zlib quietly
    assert deflate.resolve_compressor("auto") == "zlib"


def test_broadcast_key_tells_compressors_apart() -> None:
    require_isal()
    offer = "permessage-deflate; server_no_context_takeover"
    _, a = negotiate(offer, DeflateOptions(compressor="zlib"))
    _, b = negotiate(offer, DeflateOptions(compressor="isal"))
    assert a.shared_frame_key != b.shared_frame_key


@pytest.mark.parametrize("compressor", ["zlib", "isal"])
def test_without_server_takeover_one_compressor_serves_every_codec(compressor: str) -> None:
    if compressor == "isal":
        require_isal()
    offer = "permessage-deflate; server_no_context_takeover"
    options = DeflateOptions(compressor=compressor)
    codecs = [negotiate(offer, options)[1] for _ in range(3)]
    data = messages(12, seed=5)
    first = [codecs[0].encode(m) for m in data]
    for round_ in range(2):
        for i, m in enumerate(data):
            for codec in codecs:
                payload = codec.encode(m)
                # Nothing of the messages before, whichever codec sent them:
                # the same bytes each time, and each inflates on its own.
                assert payload == first[i], (round_, i)
                assert payload is not None
                assert strict_inflate(zlib.decompressobj(-12), payload + TAIL) == m
    # No connection holds a compressor (the shared one is per parameter set).
    assert all(codec._deflater is None for codec in codecs)


@pytest.mark.parametrize("compressor", ["zlib", "isal"])
@pytest.mark.parametrize("takeover", [True, False], ids=["takeover", "no-takeover"])
def test_what_inflates_and_its_checks(compressor: str, takeover: bool) -> None:
    """ISA-L inflates messages without client context takeover (its
    inflater lives one message); with takeover zlib keeps the history (half
    the memory).  The checks are the same either way."""
    from tests.protocol.test_deflate import (
        BINARY,
        CONT,
        TEXT,
        ClientCompressor,
        client_frame,
        feed,
        protocol_error,
    )
    from wshub.protocol.connection import Connection

    if compressor == "isal":
        require_isal()
    offer = "permessage-deflate" + ("" if takeover else "; client_no_context_takeover")
    options = DeflateOptions(max_window_bits=15, compressor=compressor)

    def connection(max_payload: int = 1 << 20) -> Connection:
        return Connection(max_payload=max_payload, codec=negotiate(offer, options)[1])

    client = ClientCompressor(context_takeover=takeover)
    conn = connection()
    for data in messages(15, seed=9):
        payload = client.compress(data)
        wire = client_frame(BINARY, payload[:50], fin=False, rsv1=True)
        wire += client_frame(CONT, payload[50:])
        assert feed(conn, wire[:60]) == []  # in the middle of the message
        codec = conn.codec
        assert isinstance(codec, deflate.PerMessageDeflate)
        library = type(codec._inflater).__module__
        isal_expected = compressor == "isal" and not takeover
        assert library == ("isal_zlib" if isal_expected else "zlib")
        assert feed(conn, wire[60:], 7) == [data]
    # A corrupt stream is 1007, a message past max_payload once inflated 1009.
    bad = connection()
    assert protocol_error(feed(bad, client_frame(BINARY, b"\xff\xff\xff\xff", rsv1=True))).code == (
        1007
    )
    bomb = ClientCompressor().compress(bytes(1 << 20))
    small = connection(max_payload=64 * 1024)
    assert protocol_error(feed(small, client_frame(BINARY, bomb, rsv1=True))).code == 1009
    # RFC 7692 §7.2.3.3: a final block, then the octet an empty stored block leaves.
    hello = bytes([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00])
    final = connection()
    assert feed(final, client_frame(TEXT, hello, rsv1=True), 1) == ["Hello"]
    assert feed(final, client_frame(TEXT, ClientCompressor().compress(b"next"), rsv1=True)) == [
        "next"
    ]
