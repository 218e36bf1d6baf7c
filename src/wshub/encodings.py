"""The Node encodings of ``@jadsonlucena/websocket``: how a Python ``str`` maps to payload bytes.

``utf8`` and ``ascii`` make text frames; ``base64``, ``hex``, ``binary``
(Latin-1), ``utf16le`` and ``ucs2`` describe arbitrary bytes and so make
binary frames (a text frame must be valid UTF-8, RFC 6455 §5.6).
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

__all__ = ["ENCODINGS", "Encoding", "check_encoding", "decode_text", "encode_str"]

Encoding = Literal["utf8", "ascii", "base64", "hex", "binary", "utf16le", "ucs2"]
ENCODINGS: tuple[str, ...] = ("utf8", "ascii", "base64", "hex", "binary", "utf16le", "ucs2")


def check_encoding(encoding: object) -> Encoding:
    """Return ``encoding`` if it is one we know; raise otherwise."""
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be a str, not {type(encoding).__name__}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return encoding  # type: ignore[return-value]


def encode_str(data: str, encoding: str) -> tuple[bytes, bool]:
    """``(payload, is_text)`` for sending ``data`` with ``encoding``.

    Raises ``ValueError`` when the string cannot be converted.
    """
    if encoding == "utf8":
        return data.encode("utf-8"), True
    try:
        if encoding == "ascii":
            return data.encode("ascii"), True
        if encoding == "base64":
            return base64.b64decode(data.encode("ascii"), validate=True), False
        if encoding == "hex":
            return bytes.fromhex(data), False
        if encoding == "binary":
            return data.encode("latin-1"), False
        if encoding in ("utf16le", "ucs2"):
            return data.encode("utf-16-le"), False
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise ValueError(f"cannot encode the string as {encoding}: {exc}") from None
    check_encoding(encoding)
    raise AssertionError("unreachable")  # pragma: no cover


def decode_text(text: str, encoding: str) -> str:
    """The ``str`` an application sees for a received text message.

    ``text`` is the message already decoded as UTF-8 (it was validated on the
    way in).  Raises ``ValueError`` when it cannot be shown in ``encoding``
    (``ascii`` and a byte over 0x7F; ``utf16le`` and an odd length ...).
    """
    if encoding == "utf8":
        return text
    raw = text.encode("utf-8")
    if encoding == "ascii":
        return raw.decode("ascii")
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    if encoding == "hex":
        return raw.hex()
    if encoding == "binary":
        return raw.decode("latin-1")
    if encoding in ("utf16le", "ucs2"):
        return raw.decode("utf-16-le")
    check_encoding(encoding)
    raise AssertionError("unreachable")  # pragma: no cover
