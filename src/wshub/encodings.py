"""The Node encodings of ``@jadsonlucena/websocket``: how a Python ``str`` maps to payload bytes.

``utf8`` and ``ascii`` make text frames; ``base64``, ``hex``, ``binary``
(= ``latin1``), ``utf16le`` and ``ucs2`` describe arbitrary bytes and so make
binary frames (a text frame must be valid UTF-8, RFC 6455 §5.6).

Conversions never fail: a character or byte an encoding cannot represent is
converted the way Node's ``Buffer.from(string, encoding)`` (sending) and
``buffer.toString(encoding)`` (receiving) convert it, so that code written
for the Node library sees the same strings and bytes.  A JavaScript string
is a sequence of UTF-16 code units; where Node works on code units (the
one-byte encodings keep the low byte of each), a Python character outside
the BMP counts as its two surrogates.  The table is in ``docs/api.md``
(Encodings), and every row is tested against ``node`` itself.
"""

from __future__ import annotations

import binascii
import re
from typing import Literal

__all__ = ["ENCODINGS", "Encoding", "check_encoding", "decode_text", "encode_str"]

Encoding = Literal["utf8", "ascii", "base64", "hex", "binary", "latin1", "utf16le", "ucs2"]
ENCODINGS: tuple[str, ...] = (
    "utf8",
    "ascii",
    "base64",
    "hex",
    "binary",
    "latin1",
    "utf16le",
    "ucs2",
)

# Constant tables (not caches): what Node's decoders do byte by byte.
# Node's "ascii" decoder clears the high bit of every byte.
_LOW_SEVEN_BITS = bytes(b & 0x7F for b in range(256))
# Base64: the URL-safe symbols read as the standard ones, and every byte
# that is neither a symbol nor "=" skipped.
_BASE64_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_BASE64_KEPT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="
_BASE64_SKIPPED = bytes(b for b in range(256) if b not in _BASE64_KEPT)
_HEX_PAIRS = re.compile(rb"(?:[0-9A-Fa-f]{2})*")


def check_encoding(encoding: object) -> Encoding:
    """Return ``encoding`` if it is one we know; raise otherwise."""
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be a str, not {type(encoding).__name__}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return encoding  # type: ignore[return-value]


def _code_units(data: str) -> bytes:
    """``data`` as JavaScript holds it: UTF-16 code units, little-endian
    (a lone surrogate is kept as it is)."""
    return data.encode("utf-16-le", "surrogatepass")


def _low_bytes(data: str) -> bytes:
    """The low byte of each UTF-16 code unit: Node's ``latin1`` / ``ascii`` writer."""
    try:
        return data.encode("latin-1")
    except UnicodeEncodeError:
        return _code_units(data)[::2]


def _lenient_base64(raw: bytes) -> bytes:
    """Node's base64 reader: both alphabets, other bytes skipped, the first
    ``=`` ends the data, a last lone symbol makes no byte."""
    symbols = raw.translate(_BASE64_URL_TO_STD, _BASE64_SKIPPED).partition(b"=")[0]
    if len(symbols) % 4 == 1:
        symbols = symbols[:-1]
    return binascii.a2b_base64(symbols + b"=" * (-len(symbols) % 4))


def encode_str(data: str, encoding: str) -> tuple[bytes, bool]:
    """``(payload, is_text)`` for sending ``data`` with ``encoding``, as Node's
    ``Buffer.from(data, encoding)`` makes it.

    Never fails for a known encoding: ``utf8`` turns a lone surrogate into
    U+FFFD, the one-byte encodings keep the low byte of each UTF-16 code
    unit, ``base64`` and ``hex`` read what they can and skip or stop at the
    rest.  ``ascii`` makes a text frame when the bytes are ASCII, and a
    binary frame otherwise (a text frame must be UTF-8).
    """
    if encoding == "utf8":
        try:
            return data.encode("utf-8"), True
        except UnicodeEncodeError:  # lone surrogates: U+FFFD each, as Node writes them
            return _code_units(data).decode("utf-16-le", "replace").encode("utf-8"), True
    if encoding == "ascii":
        raw = _low_bytes(data)
        return raw, raw.isascii()
    if encoding == "binary" or encoding == "latin1":
        return _low_bytes(data), False
    if encoding == "utf16le" or encoding == "ucs2":
        return _code_units(data), False
    if encoding == "base64":
        return _lenient_base64(_low_bytes(data)), False
    if encoding == "hex":
        raw = _low_bytes(data)
        match = _HEX_PAIRS.match(raw)
        assert match is not None  # the pattern matches the empty string
        return bytes.fromhex(raw[: match.end()].decode("ascii")), False
    check_encoding(encoding)
    raise AssertionError("unreachable")  # pragma: no cover


def decode_text(text: str, encoding: str) -> str:
    """The ``str`` an application sees for a received text message, as Node's
    ``buffer.toString(encoding)`` shows the payload.

    ``text`` is the message already decoded as UTF-8 (it was validated on the
    way in).  Never fails: ``ascii`` clears the high bit of each byte,
    ``binary``/``latin1`` maps each byte to one character, ``utf16le``
    drops an odd last byte and keeps a lone surrogate.
    """
    if encoding == "utf8" or (encoding == "ascii" and text.isascii()):
        return text
    raw = text.encode("utf-8")
    if encoding == "ascii":
        return raw.translate(_LOW_SEVEN_BITS).decode("ascii")
    if encoding == "base64":
        return binascii.b2a_base64(raw, newline=False).decode("ascii")
    if encoding == "hex":
        return raw.hex()
    if encoding == "binary" or encoding == "latin1":
        return raw.decode("latin-1")
    if encoding == "utf16le" or encoding == "ucs2":
        return raw[: len(raw) & ~1].decode("utf-16-le", "surrogatepass")
    check_encoding(encoding)
    raise AssertionError("unreachable")  # pragma: no cover
