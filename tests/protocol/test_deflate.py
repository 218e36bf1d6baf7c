"""permessage-deflate (RFC 7692): negotiation, the codec, and the Connection using it.

The peer side is played by stdlib zlib (a client compressor written here from
the RFC) and by the ``websockets`` library's own permessage-deflate
implementation, so a misunderstanding shared by our encoder and decoder
cannot pass unnoticed.
"""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate as PeerDeflate
from websockets.frames import Frame, Opcode

from wshub import DeflateOptions
from wshub.protocol import deflate
from wshub.protocol.connection import Connection, Event, Ping, ProtocolError
from wshub.protocol.deflate import PerMessageDeflate, negotiate_extensions, parse_extensions

TAIL = b"\x00\x00\xff\xff"
TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9
WIDE = DeflateOptions(max_window_bits=15, mem_level=8)


# ------------------------------------------------------------------ helpers


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    mask = b"\x9a\x21\x5c\x07"
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + mask_bytes(payload, mask)


def parse_server_frame(data: bytes) -> tuple[int, int, bytes]:
    """``(first byte, opcode, payload)`` of one whole unmasked server frame."""
    b0, b1 = data[0], data[1]
    assert not b1 & 0x80, "server frames are never masked"
    n, pos = b1 & 0x7F, 2
    if n == 126:
        (n,) = struct.unpack("!H", data[2:4])
        pos = 4
    elif n == 127:
        (n,) = struct.unpack("!Q", data[2:10])
        pos = 10
    assert len(data) == pos + n, "exactly one frame expected"
    return b0, b0 & 0x0F, data[pos:]


class ClientCompressor:
    """What a client does (RFC 7692 §7.2.1), from zlib directly."""

    def __init__(self, bits: int = 15, context_takeover: bool = True) -> None:
        self.bits = bits
        self.context_takeover = context_takeover
        self._c = zlib.compressobj(6, zlib.DEFLATED, -bits)

    def compress(self, data: bytes) -> bytes:
        if not self.context_takeover:
            self._c = zlib.compressobj(6, zlib.DEFLATED, -self.bits)
        out = self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]


def negotiate(offer: str, options: bool | DeflateOptions = True) -> tuple[str, PerMessageDeflate]:
    result = negotiate_extensions(offer, options)
    assert result is not None, f"offer {offer!r} was declined"
    header, codec = result
    assert isinstance(codec, PerMessageDeflate)
    return header, codec


def feed(conn: Connection, data: bytes, step: int = 0) -> list[Event]:
    if not step:
        return conn.receive_data(data)
    events: list[Event] = []
    for i in range(0, len(data), step):
        events += conn.receive_data(data[i : i + step])
    return events


SAMPLE = b"".join(
    b'{"user":"u%d","room":"lobby","text":"hello number %d, how are you today?"}' % (i, i * 7)
    for i in range(50)
)


# -------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; server_max_window_bits=11",
            "permessage-deflate; server_max_window_bits=11",
        ),
        (
            'permessage-deflate; server_max_window_bits="9"',
            "permessage-deflate; server_max_window_bits=9",
        ),
        (
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        (
            "PerMessage-Deflate ; Server_No_Context_Takeover ;client_no_context_takeover;"
            " server_max_window_bits=15 ; client_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
            " server_max_window_bits=15; client_max_window_bits=15",
        ),
    ],
)
def test_negotiation_with_full_window(offer: str, answer: str) -> None:
    header, _ = negotiate(offer, WIDE)
    assert header == answer


