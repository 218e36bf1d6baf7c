"""One rule for what a plain response carries, on HTTP/1.1 and HTTP/2 alike (RFC 9110)."""

from __future__ import annotations

import pytest

from wshub.protocol.http import frame_http1, frame_http2, refusal, switching_protocols


def split_http1(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(": ")
        fields[name.lower()] = value
    return status_line, fields, body


@pytest.mark.parametrize("status", [204, 304, 100, 103])
def test_no_body_and_no_length_where_the_status_forbids_a_body(status: int) -> None:
    line, fields, body = split_http1(frame_http1(status, [("X-A", "1")], b"ignored"))
    assert line.startswith(f"HTTP/1.1 {status} ")
    assert body == b"" and "content-length" not in fields and fields["x-a"] == "1"
    block, body2 = frame_http2(status, [("X-A", "1")], b"ignored")
    assert body2 == b"" and ("content-length" not in dict(block))
    assert block[0] == (":status", str(status))


def test_head_gets_the_length_of_the_get_and_no_body() -> None:
    _, fields, body = split_http1(frame_http1(200, [], b"hello", method="HEAD"))
    assert fields["content-length"] == "5" and body == b""
    block, body2 = frame_http2(200, [], b"hello", method="HEAD")
    assert dict(block)["content-length"] == "5" and body2 == b""


def test_the_length_is_always_ours() -> None:
    # A handler's wrong Content-Length or a Transfer-Encoding would break the
    # framing (RFC 9112 §6.3): wshub knows the whole body.
    headers = [("Content-Length", "999"), ("Transfer-Encoding", "chunked")]
    _, fields, body = split_http1(frame_http1(200, headers, b"abc"))
    assert fields["content-length"] == "3" and "transfer-encoding" not in fields
    assert body == b"abc"


def test_http2_drops_connection_specific_fields_and_lowers_names() -> None:
    headers = [("Connection", "close"), ("Keep-Alive", "x"), ("Upgrade", "y"), ("X-Ok", "1")]
    block, _ = frame_http2(200, headers, b"")
    names = [k for k, _ in block]
    assert names == [":status", "x-ok", "content-length"]


def test_connection_close_when_not_kept_alive() -> None:
    _, fields, _ = split_http1(frame_http1(400, [], b"x", keep_alive=False))
    assert fields["connection"] == "close"


def test_refusal_is_plain_text_with_the_extra_fields() -> None:
    headers, body = refusal(426, "unsupported WebSocket version", [("Sec-WebSocket-Version", "13")])
    assert body == b"unsupported WebSocket version\n"
    assert ("Sec-WebSocket-Version", "13") in headers
    assert headers[0] == ("Content-Type", "text/plain; charset=utf-8")


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [("Set-Cookie", "wshub=x.1.y; Path=/")],
        [("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Extensions", "permessage-deflate")],
    ],
)
def test_the_101_carries_the_accept_key_and_each_field_once(fields: list[tuple[str, str]]) -> None:
    # RFC 6455 §4.2.2: the status line, Upgrade, Connection, the accept key,
    # then the hub's fields in their order, and the empty line.
    want = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        + b"".join(f"\r\n{name}: {value}".encode("latin-1") for name, value in fields)
        + b"\r\n\r\n"
    )
    assert switching_protocols(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", fields) == want
