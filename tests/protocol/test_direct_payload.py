"""Large binary frames received in place (``Connection.read_window``).

A binary message of at least ``DIRECT_MIN`` bytes in one frame that does not
arrive whole goes into one preallocated buffer, which a transport may also
receive into directly.  These tests run on whichever path is active: ``make
test`` runs them with the C accelerator and again with
``WSHUB_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.test_accelerator import masked_frame
from wshub.protocol import frames
from wshub.protocol.connection import (
    DIRECT_MIN,
    CloseReceived,
    Connection,
    Event,
    Ping,
    ProtocolError,
)

MASK = b"\x0f\xa1\x5c\x33"


def feed_through_window(conn: Connection, data: bytes, step: int) -> list[Event]:
    """Deliver ``data`` the way a buffered transport does: into read_window()
    while one is open (at most ``step`` bytes a time), else receive_data()."""
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        window = conn.read_window()
        if window is None:
            n = min(step, len(data) - pos)
            events.extend(conn.receive_data(data[pos : pos + n]))
        else:
            n = min(step, len(window), len(data) - pos)
            window[:n] = data[pos : pos + n]
            window.release()
            events.extend(conn.window_filled(n))
        pos += n
    return events


@pytest.mark.parametrize("size", [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 300_001, 3 << 20])
@pytest.mark.parametrize("step", [1000, 65536, 1 << 20])
def test_large_binary_frame_through_the_window(size: int, step: int) -> None:
    payload = os.urandom(size)
    stream = masked_frame(2, payload) + masked_frame(9, b"p") + masked_frame(2, b"after")
    conn = Connection()
    assert feed_through_window(conn, stream, step) == [payload, Ping(b"p"), b"after"]
    assert conn.direct_payload is None and conn.read_window() is None


def test_window_opens_only_for_large_whole_binary_frames() -> None:
    big = os.urandom(DIRECT_MIN)
    cases = [
        masked_frame(2, big),  # binary, one frame: in place
        masked_frame(1, b"a" * DIRECT_MIN),  # text: validated incrementally instead
        masked_frame(2, big, fin=False),  # a fragment: the message size is unknown
    ]
    opened = []
    for stream in cases:
        conn = Connection()
        conn.receive_data(stream[:1000])
        opened.append(conn.read_window() is not None)
    assert opened == [True, False, False]
    # A whole frame in one read never needs a buffer of its own.
    conn = Connection()
    assert conn.receive_data(masked_frame(2, big)) == [big]
    assert conn.direct_payload is None


def test_the_header_alone_does_not_allocate_the_claimed_length() -> None:
    # A header claiming 1 GiB (allowed by max_payload) and a little data.
    claimed = 1 << 30
    head = bytes([0x82, 0xFF]) + claimed.to_bytes(8, "big") + MASK
    conn = Connection(max_payload=2 << 30)
    assert conn.receive_data(head + b"\x00" * 10_000) == []
    buf = conn.direct_payload
    assert buf is not None
    assert buf.allocated <= 2 * 10_000 + 65536
    # It grows with what really arrives: at most twice that (plus the start).
    for _ in range(30):
        conn.receive_data(b"\x00" * 100_000)
    assert buf.filled == 3_010_000
    assert buf.allocated <= 2 * buf.filled + 65536


def test_too_big_frame_refused_before_any_buffer() -> None:
    conn = Connection(max_payload=100_000)
    head = bytes([0x82, 0xFF]) + (100_001).to_bytes(8, "big") + MASK
    events = conn.receive_data(head + b"\x00" * 5000)
    assert [type(e) for e in events] == [ProtocolError]
    assert events[0].code == 1009  # type: ignore[union-attr]
    assert conn.direct_payload is None and conn.read_window() is None


def test_close_after_a_direct_frame_and_nothing_after_close() -> None:
    payload = os.urandom(200_000)
    stream = masked_frame(2, payload) + masked_frame(8, b"\x03\xe8bye")
    conn = Connection()
    events = feed_through_window(conn, stream + masked_frame(2, b"ignored"), 7000)
    assert events == [payload, CloseReceived(1000, "bye")]


def test_window_filled_without_a_window_is_an_error() -> None:
    conn = Connection()
    with pytest.raises(RuntimeError):
        conn.window_filled(1)


def test_payload_buffer_contract() -> None:
    data = os.urandom(100_003)
    masked = frames._apply_mask_py(data, MASK)
    buf = frames.PayloadBuffer(len(data), 10, MASK)
    buf.write(masked[:5])
    window = buf.window()
    assert len(window) == 5
    window[:5] = masked[5:10]
    buf.filled_in(5)
    # The buffer is full and a view of it is alive: growing it now could
    # move the memory under that view, so it refuses.
    with pytest.raises(BufferError):
        buf.write(masked[10:20])
    window.release()
    with pytest.raises(ValueError):
        buf.take()  # not complete
    buf.write(masked[10:])
    with pytest.raises(ValueError):
        buf.write(b"x")  # past the end
    with pytest.raises(BufferError):
        buf.window()  # complete: nothing left to receive
    assert buf.take() == data
    with pytest.raises(ValueError):
        buf.take()


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(DIRECT_MIN, 4 * DIRECT_MIN),
    cuts=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
    windowed=st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_any_mix_of_window_and_receive_data(
    size: int, cuts: list[int], windowed: list[bool]
) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    stream = masked_frame(2, payload, mask=os.urandom(4)) + masked_frame(1, "né".encode())
    conn = Connection()
    events: list[Event] = []
    pos = 0
    turn = 0
    while pos < len(stream):
        n = min(cuts[turn % len(cuts)], len(stream) - pos)
        window = conn.read_window() if windowed[turn % len(windowed)] else None
        if window is not None:
            n = min(n, len(window))
            window[:n] = stream[pos : pos + n]
            window.release()
            events.extend(conn.window_filled(n))
        else:
            events.extend(conn.receive_data(stream[pos : pos + n]))
        pos += n
        turn += 1
    assert events == [payload, "né"]
