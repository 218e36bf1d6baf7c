"""The sans-I/O connection state machine, fed raw client bytes (RFC 6455 §5-§7)."""

from __future__ import annotations

import pytest

from tests.rawws import client_frame, close_body
from wshub.protocol.connection import (
    CloseReceived,
    Connection,
    ConnectionClosedError,
    ConnectionState,
    EndMode,
    Event,
    Ping,
    Pong,
    ProtocolError,
)

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def feed(conn: Connection, data: bytes, *, bytewise: bool = False) -> list[Event]:
    if not bytewise:
        return conn.receive_data(data)
    events: list[Event] = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1])
    return events


def error_code(events: list[Event]) -> int:
    assert events, "expected a ProtocolError, got no event"
    last = events[-1]
    assert isinstance(last, ProtocolError), f"expected a ProtocolError, got {events!r}"
    assert sum(isinstance(e, ProtocolError) for e in events) == 1
    return last.code


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# ----------------------------------------------------------------- messages


def test_text_and_binary_messages(bytewise: bool) -> None:
    conn = Connection()
    data = client_frame(TEXT, "héllo €".encode()) + client_frame(BINARY, b"\x00\xff" * 70000)
    assert feed(conn, data, bytewise=bytewise) == ["héllo €", b"\x00\xff" * 70000]
    assert conn.state == ConnectionState.OPEN and not conn.failed


def test_empty_messages() -> None:
    conn = Connection()
    data = client_frame(TEXT, b"") + client_frame(BINARY, b"")
    assert feed(conn, data) == ["", b""]


def test_rfc_example_frames() -> None:
    # RFC 6455 §5.7: a single-frame masked text message.
    conn = Connection()
    assert conn.receive_data(bytes.fromhex("818537fa213d7f9f4d5158")) == ["Hello"]


# ----------------------------------------------------------------- masking / header rules


def test_unmasked_client_frame_is_a_protocol_error() -> None:
    # RFC 6455 §5.1: the server MUST close on an unmasked frame.
    conn = Connection()
    events = conn.receive_data(client_frame(TEXT, b"hi", mask=None))
    assert error_code(events) == 1002
    assert conn.failed and conn.pending
    [close] = conn.data_to_send()  # our Close, once the driver asks
    assert close == b"\x88\x19\x03\xeaclient frame not masked"
    assert conn.end == EndMode.HALF_CLOSE


@pytest.mark.parametrize("rsv", [1, 2, 4, 3, 7])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
def test_rsv_bits_without_extension(rsv: int, opcode: int) -> None:
    # RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension defines them.
    conn = Connection()
    assert error_code(conn.receive_data(client_frame(opcode, b"x", rsv=rsv))) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode: int) -> None:
    conn = Connection()
    events = conn.receive_data(client_frame(TEXT, b"ok") + client_frame(opcode, b""))
    assert events[0] == "ok"
    assert error_code(events) == 1002


def test_control_frame_over_125_bytes() -> None:
    # RFC 6455 §5.5: control frames carry at most 125 bytes; judged from the header.
    conn = Connection()
    assert conn.receive_data(client_frame(PING, b"x" * 125)) == [Ping(b"x" * 125)]
    header_only = client_frame(PING, b"x" * 126)[:8]  # 2 + 2 (len 126) + 4 mask bytes
    assert error_code(conn.receive_data(header_only)) == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    conn = Connection()
    assert error_code(conn.receive_data(client_frame(opcode, b"", fin=False))) == 1002


def test_length_of_2_to_the_63_is_refused() -> None:
    # RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0.
    conn = Connection(max_payload=0)
    head = bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"abcd"
    assert error_code(conn.receive_data(head)) == 1002


# ----------------------------------------------------------------- fragmentation


