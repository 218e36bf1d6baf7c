"""Opening handshake checks (RFC 6455 §4.2, RFC 8441 §4-5), on header dicts."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wshub.protocol.handshake import (
    HandshakeError,
    Headers,
    accept_key,
    add_header,
    check_h2_connect,
    check_http1_upgrade,
    header_tokens,
    is_websocket_upgrade,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3


def headers(**overrides: str | None) -> Headers:
    base: dict[str, str | None] = {
        "host": "server.example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
    }
    for name, value in overrides.items():
        base[name.replace("_", "-")] = value
    return {k: v for k, v in base.items() if v is not None}


def refused(method: str = "GET", version: str = "1.1", **overrides: str | None) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        check_http1_upgrade(method, version, headers(**overrides))
    return info.value


def test_accept_key_from_the_rfc_example() -> None:
    # RFC 6455 §1.3.
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_version_13_upgrade() -> None:
    info = check_http1_upgrade(
        "GET",
        "1.1",
        headers(origin="http://example.com", sec_websocket_extensions="permessage-deflate"),
    )
    assert info.version == 13
    assert info.key == KEY
    assert info.origin == "http://example.com"
    assert info.extensions == "permessage-deflate"


def test_version_8_upgrade_and_its_origin_header() -> None:
    # hybi-08 sent Sec-WebSocket-Origin instead of Origin.
    info = check_http1_upgrade(
        "GET", "1.1", headers(sec_websocket_version="8", sec_websocket_origin="http://a.example")
    )
    assert info.version == 8
    assert info.origin == "http://a.example"


def test_header_tokens_are_case_insensitive_lists() -> None:
    info = check_http1_upgrade(
        "GET", "1.1", headers(connection="keep-alive, UPGRADE", upgrade="WebSocket")
    )
    assert info.version == 13
    assert header_tokens(" a, B ,,c ") == ["a", "b", "c"]
    assert is_websocket_upgrade({"upgrade": "h2c, websocket"})
    assert not is_websocket_upgrade({"upgrade": "h2c"})
    assert not is_websocket_upgrade({})


@pytest.mark.parametrize("version", ["7", "12", "14", "0", "abc", "13, 8", "-13", ""])
def test_other_versions_get_426_with_the_versions_we_speak(version: str) -> None:
    error = refused(sec_websocket_version=version)
    assert error.status == 426
    assert ("Sec-WebSocket-Version", "13, 8") in error.headers
    assert error.reason


# Digits of other scripts: str.isdigit() says yes to all of them, int() reads
# "١٣" (Arabic-Indic), full-width "\uff11\uff13" and "߁߃" (NKo) as 13 and
# refuses "¹³" (superscripts) with a ValueError.  None of them is a version.
UNICODE_DIGITS = [
    "١٣", "۱۳", "१३", "\uff11\uff13", "߁߃", "¹³", "١٣, 8", "٨", "1\uff13", "\uff1013",
]  # fmt: skip


@pytest.mark.parametrize("version", UNICODE_DIGITS)
def test_other_scripts_digits_are_not_a_version(version: str) -> None:
    # Issue #15: these got a 101 as version 13 (or a 500 for "¹³").  RFC
    # 6455 §4.4: a version we do not speak gets 426 and the ones we do, as
    # "abc" or "7" above.
    error = refused(sec_websocket_version=version)
    assert error.status == 426
    assert ("Sec-WebSocket-Version", "13, 8") in error.headers


@pytest.mark.parametrize("version", ["013", "+13", "1_3", " 13\x0b", "13\xa0", "13 13"])
def test_only_the_exact_spelling_of_a_version(version: str) -> None:
    # int() takes all of these but the last; only OWS (SP, HTAB) is trimmed.
    assert refused(sec_websocket_version=version).status == 426
    info = check_http1_upgrade("GET", "1.1", headers(sec_websocket_version=" 8\t"))
    assert info.version == 8


@settings(max_examples=300, deadline=None)
@given(version=st.text(max_size=6) | st.sampled_from(UNICODE_DIGITS))
def test_any_version_text_is_13_8_or_426(version: str) -> None:
    try:
        info = check_http1_upgrade("GET", "1.1", headers(sec_websocket_version=version))
    except HandshakeError as exc:
        assert exc.status == 426
        assert version.strip(" \t") not in ("13", "8")
    else:
        assert version.strip(" \t") == str(info.version) and info.version in (13, 8)
    h2 = {"sec-websocket-version": version}
    try:
        assert check_h2_connect("CONNECT", "websocket", h2).version == 13
        assert version.strip(" \t") == "13"
    except HandshakeError as exc:
        assert exc.status == 426


@pytest.mark.parametrize(
    ("overrides", "status", "words"),
    [
        ({"sec_websocket_version": None}, 400, "Sec-WebSocket-Version"),
        ({"host": None}, 400, "Host"),
        ({"connection": None}, 400, "Connection"),
        ({"connection": "keep-alive"}, 400, "Connection"),
        ({"upgrade": "h2c"}, 400, "Upgrade"),
        ({"sec_websocket_key": None}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_key": "not base64!"}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_key": "c2hvcnQ="}, 400, "Sec-WebSocket-Key"),  # 5 bytes, not 16
        ({"sec_websocket_key": f"{KEY}, {KEY}"}, 400, "Sec-WebSocket-Key"),  # repeated
        ({"sec_websocket_key": "dGhlIHNhbXBsZSBub25jZQ"}, 400, "Sec-WebSocket-Key"),  # no pad
    ],
)
def test_malformed_upgrades_get_400_with_a_reason(
    overrides: dict[str, str | None], status: int, words: str
) -> None:
    error = refused(**overrides)
    assert error.status == status
    assert words.lower() in error.reason.lower()


def test_method_and_http_version() -> None:
    post = refused(method="POST")
    assert post.status == 405 and ("Allow", "GET") in post.headers
    old = refused(version="1.0")
    assert old.status == 400 and "HTTP/1.1" in old.reason


def test_add_header_joins_repeats() -> None:
    h: Headers = {}
    add_header(h, "Accept", "a")
    add_header(h, "ACCEPT", "b")
    add_header(h, "Cookie", "x=1")
    add_header(h, "cookie", "y=2")
    assert h == {"accept": "a, b", "cookie": "x=1; y=2"}


def test_h2_extended_connect() -> None:
    info = check_h2_connect("CONNECT", "websocket", {"sec-websocket-version": "13"})
    assert info.version == 13 and info.key is None
    cases = [
        ("GET", "websocket", "13", 405),
        ("CONNECT", None, "13", 400),
        ("CONNECT", "chat", "13", 501),
        ("CONNECT", "websocket", "8", 426),
    ]
    for method, protocol, version, status in cases:
        with pytest.raises(HandshakeError) as info_err:
            check_h2_connect(method, protocol, {"sec-websocket-version": version})
        assert info_err.value.status == status


@settings(max_examples=1000, deadline=None)
@given(
    key=st.one_of(
        st.text(alphabet="ABCxyz019+/=-_ \t.é", min_size=20, max_size=26),
        st.binary(min_size=14, max_size=18).map(lambda b: base64.b64encode(b).decode()),
    )
)
def test_key_check_is_base64_of_16_bytes(key: str) -> None:
    # The handshake checks the key with one regular expression; it must take
    # exactly the keys that base64-decode (strictly) to 16 bytes.
    try:
        decodes_to_16 = len(base64.b64decode(key.strip().encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        decodes_to_16 = False
    headers = {
        "host": "h",
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-key": key,
        "sec-websocket-version": "13",
    }
    try:
        check_http1_upgrade("GET", "1.1", headers)
        accepted = True
    except HandshakeError as exc:
        assert exc.status == 400 and "Key" in exc.reason
        accepted = False
    assert accepted == decodes_to_16
