"""RFC 7692 permessage-deflate: negotiation and the per-connection codec.

Sans-I/O like the rest of :mod:`wshub.protocol`: :func:`negotiate_extensions`
turns a client's ``Sec-WebSocket-Extensions`` offer into the server's answer
and a :class:`PerMessageDeflate` codec, which the
:class:`~wshub.protocol.connection.Connection` calls for every message.

Memory is the point of most choices here (see ``docs/compression.md``):

* zlib objects are created lazily, on the first message that needs them, so
  an idle connection costs a few hundred bytes, not a zlib window;
* without context takeover the decompressor is dropped after every
  message, so only a connection that is busy right now holds one, and no
  connection holds a compressor: one per parameter set (and thread)
  serves them all, reset by a full flush after each message;
* inflating never produces more than the message's remaining ``max_payload``
  (``decompress(..., max_length)``), so a compression bomb is refused having
  allocated about ``max_payload`` at most.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .connection import MessageCodec, MessageTooBig
from .frames import MessageDecoder

__all__ = ["DeflateOptions", "PerMessageDeflate", "negotiate_extensions", "parse_extensions"]

EXTENSION_NAME = "permessage-deflate"

# RFC 7692 §7.2.1: a sync flush ends with an empty stored block, whose last
# four octets are stripped by the sender and put back by the receiver.
_TAIL = b"\x00\x00\xff\xff"
# What may follow a final deflate block, the tail included (§7.2.3.3).
_AFTER_FINAL = (_TAIL, b"\x00" + _TAIL)

# RFC 7230 §3.2.6 token; RFC 7692 §7.1.2: window bits are 8..15, no leading zero.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_WINDOW_BITS = re.compile(r"(?:8|9|1[0-5])\Z")

_Z_FULL_FLUSH = 3  # zlib.Z_FULL_FLUSH; the same in isal_zlib

_NO_VALUE_PARAMS = frozenset(("server_no_context_takeover", "client_no_context_takeover"))


@dataclass(frozen=True)
class DeflateOptions:
    """Tuning of permessage-deflate (RFC 7692) on the server side.

    ``level``
        zlib compression level, 0 (store) .. 9 (smallest), or -1 for zlib's
        default (6).
    ``mem_level``
        zlib memory level 1..9: memory for the compressor's hash table
        (``2 ** (mem_level + 9)`` bytes); lower costs a little ratio.
    ``max_window_bits``
        8..15: the largest LZ77 window (``2 ** bits`` bytes) the server
        compresses with, and asks the client to compress with when the
        client allows it (``client_max_window_bits`` in its offer).  The
        compressor costs about ``2 ** (bits + 2)`` bytes, the decompressor
        ``2 ** bits``.  8 is run as 9, as zlib requires (a 9-bit zlib
        window never emits a distance over 250, so the stream is valid for
        an 8-bit one).
    ``no_context_takeover``
        True: every message is compressed on its own (answer with
        ``server_no_context_takeover`` and ``client_no_context_takeover``):
        worse ratio on streams of small similar messages, but no zlib memory
        is kept between messages and :meth:`WebSocket.broadcast` compresses
        a message once for all such connections.
    ``min_size``
        messages shorter than this many bytes are sent uncompressed.
    ``compressor``
        what compresses outgoing messages: ``"zlib"`` (the standard
        library), ``"isal"`` (Intel's ISA-L through the ``isal`` package:
        about 30 % less CPU for the same or a better ratio on typical JSON;
        ``level`` 1-3 maps to ISA-L level 1, 4-6 and -1 to 2, 7-9 to 3; level
        0 always stores with zlib; ``mem_level`` does not apply) or
        ``"auto"``: ISA-L when the package is installed (``pip install
        wshub[speed]``) and ``WSHUB_NO_EXTENSIONS`` is not set, else zlib.
        With ISA-L, incoming messages without client context takeover are
        inflated by ISA-L too; the others always by zlib (less memory).

    The defaults were chosen by measurement (``docs/compression.md``).
    """

    level: int = 1
    mem_level: int = 5
    max_window_bits: int = 12
    no_context_takeover: bool = False
    min_size: int = 64
    compressor: str = "auto"

    def __post_init__(self) -> None:
        _check_int("level", self.level, -1, 9)
        _check_int("mem_level", self.mem_level, 1, 9)
        _check_int("max_window_bits", self.max_window_bits, 8, 15)
        _check_int("min_size", self.min_size, 0, None)
        if not isinstance(self.no_context_takeover, bool):
            raise TypeError("no_context_takeover must be a bool")
        if self.compressor not in ("auto", "zlib", "isal"):
            raise ValueError(
                "DeflateOptions.compressor must be 'auto', 'zlib' or 'isal', "
                f"not {self.compressor!r}"
            )
        if self.compressor == "isal" and _isal_zlib() is None:
            raise ValueError(
                "DeflateOptions.compressor='isal' needs the isal package (pip install isal)"
            )


@functools.cache
def _isal_zlib() -> Any:
    """The ``isal.isal_zlib`` module, or None where it is not installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


