"""Stateless frame pieces (RFC 6455 §5): masking, frame building, close payloads."""

from __future__ import annotations

import struct

import pytest

from wshub.protocol import frames
from wshub.protocol.frames import (
    CloseCode,
    InvalidClosePayload,
    build_frame,
    build_frame_header,
    close_payload,
    is_valid_close_code,
    parse_close_payload,
)


def naive_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("impl", ["python", "active"])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 8, 9, 63, 64, 65, 511, 512, 513, 515, 1000, 4099])
def test_apply_mask_matches_the_rfc_definition(impl: str, n: int) -> None:
    # RFC 6455 §5.3: octet i of the output is octet i of the input XOR mask[i % 4].
    apply = frames._apply_mask_py if impl == "python" else frames.apply_mask
    data = bytes((i * 37 + 11) & 0xFF for i in range(n))
    mask = b"\x01\x80\xfe\x7f"
    assert apply(data, mask) == naive_mask(data, mask)
    assert apply(apply(data, mask), mask) == data
    assert apply(bytearray(data), mask) == naive_mask(data, mask)
    assert apply(memoryview(data), mask) == naive_mask(data, mask)


def test_rfc_example_masked_hello() -> None:
    # RFC 6455 §5.7: a single-frame masked text message "Hello".
    wire = bytes.fromhex("818537fa213d7f9f4d5158")
    assert frames.apply_mask(wire[6:], wire[2:6]) == b"Hello"


@pytest.mark.parametrize(
    ("n", "header_len", "marker"),
    [(0, 2, 0), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)],
)
def test_build_frame_length_encodings(n: int, header_len: int, marker: int) -> None:
    payload = b"x" * n
    frame = build_frame(frames.OP_BINARY, payload)
    assert frame[0] == 0x82
    assert frame[1] == marker  # no mask bit: servers never mask (RFC 6455 §5.1)
    assert frame[header_len:] == payload
    if marker == 126:
        assert struct.unpack("!H", frame[2:4])[0] == n
    elif marker == 127:
        assert struct.unpack("!Q", frame[2:10])[0] == n
    assert build_frame_header(frames.OP_BINARY, n) == frame[:header_len]


def test_build_frame_flags() -> None:
    assert build_frame(frames.OP_TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")  # RFC §5.7
    assert build_frame(frames.OP_TEXT, b"Hel", fin=False) == bytes.fromhex("010348656c")
    assert build_frame(frames.OP_CONTINUATION, b"lo")[0] == 0x80
    assert build_frame(frames.OP_TEXT, b"", rsv1=True)[0] == 0xC1
    assert build_frame(frames.OP_PING, b"Hello") == bytes.fromhex("890548656c6c6f")


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert is_valid_close_code(code)
    assert parse_close_payload(struct.pack("!H", code) + b"bye") == (code, "bye")


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_invalid_close_codes(code: int) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(InvalidClosePayload) as info:
        parse_close_payload(struct.pack("!H", code))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_close_payload_edge_cases() -> None:
    assert parse_close_payload(b"") == (1005, "")
    with pytest.raises(InvalidClosePayload) as one_byte:
        parse_close_payload(b"\x03")
    assert one_byte.value.code == 1002
    with pytest.raises(InvalidClosePayload) as bad_utf8:
        parse_close_payload(b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")
    assert bad_utf8.value.code == 1007
    assert parse_close_payload(b"\x03\xe8\xce\xba\xe1\xbd\xb9") == (1000, "\u03ba\u1f79")


def test_close_payload_building_truncates_on_a_character_boundary() -> None:
    assert close_payload(None) == b""
    assert close_payload(1000) == b"\x03\xe8"
    assert close_payload(4000, "ok") == b"\x0f\xa0ok"
    long = close_payload(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(long) <= 125
    code, reason = parse_close_payload(long)
    assert code == 1000 and reason == "é" * 61
