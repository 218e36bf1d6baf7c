"""Hypothesis fuzzing of the frame parser against ``max_payload``.

Messages of sizes around the limit, fragmented at random, with control
frames in between, fed in random chunks: a message is delivered exactly
when its total size is at most ``max_payload``, otherwise the stream ends
in one 1009.  Bit-flipped streams never raise and never deliver a message
over the limit.

``WSHUB_FUZZ_EXAMPLES`` sets the example count (``make fuzz``: 20000).
"""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub.protocol.connection import Connection, Ping, Pong, ProtocolError

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("WSHUB_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMIT = 300


def frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    b0 = opcode | (0x80 if fin else 0)
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A binary message near the limit and its frames (fragments + pings)."""
    size = draw(st.sampled_from([0, 1, LIMIT - 1, LIMIT, LIMIT + 1]) | st.integers(0, 2 * LIMIT))
    payload = bytes(i % 251 for i in range(size))
    splits = sorted(draw(st.lists(st.integers(0, size), max_size=4)))
    pieces = [payload[a:b] for a, b in itertools.pairwise([0, *splits, size])]
    frames = []
    for i, piece in enumerate(pieces):
        frames.append(frame(2 if i == 0 else 0, piece, fin=i == len(pieces) - 1))
        if draw(st.booleans()):
            frames.append(frame(9, b"p"))
    return payload, frames


@SETTINGS
@given(messages=st.lists(message(), min_size=1, max_size=4), cuts=st.lists(st.integers()))
def test_max_payload_exact(messages: list[tuple[bytes, list[bytes]]], cuts: list[int]) -> None:
    conn = Connection(max_payload=LIMIT)
    stream = b"".join(b"".join(frames) for _, frames in messages)
    events = []
    for chunk in cut(stream, cuts):
        events.extend(conn.receive_data(chunk))
    delivered = [e for e in events if isinstance(e, bytes)]
    errors = [e for e in events if isinstance(e, ProtocolError)]
    expected = []
    for payload, _ in messages:
        if len(payload) > LIMIT:
            assert errors == [ProtocolError(1009, f"message over {LIMIT} bytes")]
            break
        expected.append(payload)
    else:
        assert errors == []
    assert delivered == expected
    assert all(isinstance(e, (bytes, Ping, Pong, ProtocolError)) for e in events)


@SETTINGS
@given(
    messages=st.lists(message(), min_size=1, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=8),
    cuts=st.lists(st.integers()),
)
def test_bit_flips_never_raise_nor_exceed(
    messages: list[tuple[bytes, list[bytes]]], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = bytearray(b"".join(b"".join(frames) for _, frames in messages))
    for pos, bit in flips:
        stream[pos % len(stream)] ^= 1 << bit
    conn = Connection(max_payload=LIMIT)
    for chunk in cut(bytes(stream), cuts):
        for event in conn.receive_data(chunk):
            if isinstance(event, (bytes, str)):
                assert len(event.encode() if isinstance(event, str) else event) <= LIMIT


@SETTINGS
@given(length=st.integers(LIMIT + 1, 2**63 - 1), opcode=st.sampled_from([1, 2]))
def test_any_announced_length_over_the_limit_is_refused_from_the_header(
    length: int, opcode: int
) -> None:
    conn = Connection(max_payload=LIMIT)
    head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length) + b"\x00" * 4
    assert conn.receive_data(head) == [ProtocolError(1009, f"message over {LIMIT} bytes")]
