"""The browser client of ``wshub.v1`` (``wshub/static/wshub-client.js``), served over HTTP.

The module is a file of the package; :func:`serve_client` makes an
:class:`~wshub.HttpServer` answer it at a path of its own, so that a page
served by (or through) the same server imports it::

    from wshub import HttpServer, WebSocket
    from wshub.browser import serve_client

    server = HttpServer(my_pages)
    ws = WebSocket(server, pubsub=True)
    serve_client(server)  # GET /wshub-client.js

and in the page: ``import { connect } from "/wshub-client.js"``.  Behind
another server (ASGI, nginx, a bundler) take the file from
:func:`client_file` instead.  See docs/guides/browser-client.md.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from typing import TYPE_CHECKING

from .http import Request, Response

if TYPE_CHECKING:
    from .transport.server import HttpServer

    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["CLIENT_PATH", "ClientScript", "client_file", "client_types_file", "serve_client"]

#: Where :func:`serve_client` answers the module by default.
CLIENT_PATH = "/wshub-client.js"


def client_file() -> Traversable:
    """The installed ``wshub-client.js`` (an ES module)."""
    return resources.files("wshub").joinpath("static/wshub-client.js")


def client_types_file() -> Traversable:
    """Its TypeScript declarations, ``wshub-client.d.ts``."""
    return resources.files("wshub").joinpath("static/wshub-client.d.ts")


class ClientScript:
    """An HTTP handler answering ``GET`` (and ``HEAD``) with the module.

    The file is read once.  It is sent with ``Cache-Control: no-cache`` and
    an ``ETag``, so a browser revalidates it (a ``304`` without a body) and
    picks up a new version after an upgrade of wshub.
    """

    __slots__ = ("body", "etag")

    def __init__(self) -> None:
        self.body = client_file().read_bytes()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "Method Not Allowed\n", [("Allow", "GET, HEAD")])
        headers = [
            ("ETag", self.etag),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        given = request.headers.get("if-none-match", "")
        if self.etag in (tag.strip() for tag in given.split(",")) or given.strip() == "*":
            return Response(b"", 304, headers)
        body = self.body if request.method == "GET" else b""
        return Response(body, 200, headers, "text/javascript; charset=utf-8")


def serve_client(server: HttpServer, path: str = CLIENT_PATH) -> None:
    """Make ``server`` answer ``path`` with the browser client (before its ``handler``)."""
    server.add_endpoint(path, ClientScript())