def test_default_options_shrink_both_windows_when_allowed() -> None:
    # Browsers offer client_max_window_bits without a value: we may choose.
    header, codec = negotiate("permessage-deflate; client_max_window_bits")
    assert header == ("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
    assert (codec.server_window_bits, codec.client_window_bits) == (12, 12)
    # Without client_max_window_bits the answer must not carry it (§7.1.2.2).
    header, codec = negotiate("permessage-deflate")
    assert header == "permessage-deflate; server_max_window_bits=12"
    assert codec.client_window_bits == 15
    # Never more than the client allows.
    header, codec = negotiate(
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"
    )
    assert header == "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"


def test_no_context_takeover_option_applies_both_ways() -> None:
    header, codec = negotiate(
        "permessage-deflate", DeflateOptions(no_context_takeover=True, max_window_bits=15)
    )
    assert header == ("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    assert codec.server_no_context_takeover and codec.client_no_context_takeover
    assert codec.shared_frame_key is not None
    _, codec = negotiate("permessage-deflate", WIDE)
    assert codec.shared_frame_key is None


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        # first acceptable offer wins, in the client's order
        (
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            "permessage-deflate; unknown_param, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        ("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate"),
        ("foo; a=1; b, permessage-deflate", "permessage-deflate"),
        ('permessage-deflate; x="a, b", permessage-deflate', "permessage-deflate"),
        (",, permessage-deflate ,", "permessage-deflate"),
    ],
)
def test_several_offers(offer: str, expected: str) -> None:
    header, _ = negotiate(offer, WIDE)
    assert header == expected


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        'permessage-deflate; client_no_context_takeover=""',
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=1 5",
        'permessage-deflate; client_max_window_bits="10',
        "permessage-deflate; =10",
        "permessage-deflate;;",
        "permessage-deflate; server_max_window_bits=99999999999999999999999",
        "permessage-deflate\x00",
        "deflate-frame",
        "",
        ";;;,,,==",
        "permessage-deflate; " + "a" * 5000,
    ],
)
def test_invalid_offers_are_declined(offer: str) -> None:
    assert negotiate_extensions(offer, True) is None


def test_parse_extensions_keeps_good_elements_next_to_bad_ones() -> None:
    assert parse_extensions('a; b="c", @bad, d') == [
        ("a", [("b", "c")]),
        None,
        ("d", []),
    ]


def test_deflate_disabled_declines() -> None:
    assert negotiate_extensions("permessage-deflate", False) is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"level": 10}, ValueError),
        ({"level": -2}, ValueError),
        ({"mem_level": 0}, ValueError),
        ({"mem_level": 10}, ValueError),
        ({"max_window_bits": 7}, ValueError),
        ({"max_window_bits": 16}, ValueError),
        ({"min_size": -1}, ValueError),
        ({"level": 1.5}, TypeError),
        ({"level": True}, TypeError),
        ({"no_context_takeover": 1}, TypeError),
    ],
)
def test_options_are_validated(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        DeflateOptions(**kwargs)  # type: ignore[arg-type]


def test_window_bits_8_is_run_as_9_and_stays_valid_for_an_8_bit_window() -> None:
    header, codec = negotiate(
        "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8", WIDE
    )
    assert header == "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8"
    # Our output must inflate with a 256-byte window (zlib's 9-bit deflate
    # never emits a distance over 250).
    inflater = zlib.decompressobj(-8)
    data = bytes(range(256)) * 40 + SAMPLE
    for _ in range(3):
        payload = codec.encode(data)
        assert payload is not None
        assert inflater.decompress(payload + TAIL) == data
    # And we inflate what an 8-bit client sends (zlib compresses it with 9,
    # as every zlib-based client must).
    client = ClientCompressor(bits=9)
    conn = Connection(codec=codec)
    for _ in range(3):
        assert feed(conn, client_frame(BINARY, client.compress(data), rsv1=True)) == [data]


# ----------------------------------------------------------- receiving path


@pytest.mark.parametrize("step", [0, 1, 7, 1000])
@pytest.mark.parametrize("takeover", [True, False], ids=["takeover", "no-takeover"])
def test_receive_compressed_messages(step: int, takeover: bool) -> None:
    offer = "permessage-deflate" + ("" if takeover else "; client_no_context_takeover")
    _, codec = negotiate(offer, WIDE)
    conn = Connection(max_payload=1 << 20, codec=codec)
    client = ClientCompressor(context_takeover=takeover)
    messages = [SAMPLE, SAMPLE[:300], b"", bytes(70000), "ünïcödé ✓".encode() * 100]
    wire = b""
    for i, m in enumerate(messages):
        wire += client_frame(TEXT if i == 4 else BINARY, client.compress(m), rsv1=True)
    events = feed(conn, wire, step)
    assert events[:4] == messages[:4]
    assert events[4] == messages[4].decode()
    assert (codec._inflater is None) == (not takeover)


def test_context_takeover_makes_later_messages_smaller() -> None:
    client = ClientCompressor()
    first, second = client.compress(SAMPLE), client.compress(SAMPLE)
    assert len(second) < len(first) // 5  # the second message refers to the first
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    assert feed(conn, client_frame(BINARY, first, rsv1=True)) == [SAMPLE]
    assert feed(conn, client_frame(BINARY, second, rsv1=True)) == [SAMPLE]


@pytest.mark.parametrize("step", [0, 3])
def test_fragmented_compressed_message_with_ping_between(step: int) -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    payload = ClientCompressor().compress(SAMPLE)
    a, b, c = payload[:10], payload[10:200], payload[200:]
    wire = (
        client_frame(TEXT, a, fin=False, rsv1=True)
        + client_frame(CONT, b, fin=False)
        + client_frame(PING, b"p")
        + client_frame(CONT, c)
    )
    assert feed(conn, wire, step) == [Ping(b"p"), SAMPLE.decode()]


def test_uncompressed_message_on_a_deflate_connection() -> None:
    # RSV1 is per message: a message without it is taken as it is.
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    assert feed(conn, client_frame(TEXT, b"plain")) == ["plain"]


def protocol_error(events: list[Event]) -> ProtocolError:
    assert events and isinstance(events[-1], ProtocolError), events
    return events[-1]


def test_rsv1_on_a_continuation_frame_is_1002() -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    payload = ClientCompressor().compress(SAMPLE)
    wire = client_frame(BINARY, payload[:5], fin=False, rsv1=True) + client_frame(
        CONT, payload[5:], rsv1=True
    )
    assert protocol_error(feed(conn, wire)).code == 1002


def test_rsv1_on_a_control_frame_is_1002() -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    assert protocol_error(feed(conn, client_frame(PING, b"x", rsv1=True))).code == 1002


def test_rsv1_without_the_extension_is_1002() -> None:
    conn = Connection(codec=None)
    wire = client_frame(BINARY, ClientCompressor().compress(SAMPLE), rsv1=True)
    assert protocol_error(feed(conn, wire)).code == 1002


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # invalid block type
        b"\x02\x00\x00",  # truncated then a bogus tail
        ClientCompressor().compress(b"abc") + b"\x06",  # garbage after a sync point
    ],
)
def test_corrupt_stream_is_1007(payload: bytes) -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    assert protocol_error(feed(conn, client_frame(BINARY, payload, rsv1=True))).code == 1007