def test_fragmented_message_with_interleaved_control_frames(bytewise: bool) -> None:
    # RFC 6455 §5.4: control frames may be injected between fragments.
    conn = Connection()
    data = (
        client_frame(TEXT, b"Hel", fin=False)
        + client_frame(PING, b"p1")
        + client_frame(CONT, b"lo, ", fin=False)
        + client_frame(PONG, b"p2")
        + client_frame(CONT, b"", fin=False)
        + client_frame(CONT, "wörld".encode())
        + client_frame(BINARY, b"\x01", fin=False)
        + client_frame(CONT, b"\x02")
    )
    assert feed(conn, data, bytewise=bytewise) == [
        Ping(b"p1"),
        Pong(b"p2"),
        "Hello, wörld",
        b"\x01\x02",
    ]


def test_continuation_without_a_message() -> None:
    conn = Connection()
    assert error_code(conn.receive_data(client_frame(CONT, b"x"))) == 1002


def test_new_message_before_the_last_one_ended() -> None:
    conn = Connection()
    data = client_frame(TEXT, b"a", fin=False) + client_frame(BINARY, b"b")
    assert error_code(conn.receive_data(data)) == 1002


# ----------------------------------------------------------------- UTF-8


def test_utf8_split_across_fragments_is_fine(bytewise: bool) -> None:
    euro = "€".encode()  # 3 bytes
    conn = Connection()
    data = (
        client_frame(TEXT, euro[:1], fin=False)
        + client_frame(CONT, euro[1:2], fin=False)
        + client_frame(CONT, euro[2:])
    )
    assert feed(conn, data, bytewise=bytewise) == ["€"]


def test_invalid_utf8_single_frame() -> None:
    conn = Connection()
    assert error_code(conn.receive_data(client_frame(TEXT, b"ab\xffcd"))) == 1007


def test_invalid_utf8_fails_fast_in_the_middle_of_a_frame() -> None:
    # Autobahn 6.4.x: the error must come as soon as the bad byte arrives,
    # not when the frame (here 1000 bytes long) is complete.
    conn = Connection()
    frame = client_frame(TEXT, b"ok" + b"\xf4\x90\x80\x80" + b"a" * 994)
    assert conn.receive_data(frame[:10]) == []  # 4-byte header, mask, "ok"
    events = conn.receive_data(frame[10:12])  # F4 90: the start of a code point > U+10FFFF
    assert error_code(events) == 1007


def test_invalid_utf8_fails_fast_across_fragments() -> None:
    # The first fragment ends in the middle of a code point that the
    # second fragment's first byte makes impossible: fail on that fragment,
    # before the final one is even sent.
    conn = Connection()
    assert conn.receive_data(client_frame(TEXT, b"x\xce", fin=False)) == []
    assert error_code(conn.receive_data(client_frame(CONT, b"A", fin=False))) == 1007


def test_truncated_utf8_at_the_end_of_a_message() -> None:
    conn = Connection()
    data = client_frame(TEXT, b"x\xe2\x82", fin=False) + client_frame(CONT, b"")
    assert error_code(conn.receive_data(data)) == 1007


def test_binary_messages_are_not_validated() -> None:
    conn = Connection()
    assert conn.receive_data(client_frame(BINARY, b"\xff\xfe")) == [b"\xff\xfe"]


# ----------------------------------------------------------------- max_payload


def test_max_payload_checked_from_the_header_before_the_payload() -> None:
    conn = Connection(max_payload=1000)
    assert conn.receive_data(client_frame(BINARY, b"x" * 1000)) == [b"x" * 1000]
    # Only the 14-byte header of a 2^40-byte frame: refused at once, nothing buffered.
    head = client_frame(BINARY, b"", length=1 << 40)
    assert len(head) == 14
    assert error_code(conn.receive_data(head)) == 1009
    # And whatever follows is ignored, not buffered.
    assert conn.receive_data(b"\x00" * 100_000) == []
    assert conn._buf == b"" and conn._msg_parts is None


def test_max_payload_counts_all_fragments() -> None:
    conn = Connection(max_payload=10)
    data = client_frame(TEXT, b"a" * 6, fin=False) + client_frame(CONT, b"b" * 4)
    assert conn.receive_data(data) == ["a" * 6 + "b" * 4]
    first = client_frame(TEXT, b"a" * 6, fin=False)
    assert conn.receive_data(first) == []
    second_header = client_frame(CONT, b"", length=5)
    assert error_code(conn.receive_data(second_header)) == 1009