def resolve_compressor(name: str) -> str:
    """``"zlib"`` or ``"isal"``: what a ``DeflateOptions.compressor`` means here."""
    if name == "auto":
        if os.environ.get("WSHUB_NO_EXTENSIONS") or _isal_zlib() is None:
            return "zlib"
        return "isal"
    return name


def _isal_level(level: int) -> int:
    if level < 0:
        return 2
    return 1 if level <= 3 else 2 if level <= 6 else 3


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"DeflateOptions.{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"DeflateOptions.{name} must be {bound}, not {value}")


# A cache (module state by design): pristine zlib objects per parameter
# set, copied for each new stream:
# copying one is much cheaper than initialising a new one (4 KiB messages at
# level 1 without context takeover: 13 us instead of 23 us to compress),
# and without context takeover that happens for every message.
_deflater_templates: dict[tuple[int, int, int], zlib._Compress] = {}
_inflater_templates: dict[int, zlib._Decompress] = {}


def _fresh_deflater(level: int, window_bits: int, mem_level: int, compressor: str) -> Any:
    """A compressor whose distances fit a ``2 ** window_bits`` window (8..15)."""
    if compressor == "isal" and level != 0 and window_bits >= 9:
        # ISA-L has no copy(); setting one up is cheap.  It uses its whole
        # window, so a negotiated 8 (256 bytes) is left to zlib, whose
        # 9-bit window never reaches further than 250 bytes.
        isal_zlib = _isal_zlib()
        return isal_zlib.compressobj(_isal_level(level), isal_zlib.DEFLATED, -window_bits)
    window_bits = max(9, window_bits)  # zlib runs 8 as 9
    key = (level, window_bits, mem_level)
    template = _deflater_templates.get(key)
    if template is None:
        template = _deflater_templates[key] = zlib.compressobj(
            level, zlib.DEFLATED, -window_bits, mem_level
        )
    return template.copy()


class _SharedDeflaters(threading.local):
    """A cache (module state by design): one compressor per parameter set
    and per thread for every connection without server context takeover.

    Each message is compressed with a full flush (``Z_FULL_FLUSH``, 3 in
    zlib and isal_zlib alike): the output ends like a sync flush's
    (``00 00 ff ff``) and the compressor forgets its history, so the next
    message depends on nothing before it (RFC 7692 §7.1.1.1), whichever
    connection it is for.  Setting up a compressor for each message cost
    more than the full flush (ISA-L allocates and initialises its level
    buffer, about 360 KiB, each time).  Per thread because a message is
    two calls (``compress``, ``flush``) that must not interleave with
    another thread's.
    """

    def __init__(self) -> None:
        # By the codecs' shared_frame_key (their compression parameters).
        self.by_key: dict[Hashable, Any] = {}


_shared_deflaters = _SharedDeflaters()