def test_final_block_then_data_is_1007_and_final_block_alone_is_fine() -> None:
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    whole = final.compress(b"hello") + final.flush()  # BFINAL=1, no sync tail
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    assert feed(conn, client_frame(TEXT, whole, rsv1=True)) == ["hello"]
    assert feed(conn, client_frame(TEXT, ClientCompressor().compress(b"next"), rsv1=True)) == [
        "next"
    ]
    conn = Connection(codec=negotiate("permessage-deflate", WIDE)[1])
    events = feed(conn, client_frame(TEXT, whole + b"junk" * 10, rsv1=True))
    assert protocol_error(events).code == 1007


# RFC 7692 §7.2.3.3: "Hello" in a final block, then the one octet an
# empty stored block leaves after its last four octets are stripped.
RFC_BFINAL_HELLO = bytes([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00])


@pytest.mark.parametrize("step", [0, 1, 3])
def test_rfc_7692_final_block_example(step: int) -> None:
    conn = Connection(codec=negotiate("permessage-deflate")[1])
    assert feed(conn, client_frame(TEXT, RFC_BFINAL_HELLO, rsv1=True), step) == ["Hello"]
    # The same, fragmented so that the 0x00 comes in a frame of its own.
    wire = client_frame(TEXT, RFC_BFINAL_HELLO[:7], fin=False, rsv1=True) + client_frame(
        CONT, RFC_BFINAL_HELLO[7:]
    )
    assert feed(conn, wire, step) == ["Hello"]
    assert feed(conn, client_frame(TEXT, ClientCompressor().compress(b"next"), rsv1=True)) == [
        "next"
    ]


@pytest.mark.parametrize(
    "after",
    [b"\x01", b"\x00\x00", b"\x00\x00\x00\xff\xff", b"\x00\x00\xff"],
    ids=["not-stored", "two-octets", "whole-block", "partial-tail"],
)
def test_anything_else_after_a_final_block_is_1007(after: bytes) -> None:
    conn = Connection(codec=negotiate("permessage-deflate")[1])
    events = feed(conn, client_frame(TEXT, RFC_BFINAL_HELLO[:7] + after, rsv1=True))
    assert protocol_error(events).code == 1007