def test_max_payload_below_one_means_no_limit() -> None:
    conn = Connection(max_payload=0)
    assert conn.receive_data(client_frame(BINARY, b"y" * 200_000)) == [b"y" * 200_000]


# ----------------------------------------------------------------- close handshake


def test_client_initiated_close() -> None:
    conn = Connection()
    events = conn.receive_data(client_frame(CLOSE, close_body(1000, "bye")) + b"ignored")
    assert events == [CloseReceived(1000, "bye")]
    assert events[0].reply_code == 1000  # type: ignore[union-attr]
    assert conn.state == ConnectionState.CLOSE_RECEIVED  # Node's "writeOnly"
    # We may still send before answering, then our Close ends it.
    assert conn.send_message(b"late", True)[:2] == b"\x81\x04"
    reply = conn.send_close(1000)
    assert reply == b"\x88\x02\x03\xe8"
    assert conn.state == ConnectionState.CLOSED
    assert conn.send_close(1000) == b""  # never a second Close frame


def test_close_without_status_is_answered_without_one() -> None:
    conn = Connection()
    [event] = conn.receive_data(client_frame(CLOSE, b""))
    assert event == CloseReceived(1005, "")
    assert isinstance(event, CloseReceived) and event.reply_code is None
    assert conn.send_close(event.reply_code) == b"\x88\x00"


def test_server_initiated_close() -> None:
    conn = Connection()
    assert conn.send_close(4001, "done") == b"\x88\x06\x0f\xa1done"
    assert conn.state == ConnectionState.CLOSE_SENT  # Node's "readOnly"
    with pytest.raises(ConnectionClosedError):
        conn.send_message(b"x", False)
    with pytest.raises(ConnectionClosedError):
        conn.send_ping(b"")
    assert conn.receive_data(client_frame(PING, b"x")) == [Ping(b"x")]
    assert conn.data_to_send() == []  # no pong once our Close is sent
    # Data still arriving from the peer is delivered until its Close.
    events = conn.receive_data(client_frame(TEXT, b"still") + client_frame(CLOSE, close_body(4001)))
    assert events == ["still", CloseReceived(4001, "")]
    assert conn.state == ConnectionState.CLOSED


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x03", 1002),  # one byte
        (close_body(999), 1002),
        (close_body(1005), 1002),
        (close_body(1006), 1002),
        (close_body(1016), 1002),
        (close_body(5000), 1002),
        (b"\x03\xe8\xff", 1007),  # reason not UTF-8
    ],
)
def test_invalid_close_frames(body: bytes, code: int) -> None:
    conn = Connection()
    assert error_code(conn.receive_data(client_frame(CLOSE, body))) == code
    # The core fails the connection itself: its Close with that code is the
    # last frame, then our side stops writing and lingers (RFC 6455 §7.1.7).
    [frame] = conn.data_to_send()
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == code
    assert conn.state == ConnectionState.CLOSED
    assert conn.end == EndMode.HALF_CLOSE
    assert conn.send_close(code) == b""


def test_nothing_after_a_protocol_error() -> None:
    conn = Connection()
    events = conn.receive_data(client_frame(TEXT, b"\xff") + client_frame(TEXT, b"more"))
    assert error_code(events) == 1007
    assert conn.receive_data(client_frame(TEXT, b"more")) == []


# ----------------------------------------------------------------- output


def test_send_helpers() -> None:
    conn = Connection()
    assert conn.send_message("é".encode(), True) == b"\x81\x02\xc3\xa9"
    assert conn.send_message(b"\x00", False) == b"\x82\x01\x00"
    assert conn.send_ping(b"id") == b"\x89\x02id"
    with pytest.raises(ValueError):
        conn.send_ping(b"x" * 126)


def test_ping_events_carry_the_payload_for_the_pong() -> None:
    conn = Connection()
    [ping] = conn.receive_data(client_frame(PING, b"\x00\x01binary"))
    assert isinstance(ping, Ping)
    assert ping.pong == b"\x8a\x08\x00\x01binary"  # the core's answer, sent in its place
