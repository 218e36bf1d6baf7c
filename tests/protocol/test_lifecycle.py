"""The connection's whole lifecycle, without sockets: bytes, EOF and time in;
frames, the end of the transport, deadlines and the close report out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.rawws import client_frame, close_body
from wshub.protocol.connection import (
    CloseReceived,
    Connection,
    ConnectionClosedError,
    ConnectionLimits,
    ConnectionState,
    EndMode,
    Ping,
    Pong,
    ProtocolError,
)

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
OPEN, CLOSE_SENT, CLOSE_RECEIVED, CLOSED = (
    ConnectionState.OPEN,
    ConnectionState.CLOSE_SENT,
    ConnectionState.CLOSE_RECEIVED,
    ConnectionState.CLOSED,
)
LIMITS = ConnectionLimits(close_timeout=10.0, ping_burst=2, ping_rate=1.0, ping_flood_limit=3)


def close_code_of(frame: bytes) -> int | None:
    """The code in one of our (unmasked) Close frames; None for an empty one."""
    assert frame[0] == 0x88, frame
    return int.from_bytes(frame[2:4], "big") if frame[1] >= 2 else None


@dataclass
class Driver:
    """Plays the transport: records what the core asks for, step by step."""

    conn: Connection = field(default_factory=lambda: Connection(limits=LIMITS))
    now: float = 0.0
    sent: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)

    def step(self, action: str, arg: object = None) -> None:
        conn = self.conn
        if action == "time":
            assert isinstance(arg, float)
            self.now = arg
            if conn.deadline is not None and self.now >= conn.deadline:
                conn.on_deadline(self.now)
        elif action == "peer":
            assert isinstance(arg, bytes)
            self.events += conn.receive_data(arg, self.now)
        elif action == "eof":
            conn.receive_eof(self.now)
        elif action == "close":
            assert isinstance(arg, int)
            self.sent.append(conn.send_close(arg, "", self.now))
        elif action == "ping":
            assert isinstance(arg, float)
            self.sent.append(conn.send_ping(b"p1", self.now, arg))
        else:  # pragma: no cover - a typo in the table
            raise AssertionError(action)
        self.sent += conn.data_to_send()

    def close_codes(self) -> list[int | None]:
        return [close_code_of(f) for f in self.sent if f and f[0] == 0x88]


PEER_CLOSE_1001 = client_frame(CLOSE, close_body(1001))
PEER_CLOSE_EMPTY = client_frame(CLOSE, b"")
BAD_UTF8 = client_frame(TEXT, b"\xff")

# (name, steps, state, end, deadline, our Close codes, (code, clean) at connection_lost)
TRANSITIONS = [
    (
        "server closes, peer answers",
        [("close", 1000), ("time", 1.0), ("peer", PEER_CLOSE_1001)],
        CLOSED,
        EndMode.CLOSE,
        11.0,
        [1000],
        (1001, True),
    ),
    (
        "peer closes, the core answers with its code",
        [("time", 2.0), ("peer", PEER_CLOSE_1001)],
        CLOSED,
        EndMode.CLOSE,
        12.0,
        [1001],
        (1001, True),
    ),
    (
        "peer closes without a code: an empty reply, reported as 1005",
        [("peer", PEER_CLOSE_EMPTY)],
        CLOSED,
        EndMode.CLOSE,
        10.0,
        [None],
        (1005, True),
    ),
    (
        "protocol error: our Close, then a lingering half-close",
        [("time", 3.0), ("peer", BAD_UTF8)],
        CLOSED,
        EndMode.HALF_CLOSE,
        13.0,
        [1007],
        (1007, True),
    ),
    (
        "the failed peer hangs up: close the transport",
        [("peer", BAD_UTF8), ("eof", None)],
        CLOSED,
        EndMode.CLOSE,
        10.0,
        [1007],
        (1007, True),
    ),
    (
        "EOF without a closing handshake",
        [("time", 5.0), ("eof", None)],
        CLOSED,
        EndMode.CLOSE,
        15.0,
        [],
        (1006, False),
    ),
    (
        "EOF while our Close waits for an answer",
        [("close", 1000), ("eof", None)],
        CLOSED,
        EndMode.CLOSE,
        10.0,
        [1000],
        (1006, False),
    ),
    (
        "no answer to our Close: abort at the close timeout",
        [("close", 4000), ("time", 9.9), ("time", 10.0)],
        CLOSED,
        EndMode.ABORT,
        None,
        [4000],
        (1006, False),
    ),
    (
        "handshake done but the transport never goes (peer does not read): abort",
        [("peer", PEER_CLOSE_1001), ("time", 10.0)],
        CLOSED,
        EndMode.ABORT,
        None,
        [1001],
        (1001, True),
    ),
    (
        "a failed peer that never hangs up: abort",
        [("peer", BAD_UTF8), ("time", 10.0)],
        CLOSED,
        EndMode.ABORT,
        None,
        [1007],
        (1007, True),
    ),
    (
        "pong timeout: Close 1011",
        [("ping", 5.0), ("time", 5.0)],
        CLOSE_SENT,
        EndMode.NONE,
        15.0,
        [1011],
        (1006, False),
    ),
    (
        "pong timeout, then no answer: abort",
        [("ping", 5.0), ("time", 5.0), ("time", 15.0)],
        CLOSED,
        EndMode.ABORT,
        None,
        [1011],
        (1006, False),
    ),
    (
        "the pong comes in time",
        [("ping", 5.0), ("time", 1.0), ("peer", client_frame(PONG, b"p1")), ("time", 6.0)],
        OPEN,
        EndMode.NONE,
        None,
        [],
        (1006, False),
    ),
    (
        "a pong with another payload does not count",
        [("ping", 5.0), ("peer", client_frame(PONG, b"other")), ("time", 5.0)],
        CLOSE_SENT,
        EndMode.NONE,
        15.0,
        [1011],
        (1006, False),
    ),
    (
        "server closes twice: one Close frame",
        [("close", 1000), ("close", 1001)],
        CLOSE_SENT,
        EndMode.NONE,
        10.0,
        [1000],
        (1006, False),
    ),
]


@pytest.mark.parametrize(
    ("steps", "state", "end", "deadline", "codes", "result"),
    [pytest.param(*t[1:], id=str(t[0])) for t in TRANSITIONS],
)
def test_lifecycle_transitions(
    steps: list[tuple[str, object]],
    state: ConnectionState,
    end: EndMode,
    deadline: float | None,
    codes: list[int | None],
    result: tuple[int, bool],
) -> None:
    d = Driver()
    for action, arg in steps:
        d.step(action, arg)
    conn = d.conn
    assert conn.state == state
    assert conn.end == end
    assert conn.deadline == deadline
    assert d.close_codes() == codes
    lost = conn.connection_lost()
    assert (lost.code, lost.was_clean) == result
    assert conn.deadline is None


def test_a_pong_timeout_says_which_close_it_started() -> None:
    # The driver reports a close the server started at once, with its code
    # (close_code / close_reason, as after a failure); what connection_lost
    # reports still depends on the peer's answer.
    d = Driver()
    d.step("ping", 5.0)
    d.step("time", 5.0)
    conn = d.conn
    assert (conn.state, conn.close_code, conn.close_reason) == (CLOSE_SENT, 1011, "pong timeout")
    d.step("peer", client_frame(CLOSE, close_body(1011)))
    assert (conn.state, conn.close_code) == (CLOSED, 1011)
    lost = conn.connection_lost()
    assert (lost.code, lost.was_clean) == (1011, True)


def test_max_payload_from_shared_limits_applies_from_the_next_frame() -> None:
    limits = ConnectionLimits(max_payload=10)
    conn = Connection(limits=limits)
    assert conn.receive_data(client_frame(TEXT, b"x" * 10)) == ["x" * 10]
    limits.max_payload = 20  # raised: what was too big passes
    assert conn.receive_data(client_frame(BINARY, b"y" * 20)) == [b"y" * 20]
    limits.max_payload = 5  # lowered: the next larger message fails with 1009
    events = conn.receive_data(client_frame(BINARY, b"z" * 6))
    assert [type(e) for e in events] == [ProtocolError]
    assert events[0].code == 1009  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Connection(max_payload=5, limits=limits)


def test_the_close_reply_follows_what_the_application_sends() -> None:
    # The peer's message and Close arrive together: the application's answer
    # to the message (sent while it handles the events) precedes our reply.
    conn = Connection(limits=LIMITS)
    events = conn.receive_data(client_frame(TEXT, b"hi") + PEER_CLOSE_1001, 0.0)
    assert events == ["hi", CloseReceived(1001, "")]
    assert conn.state == CLOSE_RECEIVED and conn.pending
    assert conn.send_message(b"hi", True) == b"\x81\x02hi"
    [reply] = conn.data_to_send()
    assert close_code_of(reply) == 1001
    assert conn.state == CLOSED and conn.end == EndMode.CLOSE
    with pytest.raises(ConnectionClosedError):
        conn.send_message(b"late", True)


def test_an_application_close_after_the_peer_close_is_the_reply() -> None:
    conn = Connection(limits=LIMITS)
    conn.receive_data(PEER_CLOSE_1001, 0.0)
    frame = conn.send_close(4000, "bye", 0.0)
    assert close_code_of(frame) == 4000
    assert conn.state == CLOSED and conn.end == EndMode.CLOSE
    assert conn.data_to_send() == []


def test_pings_are_answered_by_the_core_and_a_flood_fails_the_connection() -> None:
    conn = Connection(limits=LIMITS)  # burst 2, 1 per second, flood past 3 deferred
    ping = client_frame(PING, b"a")
    events = conn.receive_data(ping + ping, 0.0)
    assert events == [Ping(b"a"), Ping(b"a")]
    assert [e.pong for e in events if isinstance(e, Ping)] == [b"\x8a\x01a", b"\x8a\x01a"]
    # The third is coalesced: answered when a token is back, at t=1.
    [third] = conn.receive_data(client_frame(PING, b"b"), 0.0)
    assert isinstance(third, Ping) and third.pong == b""
    assert conn.data_to_send() == []
    assert conn.deadline == 1.0
    conn.on_deadline(1.0)
    assert conn.data_to_send() == [b"\x8a\x01b"]
    assert conn.deadline is None
    # A sustained flood: ProtocolError 1008 and our Close.
    events = conn.receive_data(ping * 6, 1.0)
    assert isinstance(events[-1], ProtocolError) and events[-1].code == 1008
    [frame] = conn.data_to_send()
    assert close_code_of(frame) == 1008
    assert conn.end == EndMode.HALF_CLOSE
    # Nothing more is read: the rest of the flood costs nothing.
    assert conn.receive_data(ping * 100, 1.5) == []


def test_the_peer_close_forgets_our_ping_and_a_coalesced_pong() -> None:
    conn = Connection(limits=LIMITS)  # burst 2, 1 per second, close_timeout 10
    conn.send_ping(b"p", 0.0, 5.0)
    assert conn.awaiting_pong and conn.deadline == 5.0
    ping = client_frame(PING, b"a")
    conn.receive_data(ping * 3, 0.0)  # the third one's pong is due at t=1
    conn.data_to_send()
    assert conn.deadline == 1.0
    assert conn.receive_data(PEER_CLOSE_1001, 0.5) == [CloseReceived(1001, "")]
    # Only the close timeout is left: no pong awaited, none answered.
    assert not conn.awaiting_pong and conn.deadline == 10.5
    [reply] = conn.data_to_send()
    assert close_code_of(reply) == 1001
    conn.on_deadline(1.0)
    assert conn.data_to_send() == []


def test_no_pong_once_closing() -> None:
    conn = Connection(limits=LIMITS)
    conn.send_close(1000, "", 0.0)
    assert conn.receive_data(client_frame(PING, b"x"), 0.0) == [Ping(b"x")]
    assert conn.data_to_send() == []


def test_pong_events_still_reach_the_driver() -> None:
    conn = Connection(limits=LIMITS)
    assert conn.receive_data(client_frame(PONG, b"hb"), 0.0) == [Pong(b"hb")]


@pytest.mark.parametrize("pong_timeout", [0.0, 5.0])
def test_the_pong_to_our_ping_carries_the_round_trip_time(pong_timeout: float) -> None:
    conn = Connection(limits=LIMITS)
    conn.send_ping(b"seq-1", 10.0, pong_timeout)
    # Unsolicited, or not the payload we sent: no round-trip time.
    (other,) = conn.receive_data(client_frame(PONG, b"seq-0"), 10.1)
    assert other.rtt is None
    (answer,) = conn.receive_data(client_frame(PONG, b"seq-1"), 10.25)
    assert answer == Pong(b"seq-1") and answer.rtt == pytest.approx(0.25)
    assert not conn.awaiting_pong
    # Answered once: the same pong again is just a pong.
    (again,) = conn.receive_data(client_frame(PONG, b"seq-1"), 10.5)
    assert again.rtt is None


def test_limits_are_read_when_used() -> None:
    limits = ConnectionLimits(close_timeout=10.0)
    conn = Connection(limits=limits)
    limits.close_timeout = 2.5
    conn.send_close(1000, "", 1.0)
    assert conn.deadline == 3.5


# ------------------------------------------------------- frames per message


def fragmented(frames: int, payload: bytes = b"") -> bytes:
    data = client_frame(BINARY, payload, fin=False)
    data += b"".join(client_frame(CONT, payload, fin=False) for _ in range(frames - 2))
    return data + client_frame(CONT, payload)


def test_a_message_may_have_one_frame_per_64_bytes_of_max_payload() -> None:
    conn = Connection(max_payload=128 * 1024)  # 2,048 frames
    assert conn.receive_data(fragmented(2048, b"x")) == [b"x" * 2048]
    events = Connection(max_payload=128 * 1024).receive_data(fragmented(2049))
    assert isinstance(events[-1], ProtocolError) and events[-1].code == 1009


def test_empty_fragments_cannot_run_forever() -> None:
    # The attack: one message of a million empty continuation frames.
    conn = Connection(max_payload=131072 * 20)  # the hub's default: 40,960 frames
    chunk = b"".join(client_frame(CONT, b"", fin=False) for _ in range(4096))
    events = conn.receive_data(client_frame(TEXT, b"", fin=False))
    for _ in range(20):
        events += conn.receive_data(chunk)
        if events:
            break
    assert isinstance(events[-1], ProtocolError) and events[-1].code == 1009
    assert "frames" in events[-1].reason


def test_small_limits_still_allow_1024_frames() -> None:
    conn = Connection(max_payload=1024)
    assert conn.receive_data(fragmented(1024, b"")) == [b""]


# ----------------------------------- a Close decoded elsewhere (the ASGI driver)


def test_a_close_decoded_by_someone_else_drives_the_same_lifecycle() -> None:
    conn = Connection(limits=LIMITS)
    conn.receive_close(4001, "bye", 1.0)
    assert conn.state == CLOSE_RECEIVED and conn.deadline == 11.0
    [reply] = conn.data_to_send()
    assert close_code_of(reply) == 4001 and conn.end == EndMode.CLOSE
    lost = conn.connection_lost()
    assert (lost.code, lost.reason, lost.was_clean) == (4001, "bye", True)
    # Our Close answered: clean, with the code the peer echoed.
    conn = Connection(limits=LIMITS)
    conn.send_close(1001, "going", 0.0)
    conn.receive_close(1001, "going", 0.5)
    assert conn.state == CLOSED and conn.end == EndMode.CLOSE
    assert conn.connection_lost().was_clean