def test_invalid_utf8_after_inflating_is_1007() -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(codec=codec)
    wire = client_frame(TEXT, ClientCompressor().compress(b"ok \xc3\x28 no"), rsv1=True)
    assert protocol_error(feed(conn, wire)).code == 1007


def test_max_payload_counts_inflated_bytes() -> None:
    limit = 10_000
    data = bytes(limit)
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(max_payload=limit, codec=codec)
    client = ClientCompressor()
    assert feed(conn, client_frame(BINARY, client.compress(data), rsv1=True)) == [data]
    events = feed(conn, client_frame(BINARY, client.compress(data + b"!"), rsv1=True))
    assert protocol_error(events).code == 1009


def zero_bomb(inflated_mib: int) -> bytes:
    """A compressed payload that inflates to ``inflated_mib`` MiB of zeros.

    Sync-flushed segments of a raw deflate stream concatenate into a valid
    stream, so one compressed MiB repeated gives any size at once.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    segment = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    fresh = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    first = fresh.compress(bytes(1 << 20)) + fresh.flush(zlib.Z_SYNC_FLUSH)
    return (first + segment * (inflated_mib - 1))[:-4]


def test_small_bomb_is_1009() -> None:
    # Deflate's best ratio is about 1:1032, so ~1 KiB inflates to ~1 MiB.
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    bomb = (c.compress(bytes(1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(bomb) < 1100
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(max_payload=64 * 1024, codec=codec)
    assert protocol_error(feed(conn, client_frame(BINARY, bomb, rsv1=True))).code == 1009


def test_gigabyte_bomb_is_refused_with_bounded_memory() -> None:
    max_payload = 1 << 20
    bomb = zero_bomb(1024)  # ~1 MiB on the wire, 1 GiB inflated
    assert len(bomb) < 1_100_000
    check = zlib.decompressobj(-15)
    assert len(check.decompress(bomb[:2000], 0)) >= 1 << 20  # it really is a bomb
    frame = client_frame(BINARY, bomb, rsv1=True)
    _, codec = negotiate("permessage-deflate", WIDE)
    conn = Connection(max_payload=max_payload, codec=codec)
    tracemalloc.start()
    try:
        # Fed as a socket would: 64 KiB reads.
        events = feed(conn, frame, 65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert protocol_error(events).code == 1009
    # Everything the connection allocated, inflate buffers included (zlib
    # allocates through PyMem and is traced): about one max_payload.
    assert peak < 3 * max_payload, f"peak {peak} bytes while refusing the bomb"


# ------------------------------------------------------------- sending path


def peer(codec: PerMessageDeflate) -> PeerDeflate:
    """The websockets library's decoder with the parameters we agreed."""
    return PeerDeflate(
        remote_no_context_takeover=codec.server_no_context_takeover,
        local_no_context_takeover=codec.client_no_context_takeover,
        remote_max_window_bits=codec.server_window_bits,
        local_max_window_bits=codec.client_window_bits,
    )


def peer_decode(decoder: PeerDeflate, frame: bytes) -> tuple[bool, bytes]:
    b0, opcode, payload = parse_server_frame(frame)
    assert b0 & 0x80, "we send every message in one frame"
    assert not b0 & 0x30
    rsv1 = bool(b0 & 0x40)
    out = decoder.decode(Frame(Opcode(opcode), payload, fin=True, rsv1=rsv1))
    return rsv1, bytes(out.data)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=9",
        "permessage-deflate; client_max_window_bits",
    ],
)
@pytest.mark.parametrize("options", [DeflateOptions(), WIDE, DeflateOptions(level=1, mem_level=1)])
@pytest.mark.parametrize("compressor", ["zlib", "isal"])
def test_sent_messages_decode_with_websockets(
    offer: str, options: DeflateOptions, compressor: str
) -> None:
    if compressor == "isal" and deflate._isal_zlib() is None:
        pytest.fail("the isal package is not installed: it is part of the dev extras (make venv)")
    _, codec = negotiate(offer, dataclasses.replace(options, compressor=compressor))
    assert codec.compressor == compressor
    conn = Connection(codec=codec)
    decoder = peer(codec)
    messages = [SAMPLE, b"tiny", SAMPLE, bytes(range(256)) * 300, "é" * 5000]
    for m in messages:
        data = m.encode() if isinstance(m, str) else m
        rsv1, out = peer_decode(decoder, conn.send_message(data, isinstance(m, str)))
        assert out == data
        assert rsv1 == (len(data) >= codec.min_size)