def _compress_alone(data: bytes, codec: PerMessageDeflate) -> bytes:
    """``data`` compressed on its own, ending in ``00 00 ff ff`` (a codec
    without server context takeover)."""
    by_key = _shared_deflaters.by_key
    key = codec.shared_frame_key
    deflater = by_key.get(key)
    if deflater is None:
        deflater = by_key[key] = _fresh_deflater(
            codec.level, codec.server_window_bits, codec.mem_level, codec.compressor
        )
    try:
        out: bytes = deflater.compress(data) + deflater.flush(_Z_FULL_FLUSH)
    except BaseException:
        del by_key[key]  # half-fed: never used again
        raise
    return out


@functools.cache
def _inflate_errors() -> tuple[type[Exception], ...]:
    """What a corrupt stream raises: zlib's error, and ISA-L's where installed."""
    isal_zlib = _isal_zlib()
    return (zlib.error,) if isal_zlib is None else (zlib.error, isal_zlib.error)


def _fresh_inflater(window_bits: int) -> zlib._Decompress:
    template = _inflater_templates.get(window_bits)
    if template is None:
        template = _inflater_templates[window_bits] = zlib.decompressobj(-window_bits)
    return template.copy()


class PerMessageDeflate:
    """The negotiated permessage-deflate codec of one connection (server side).

    Implements :class:`~wshub.protocol.connection.MessageCodec`.
    ``server_*`` parameters govern what we send, ``client_*`` what we receive.
    """

    __slots__ = (
        "_deflater",
        "_inflater",
        "_trailer",
        "client_no_context_takeover",
        "client_window_bits",
        "compressor",
        "level",
        "mem_level",
        "min_size",
        "server_no_context_takeover",
        "server_window_bits",
        "shared_frame_key",
    )

    def __init__(
        self,
        *,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_window_bits: int,
        client_window_bits: int,
        level: int,
        mem_level: int,
        min_size: int,
        compressor: str = "zlib",
    ) -> None:
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_window_bits = server_window_bits
        self.client_window_bits = client_window_bits
        self.level = level
        self.mem_level = mem_level
        self.min_size = min_size
        self.compressor = compressor
        # Created on first use, dropped when no history is to be kept.
        self._deflater: Any = None
        self._inflater: Any = None  # a zlib (or isal_zlib) Decompress
        self._trailer = b""  # bytes after a final deflate block (see _after_final)
        # Without server context takeover a compressed message depends on
        # nothing but these settings, so one frame serves every connection
        # with the same ones (WebSocket.broadcast); otherwise each
        # connection's compressor has its own history and must not share.
        self.shared_frame_key: tuple[object, ...] | None = (
            ("permessage-deflate", server_window_bits, level, mem_level, min_size, compressor)
            if server_no_context_takeover
            else None
        )

    # --------------------------------------------------------------- receiving

    def _new_inflater(self) -> Any:
        """A decompressor for the next message (a zlib or isal_zlib Decompress)."""
        if self.client_no_context_takeover and self.compressor == "isal":
            # ISA-L inflates JSON-like 4 KiB messages in ~30 % less time
            # than zlib but holds twice the memory (~85 KiB): only where
            # the inflater lives no longer than a message.  Its window
            # is 15 bits, whatever was negotiated, so that it accepts
            # exactly what zlib does (zlib checks a distance against
            # the output so far, not against the window size).
            return _isal_zlib().decompressobj(-15)
        # zlib accepts 8 for inflate, but a larger window is always safe.
        return _fresh_inflater(max(9, self.client_window_bits))

    @property
    def message_decoder(self) -> MessageDecoder | None:
        """Without client context takeover, :meth:`decode_alone` and the
        tail it expects after a payload (see ``MessageCodec``); else None."""
        return (self.decode_alone, _TAIL) if self.client_no_context_takeover else None

    def decode_alone(self, data: bytes, max_size: int) -> bytes | None:
        """Inflate one whole message, its payload followed by ``00 00 ff
        ff`` (RFC 7692 §7.2.2), on its own (no client context takeover);
        None where :meth:`decode` would raise (then nothing was kept).

        The same steps as :meth:`decode` on a whole message, in one call,
        for the C frame scanner (``message_decoder``).
        """
        inflater = self._new_inflater()
        try:
            out: bytes = inflater.decompress(data, max_size + 1 if max_size >= 0 else 0)
        except _inflate_errors():
            return None
        if max_size >= 0 and len(out) > max_size:
            return None
        if inflater.eof and inflater.unused_data not in _AFTER_FINAL:
            return None
        return out

    def decode(self, data: bytes, end_of_message: bool, max_size: int) -> bytes:
        """Inflate one chunk of a compressed message (see ``MessageCodec``)."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = self._new_inflater()
        if end_of_message:
            # RFC 7692 §7.2.2: put back the tail the sender stripped.
            data = data + _TAIL if data else _TAIL
        if inflater.eof:
            # The message had a final (BFINAL) block already.
            self._after_final(data, end_of_message)
            out = b""
        else:
            try:
                # max_length bounds what zlib may allocate: one byte past the
                # limit is enough to know the message is too big.
                out = inflater.decompress(data, max_size + 1 if max_size >= 0 else 0)
            except _inflate_errors() as exc:
                self._inflater = None
                raise ValueError(str(exc)) from None
            if max_size >= 0 and len(out) > max_size:
                self._inflater = None
                raise MessageTooBig(f"message inflates past {max_size} more bytes")
            if inflater.eof:
                self._after_final(inflater.unused_data, end_of_message)
        if end_of_message and (self.client_no_context_takeover or inflater.eof):
            # No history to keep (or the stream ended): free the window now.
            self._inflater = None
        return out

    def _after_final(self, data: bytes, end_of_message: bool) -> None:
        """Check what follows a final (BFINAL=1) deflate block.

        RFC 7692 §7.2.3.3: a sender that flushes with a final block appends
        an empty stored block and strips its last four octets, so one octet
        0x00 (BFINAL=0, BTYPE=00, zero padding) is left before the tail the
        receiver adds; a sender may also leave nothing.  Anything else is a
        corrupt message.
        """
        trailer = self._trailer + data
        if end_of_message:
            self._trailer = b""
            ok = trailer in _AFTER_FINAL
        else:
            self._trailer = trailer
            ok = trailer in (b"", b"\x00")
        if not ok:
            self._trailer = b""
            self._inflater = None
            raise ValueError("data after the final deflate block")

    # ----------------------------------------------------------------- sending

    def encode(self, data: bytes) -> bytes | None:
        """Compress one whole message, or None to send it as it is."""
        if len(data) < self.min_size:
            # Never fed to the compressor, so the peer's history and ours agree.
            return None
        if self.server_no_context_takeover:
            alone = _compress_alone(data, self)
            if alone.endswith(_TAIL) and len(alone) - 4 < len(data):
                # RFC 7692 §7.2.1: remove the 00 00 ff ff the flush ends with.
                return alone[:-4]
            # Nothing to gain: allowed since no history is shared (§6).
            return None
        deflater = self._deflater
        if deflater is None:
            deflater = self._deflater = _fresh_deflater(
                self.level, self.server_window_bits, self.mem_level, self.compressor
            )
        # Z_SYNC_FLUSH is 2 in zlib and isal_zlib alike.
        out: bytes = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        # RFC 7692 §7.2.1: remove the 00 00 ff ff the sync flush ends with.
        return out[:-4] if out.endswith(_TAIL) else out

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(server: {self.server_window_bits} bits"
            f"{', no takeover' if self.server_no_context_takeover else ''}; "
            f"client: {self.client_window_bits} bits"
            f"{', no takeover' if self.client_no_context_takeover else ''}; "
            f"level {self.level}, mem_level {self.mem_level}, min_size {self.min_size}, "
            f"{self.compressor})"
        )


def _format_response(
    codec: PerMessageDeflate, server_bits: int | None, client_bits: int | None
) -> str:
    parts = [EXTENSION_NAME]
    if codec.server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if codec.client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_bits is not None:
        parts.append(f"server_max_window_bits={server_bits}")
    if client_bits is not None:
        parts.append(f"client_max_window_bits={client_bits}")
    return "; ".join(parts)


# ------------------------------------------------------------------ negotiation


def parse_extensions(header: str) -> list[tuple[str, list[tuple[str, str | None]]] | None]:
    """Split a ``Sec-WebSocket-Extensions`` value into offers (RFC 6455 §9.1).

    Each offer is ``(name, [(param, value or None), ...])``, or None where
    the element is malformed (so that one bad element never hides the good
    ones next to it).  Quoted values are unquoted; a value must be a token.
    """
    offers: list[tuple[str, list[tuple[str, str | None]]] | None] = []
    for element in header.split(","):
        element = element.strip()
        if not element:
            continue  # RFC 7230 §7: empty list elements are allowed
        pieces = [p.strip() for p in element.split(";")]
        name = pieces[0]
        if not _TOKEN.match(name):
            offers.append(None)
            continue
        params: list[tuple[str, str | None]] = []
        ok = True
        for piece in pieces[1:]:
            key, eq, value = piece.partition("=")
            key = key.strip()
            if not _TOKEN.match(key):
                ok = False
                break
            if not eq:
                params.append((key, None))
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            if not _TOKEN.match(value):
                ok = False
                break
            params.append((key, value))
        offers.append((name.lower(), params) if ok else None)
    return offers


def _accept_offer(
    params: list[tuple[str, str | None]], options: DeflateOptions
) -> tuple[str, PerMessageDeflate] | None:
    """Our answer to one permessage-deflate offer, or None to decline it."""
    seen: dict[str, str | None] = {}
    for key, value in params:
        key = key.lower()
        if key in seen:
            return None  # RFC 7692 §7: a duplicate parameter makes the offer invalid
        if key in _NO_VALUE_PARAMS:
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value is None or not _WINDOW_BITS.match(value):
                return None
        elif key == "client_max_window_bits":
            if value is not None and not _WINDOW_BITS.match(value):
                return None
        else:
            return None  # RFC 7692 §7: unknown parameter → decline this offer
        seen[key] = value

    limit = options.max_window_bits
    # §7.1.1.1: we may always choose not to keep our context.
    server_nct = options.no_context_takeover or "server_no_context_takeover" in seen
    # §7.1.1.2: the client's hint is acknowledged; we may also demand it.
    client_nct = options.no_context_takeover or "client_no_context_takeover" in seen

    # §7.1.2.1: at most what the client offered; we may add the parameter
    # even when it was not offered.
    server_bits: int | None = None
    offered_server = seen.get("server_max_window_bits")
    server_window = limit
    if offered_server is not None:
        server_window = min(int(offered_server), limit)
        server_bits = server_window
    elif limit < 15:
        server_bits = limit

    # §7.1.2.2: only when offered; without it the client may use 15 bits.
    client_bits: int | None = None
    client_window = 15
    if "client_max_window_bits" in seen:
        offered_client = seen["client_max_window_bits"]
        client_window = min(int(offered_client), limit) if offered_client else limit
        if client_window < 15 or offered_client is not None:
            client_bits = client_window

    codec = PerMessageDeflate(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_window_bits=server_window,
        client_window_bits=client_window,
        level=options.level,
        mem_level=options.mem_level,
        min_size=options.min_size,
        compressor=resolve_compressor(options.compressor),
    )
    return _format_response(codec, server_bits, client_bits), codec


def negotiate_extensions(
    offer: str, options: bool | DeflateOptions
) -> tuple[str, MessageCodec] | None:
    """The ``Sec-WebSocket-Extensions`` answer and codec, or None to decline.

    ``offer`` is the client's header value; several offers are tried in the
    client's order of preference and the first one we can honour wins
    (RFC 7692 §5).  Offers of other extensions, and permessage-deflate offers
    with unknown, duplicate or invalid parameters, are skipped: the
    connection then opens without compression rather than failing.
    """
    if options is False:
        return None
    opts = options if isinstance(options, DeflateOptions) else _DEFAULT_OPTIONS
    for parsed in parse_extensions(offer):
        if parsed is None or parsed[0] != EXTENSION_NAME:
            continue
        accepted = _accept_offer(parsed[1], opts)
        if accepted is not None:
            return accepted
    return None


_DEFAULT_OPTIONS = DeflateOptions()
