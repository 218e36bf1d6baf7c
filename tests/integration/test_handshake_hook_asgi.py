"""The ``on_handshake`` hook and subprotocols under real ASGI servers (uvicorn, Hypercorn).

The application is tests/integration/asgi_hook_app.py: an async hook that
admits ``?token=good``, refuses the rest with 401 (through the WebSocket
Denial Response extension, which both servers offer) and never answers
on ``/stuck`` (cut at the adapter's handshake_timeout).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.asgi_servers import AsgiServer, start

APP = "tests.integration.asgi_hook_app:app"


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def server(request: pytest.FixtureRequest) -> Iterator[AsgiServer]:
    srv = start(str(request.param), APP)
    yield srv
    srv.stop()


def connect(srv: AsgiServer, path: str, **kwargs: Any) -> Any:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(srv.url + path, **kwargs)


async def refusal(srv: AsgiServer, path: str) -> Any:
    """The HTTP response of a refused handshake, as the websockets client got it."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(srv, path):
            pass
    return info.value.response


async def test_admitted_once_with_data_request_and_subprotocol(server: AsgiServer) -> None:
    async with connect(
        server,
        "/room?token=good",
        subprotocols=["chat.v1", "chat.v2"],
        additional_headers={"Cookie": "sid=abc"},
    ) as client:
        assert client.subprotocol == "chat.v1"  # the client's first offer the hub speaks
        assert client.response.headers["X-Hooked"] == "yes"
        assert client.response.headers.get_all("Sec-WebSocket-Protocol") == ["chat.v1"]
        report = json.loads(await asyncio.wait_for(client.recv(), 10))
    assert report["data"] == {"user": "alice"}
    assert report["subprotocol"] == "chat.v1"
    assert report["path"] == "/room" and report["method"] == "GET"
    assert report["http_version"] in ("1.1", "1.0")
    assert report["cookies"] == {"sid": "abc"}
    assert report["client"] == "127.0.0.1"
    assert report["calls"] == 1  # the hook ran once for this connection


async def test_no_offer_no_subprotocol(server: AsgiServer) -> None:
    async with connect(server, "/plain?token=good") as client:
        assert client.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in client.response.headers
        report = json.loads(await asyncio.wait_for(client.recv(), 10))
    assert report["subprotocol"] is None


async def test_refusal_through_the_denial_extension(server: AsgiServer) -> None:
    response = await refusal(server, "/room?token=bad")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="t"'
    assert bytes(response.body) == b"who are you?\n"


async def test_a_hook_that_never_answers_is_cut_at_the_handshake_timeout(
    server: AsgiServer,
) -> None:
    response = await refusal(server, "/stuck")
    assert response.status_code == 503
    # The server goes on serving.
    async with connect(server, "/after?token=good") as client:
        report = json.loads(await asyncio.wait_for(client.recv(), 10))
    assert report["calls"] == 1


async def test_an_exception_in_the_hook_is_a_500_and_the_server_goes_on(
    server: AsgiServer,
) -> None:
    token = "s3cr3t-asgi-t0ken"
    response = await refusal(server, f"/boom?token={token}")
    assert response.status_code == 500
    assert b"own bug" not in bytes(response.body) and b"Traceback" not in bytes(response.body)
    async with connect(server, "/after-boom?token=good") as client:
        report = json.loads(await asyncio.wait_for(client.recv(), 10))
    assert report["data"] == {"user": "alice"}
    # wshub's line names the path, never the query's token (the ASGI
    # server's own access log is its business).
    output = server.output()
    [line] = [ln for ln in output.splitlines() if "error in the WebSocket handshake" in ln]
    assert "/boom" in line and token not in line
    assert "the hook's own bug" in output  # the traceback is in the server log
    assert server.proc.poll() is None


async def test_a_hook_cancelled_under_it_is_a_500(server: AsgiServer) -> None:
    response = await refusal(server, "/cancelled")
    assert response.status_code == 500
    async with connect(server, "/after-cancelled?token=good") as client:
        report = json.loads(await asyncio.wait_for(client.recv(), 10))
    assert report["data"] == {"user": "alice"}
    assert "Exception in ASGI application" not in server.output()