def test_min_size_and_incompressible_data_go_uncompressed() -> None:
    _, codec = negotiate("permessage-deflate", DeflateOptions(min_size=100))
    assert codec.encode(b"x" * 99) is None
    assert codec._deflater is None  # never touched: the histories stay in step
    assert codec.encode(b"x" * 100) is not None
    # Without context takeover, output that would not be smaller is not used.
    _, nct = negotiate("permessage-deflate; server_no_context_takeover")
    noise = bytes((i * 7919 + 13) % 251 for i in range(5000))
    noise = zlib.compress(noise, 9)  # high entropy
    assert nct.encode(noise) is None
    assert nct.encode(SAMPLE) is not None


def test_context_takeover_on_send() -> None:
    _, codec = negotiate("permessage-deflate", WIDE)
    first, second = codec.encode(SAMPLE), codec.encode(SAMPLE)
    assert first is not None and second is not None
    assert len(second) < len(first) // 3  # the second one refers to the first
    _, nct = negotiate("permessage-deflate; server_no_context_takeover", WIDE)
    a, b = nct.encode(SAMPLE), nct.encode(SAMPLE)
    assert a == b  # each message on its own: a shareable frame


def test_control_frames_are_never_compressed() -> None:
    _, codec = negotiate("permessage-deflate", DeflateOptions(min_size=0))
    conn = Connection(codec=codec)
    conn.receive_data(client_frame(0x9, b"q" * 100))
    for frame in (conn.send_ping(b"p" * 100), *conn.data_to_send()):
        b0, _, payload = parse_server_frame(frame)
        assert not b0 & 0x40
        assert payload in (b"p" * 100, b"q" * 100)
    b0, _, payload = parse_server_frame(conn.send_close(1000, "bye" * 20))
    assert not b0 & 0x40 and payload[2:] == b"bye" * 20
    assert codec._deflater is None


def test_idle_codec_holds_no_zlib_state() -> None:
    _, codec = negotiate("permessage-deflate; client_no_context_takeover", WIDE)
    assert codec._deflater is None and codec._inflater is None
    _, nct = negotiate("permessage-deflate", DeflateOptions(no_context_takeover=True))
    conn = Connection(codec=nct)
    conn.send_message(SAMPLE, False)
    feed(conn, client_frame(BINARY, ClientCompressor().compress(SAMPLE), rsv1=True))
    assert nct._deflater is None and nct._inflater is None


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    step=st.integers(min_value=1, max_value=500),
    takeover=st.booleans(),
)
def test_roundtrip_property(messages: list[bytes], step: int, takeover: bool) -> None:
    offer = "permessage-deflate" + ("" if takeover else "; client_no_context_takeover")
    _, codec = negotiate(offer, DeflateOptions(min_size=0))
    conn = Connection(codec=codec)
    client = ClientCompressor(bits=codec.client_window_bits, context_takeover=takeover)
    decoder = peer(codec)
    wire = b"".join(client_frame(BINARY, client.compress(m), rsv1=True) for m in messages)
    assert feed(conn, wire, step) == messages
    for m in messages:
        assert peer_decode(decoder, conn.send_message(m, False))[1] == m


_OFFER_PIECES = st.sampled_from(
    [
        "permessage-deflate",
        "x-webkit-deflate-frame",
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "=",
        "8",
        "15",
        "16",
        '"',
        ";",
        ",",
        " ",
        "\t",
        "é",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_OFFER_PIECES, max_size=12).map("".join)))
def test_any_offer_is_answered_or_declined_never_raises(offer: str) -> None:
    result = negotiate_extensions(offer, True)
    if result is None:
        return
    header, codec = result
    # What we answer is itself a well-formed, acceptable permessage-deflate
    # element, and the codec it made works.
    parsed = parse_extensions(header)
    assert len(parsed) == 1 and parsed[0] is not None and parsed[0][0] == "permessage-deflate"
    assert negotiate_extensions(header, WIDE) is not None  # only valid parameters in it
    assert isinstance(codec, PerMessageDeflate)
    assert 8 <= codec.server_window_bits <= 15 and 8 <= codec.client_window_bits <= 15
    conn = Connection(codec=codec)
    assert peer_decode(peer(codec), conn.send_message(SAMPLE, False))[1] == SAMPLE
