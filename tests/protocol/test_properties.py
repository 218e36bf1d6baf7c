"""Property tests of the frame reader (hypothesis).

1. Any byte stream, cut into any chunks, yields exactly the events it yields
   in one piece, at most one ProtocolError and only as the last event, and
   never an uncaught exception.
2. Any valid sequence of (masked, possibly fragmented) client frames with
   interleaved control frames round-trips to the messages it was built from.

``WSHUB_FUZZ_EXAMPLES`` raises the example count (``make fuzz``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawws import client_frame, close_body
from wshub.protocol.connection import (
    CloseReceived,
    Connection,
    Event,
    Ping,
    Pong,
    ProtocolError,
)

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("WSHUB_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    prev = 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


def feed_all(conn: Connection, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += conn.receive_data(piece)
    return events


def check_shape(events: list[Event]) -> None:
    errors = [i for i, e in enumerate(events) if isinstance(e, ProtocolError)]
    closes = [i for i, e in enumerate(events) if isinstance(e, CloseReceived)]
    assert len(errors) + len(closes) <= 1
    if errors:
        assert errors[0] == len(events) - 1
        assert events[-1].code in (1002, 1007, 1009)  # type: ignore[union-attr]
    if closes:
        assert closes[0] == len(events) - 1


# A byte soup that often forms headers: random frames, some valid, glued to noise.
_opcodes = st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11])
_frame = st.builds(
    lambda op, payload, fin, rsv, masked, noise: (
        client_frame(op, payload, fin=fin, rsv=rsv, mask=b"\x01\x02\x03\x04" if masked else None)
        + noise
    ),
    _opcodes,
    st.one_of(st.binary(max_size=200), st.text(max_size=60).map(str.encode)),
    st.booleans(),
    st.sampled_from([0, 0, 0, 0, 1, 2, 4]),
    st.sampled_from([True, True, True, False]),  # masked (unmasked is a 1002)
    st.one_of(st.just(b""), st.just(b""), st.binary(max_size=4)),
)
_streams = st.one_of(
    st.binary(max_size=600),
    st.lists(_frame, max_size=8).map(b"".join),
)


@SETTINGS
@given(
    data=_streams,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    max_payload=st.sampled_from([0, 1, 50, 1000]),
)
def test_any_chunking_gives_the_same_events(data: bytes, cuts: list[int], max_payload: int) -> None:
    whole = Connection(max_payload=max_payload).receive_data(data)
    check_shape(whole)
    pieces = feed_all(Connection(max_payload=max_payload), chunked(data, cuts))
    assert pieces == whole
    bytewise = feed_all(
        Connection(max_payload=max_payload), [data[i : i + 1] for i in range(len(data))]
    )
    assert bytewise == whole


# ----------------------------------------------------------------- valid streams

_message = st.one_of(
    st.text(max_size=300).map(lambda t: ("text", t)),
    st.binary(max_size=300).map(lambda b: ("binary", b)),
)
_control = st.one_of(
    st.binary(max_size=125).map(Ping),
    st.binary(max_size=125).map(Pong),
)


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    wire = bytearray()
    expected: list[Event] = []
    for kind, value in draw(st.lists(_message, max_size=6)):
        payload = value.encode() if isinstance(value, str) else value
        n_frag = draw(st.integers(min_value=1, max_value=4))
        cuts = sorted(
            draw(st.lists(st.integers(0, len(payload)), min_size=n_frag - 1, max_size=n_frag - 1))
        )
        bounds = [0, *cuts, len(payload)]
        for i in range(n_frag):
            opcode = (0x1 if kind == "text" else 0x2) if i == 0 else 0x0
            mask = draw(st.binary(min_size=4, max_size=4))
            wire += client_frame(
                opcode, payload[bounds[i] : bounds[i + 1]], fin=i == n_frag - 1, mask=mask
            )
            if i == n_frag - 1:
                expected.append(value)  # complete before any control frame after it
            for ctrl in draw(st.lists(_control, max_size=2)):
                op = 0x9 if isinstance(ctrl, Ping) else 0xA
                wire += client_frame(op, ctrl.payload, mask=draw(st.binary(min_size=4, max_size=4)))
                expected.append(ctrl)
    if draw(st.booleans()):
        code = draw(st.sampled_from([1000, 1001, 1011, 3000, 4999]))
        reason = draw(st.text(max_size=20))
        wire += client_frame(0x8, close_body(code, reason))
        expected.append(CloseReceived(code, reason))
    return bytes(wire), expected


@SETTINGS
@given(
    stream=valid_streams(), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10)
)
def test_valid_frames_round_trip(stream: tuple[bytes, list[Event]], cuts: list[int]) -> None:
    wire, expected = stream
    assert Connection(max_payload=0).receive_data(wire) == expected
    assert feed_all(Connection(max_payload=0), chunked(wire, cuts)) == expected


@SETTINGS
@given(text=st.text(min_size=1, max_size=50), cut=st.integers(min_value=0, max_value=200))
def test_text_split_anywhere_across_fragments(text: str, cut: int) -> None:
    raw = text.encode()
    cut %= len(raw) + 1
    wire = client_frame(0x1, raw[:cut], fin=False) + client_frame(0x0, raw[cut:])
    assert Connection().receive_data(wire) == [text]


@SETTINGS
@given(raw=st.binary(min_size=1, max_size=40), cut=st.integers(min_value=0, max_value=200))
def test_text_validation_agrees_with_python(raw: bytes, cut: int) -> None:
    cut %= len(raw) + 1
    wire = client_frame(0x1, raw[:cut], fin=False) + client_frame(0x0, raw[cut:])
    events = Connection().receive_data(wire)
    try:
        expected: list[object] = [raw.decode("utf-8")]
    except UnicodeDecodeError:
        assert len(events) == 1 and isinstance(events[0], ProtocolError)
        assert events[0].code == 1007
    else:
        assert events == expected
