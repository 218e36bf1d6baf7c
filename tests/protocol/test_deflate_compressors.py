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
