"""Option defaults (the seed's), properties, and TypeError/ValueError on bad values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from wshub import DeflateOptions, HttpServer, WebSocket


def test_defaults_equal_the_seeds() -> None:
    ws = WebSocket()
    assert ws.allow_origin is None
    assert ws.encoding == "utf8"
    assert ws.limit_by_ip == 256
    assert ws.max_payload == 131072 * 20
    assert ws.ping_delay == 180.0  # 3 * 60 * 1000 ms
    assert ws.pong_timeout == 5.0
    assert ws.session_expires == 43200.0  # 12 h
    assert ws.per_message_deflate is True
    assert ws.trusted_proxies == []
    assert ws.clients == []


def test_options_are_properties() -> None:
    ws = WebSocket(allow_origin=["https://a.example"], encoding="hex", limit_by_ip=3)
    assert ws.allow_origin == ["https://a.example"]
    assert ws.encoding == "hex"
    assert ws.limit_by_ip == 3
    ws.allow_origin = "*"
    ws.encoding = "base64"
    ws.limit_by_ip = 0
    ws.max_payload = 10
    ws.ping_delay = 0
    ws.pong_timeout = 1.5
    ws.session_expires = -1
    ws.per_message_deflate = DeflateOptions(level=1)
    ws.trusted_proxies = ["10.0.0.0/8"]
    ws.secret = "another secret"
    assert (ws.allow_origin, ws.encoding, ws.limit_by_ip, ws.max_payload) == ("*", "base64", 0, 10)
    assert (ws.ping_delay, ws.pong_timeout, ws.session_expires) == (0, 1.5, -1)
    assert ws.per_message_deflate == DeflateOptions(level=1)
    assert ws.trusted_proxies == ["10.0.0.0/8"]


BAD_VALUES: list[tuple[str, Any, type[Exception]]] = [
    ("allow_origin", 42, TypeError),
    ("allow_origin", ["not an origin"], ValueError),
    ("allow_origin", [42], TypeError),
    ("encoding", "latin9", ValueError),
    ("encoding", 8, TypeError),
    ("limit_by_ip", "256", TypeError),
    ("limit_by_ip", 2.5, TypeError),
    ("limit_by_ip", True, TypeError),
    ("max_payload", "big", TypeError),
    ("max_payload", None, TypeError),
    ("ping_delay", "3", TypeError),
    ("ping_delay", math.nan, ValueError),
    ("pong_timeout", None, TypeError),
    ("pong_timeout", math.nan, ValueError),
    ("session_expires", [1], TypeError),
    ("session_expires", math.nan, ValueError),
    ("per_message_deflate", "yes", TypeError),
    ("trusted_proxies", "10.0.0.1", TypeError),
    ("trusted_proxies", ["not an ip"], ValueError),
    ("secret", b"", ValueError),
    ("secret", 42, TypeError),
    ("close_timeout", 0, ValueError),
    ("close_timeout", "1", TypeError),
]


@pytest.mark.parametrize(("name", "value", "error"), BAD_VALUES)
def test_bad_values_raise_in_the_setter(name: str, value: Any, error: type[Exception]) -> None:
    ws = WebSocket()
    before = getattr(ws, name)
    with pytest.raises(error):
        setattr(ws, name, value)
    assert getattr(ws, name) == before  # unchanged


@pytest.mark.parametrize(("name", "value", "error"), BAD_VALUES)
def test_bad_values_raise_in_the_constructor(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        WebSocket(**{name: value})


def test_write_limits_and_cookie_name() -> None:
    with pytest.raises(ValueError):
        WebSocket(write_high=10, write_low=20)
    with pytest.raises(TypeError):
        WebSocket(write_high="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        WebSocket(cookie_name="bad name;")


def test_one_hub_per_server() -> None:
    server = HttpServer()
    WebSocket(server)
    with pytest.raises(RuntimeError):
        WebSocket(server)
