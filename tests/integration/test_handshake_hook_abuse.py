"""The handshake hook under attack.

* A token in the query (``?token=...``, the way browsers pass one) never
  reaches the server log, whatever becomes of the handshake: the hook
  fails (500), refuses (401), does not answer in time (503), or a guard
  refuses before it (origin 403, per-IP 429), over HTTP/1.1 and HTTP/2;
  nor does the ``repr`` of a ``Handshake``.

Real peers: the ``websockets`` client, the ``h2`` client.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import StartServer, wait_for
from tests.integration.h2_client_support import H2Client
from wshub import Handshake, HttpServer, Response, WebSocket

TOKEN = "s3cr3t-t0ken-4711"


def connect(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(url, **kwargs)


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    return int(info.value.response.status_code)


def upgrade_head(port: int, path: str = "/", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


async def raw_answer(port: int, head: bytes) -> bytes:
    """The response head to a raw request (the connection is closed after)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


def log_text(records: list[logging.LogRecord]) -> str:
    """Everything a handler could write of these records: message, fields, traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(value) for value in record.__dict__.values())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture
def all_refusals_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal lines are rate-limited for the process: not in these tests,
    whose point is what each line holds."""
    monkeypatch.setattr(logging.getLogger("wshub.refusals"), "filters", [])


# ----------------------------------------------------- a token in the query


def failing_hook(hs: Handshake) -> Response | None:
    if hs.path == "/boom":
        raise RuntimeError("the hook's own bug")
    if hs.path == "/deny":
        return Response.text(401, "no\n", [("WWW-Authenticate", "Bearer")])
    return None


async def stuck_on_slow(hs: Handshake) -> None:
    if hs.path == "/slow":
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("hook-exception", 500),
        ("hook-refusal", 401),
        ("hook-timeout", 503),
        ("origin", 403),
        ("per-ip-at-upgrade", 429),
        ("per-ip-at-connect", 429),
    ],
)
@pytest.mark.usefixtures("all_refusals_logged")
async def test_a_token_in_the_query_never_reaches_the_log(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, case: str, status: int
) -> None:
    options: dict[str, Any] = {"on_handshake": failing_hook}
    path, headers = "/", {}
    if case == "hook-exception":
        path = "/boom"
    elif case == "hook-refusal":
        path = "/deny"
    elif case == "hook-timeout":
        path = "/slow"
        options = {"on_handshake": stuck_on_slow, "server_options": {"handshake_timeout": 0.3}}
    elif case == "origin":
        options["allow_origin"] = "https://app.example"
        headers["Origin"] = "https://evil.example"
    elif case == "per-ip-at-upgrade":
        # Behind a trusted proxy the limit is checked at the upgrade, where
        # the request (and its target) is known.
        options.update(limit_by_ip=1, trusted_proxies=["127.0.0.1"])
        headers["X-Forwarded-For"] = "203.0.113.9"
    else:
        options["limit_by_ip"] = 1
    srv = await start_server(**options)
    caplog.set_level(logging.DEBUG, logger="wshub")
    url = f"{srv.url}{path}?user=alice&token={TOKEN}"
    if case.startswith("per-ip"):
        # The client holding the one slot comes without a token: the lines
        # under test are those of the refused one.
        async with connect(f"{srv.url}{path}", additional_headers=headers):
            assert await refused_status(url, additional_headers=headers) == status
    else:
        assert await refused_status(url, additional_headers=headers) == status
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    records = [r for r in caplog.records if r.name.startswith("wshub")]
    refusal_lines = [r for r in records if f"{status}" in r.getMessage()]
    assert refusal_lines, f"no log line for the {status}"
    assert TOKEN not in log_text(records)
    if case == "hook-exception":
        [error] = [r for r in records if r.levelno >= logging.ERROR]
        assert "/boom" in error.getMessage()  # the path is still there to debug with


async def test_a_token_in_the_query_never_reaches_the_log_over_http2(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("wshub.refusals"), "filters", [])
    server = HttpServer()
    WebSocket(server, on_handshake=failing_hook)
    await server.serve("127.0.0.1", 0)
    caplog.set_level(logging.DEBUG, logger="wshub")
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        boom = await c.open_ws(f"/boom?token={TOKEN}", authority=authority, scheme="http")
        deny = await c.open_ws(f"/deny?token={TOKEN}", authority=authority, scheme="http")
        assert (await c.response(boom)).status == 500
        assert (await c.response(deny)).status == 401
        await c.close()
    finally:
        await server.close(timeout=2.0)
    records = [r for r in caplog.records if r.name.startswith("wshub")]
    assert [r for r in records if r.levelno >= logging.ERROR and "/boom" in r.getMessage()]
    assert TOKEN not in log_text(records)


async def test_the_repr_of_a_handshake_leaves_the_query_out(start_server: StartServer) -> None:
    """``log.info("%r", hs)`` in an application's hook must not write the token."""
    seen: list[str] = []
    srv = await start_server(on_handshake=lambda hs: seen.append(repr(hs)))
    async with connect(f"{srv.url}/chat?token={TOKEN}"):
        pass
    [text] = seen
    assert TOKEN not in text and "'/chat'" in text
