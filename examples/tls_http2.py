"""An echo server over TLS that browsers reach through HTTP/2 (RFC 8441) or HTTP/1.1.

Run::

    python examples/tls_http2.py                        # https://127.0.0.1:8443 (self-signed)
    python examples/tls_http2.py --certfile cert.pem --keyfile key.pem
    python examples/tls_http2.py --port 0               # any free port (printed)

One port, ALPN decides: a browser that loaded the page over HTTP/2 opens
its ``wss://`` WebSocket as a stream of that same connection (the server
answers the extended CONNECT with 200); an HTTP/1.1 client gets the usual
101.  The page shows which one it was.  Without ``--certfile`` a throw-away
certificate for 127.0.0.1/localhost is made at start (it needs the
``cryptography`` package: ``pip install wshub[tls]``); the browser will
warn about it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

from wshub import HttpServer, Request, Response, WebSocket

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>wshub over TLS</title>
<h1>wshub over TLS</h1>
<p>This page came over <b id="proto">?</b>; the WebSocket says: <b id="echo">...</b></p>
<script>
const nav = performance.getEntriesByType("navigation")[0];
document.getElementById("proto").textContent = nav ? nav.nextHopProtocol : "unknown";
const socket = new WebSocket(`wss://${location.host}/echo`);
socket.onopen = () => socket.send("hello over " + (nav ? nav.nextHopProtocol : "?"));
socket.onmessage = (e) => { document.getElementById("echo").textContent = e.data; };
</script>
"""


def page(request: Request) -> Response:
    if request.path == "/":
        body = PAGE.replace('<b id="proto">?</b>', f'<b id="proto">HTTP/{request.http_version}</b>')
        return Response(body, content_type="text/html; charset=utf-8")
    return Response.text(404, "Not Found\n")


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    if certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        return ctx
    from wshub.tls import self_signed_context

    return self_signed_context()


server = HttpServer(page)
ws = WebSocket(server)


@ws.on("/echo")
def echo(client_id: str, data: str | bytes) -> None:
    ws.send(client_id, data)


async def main(host: str, port: int, ctx: ssl.SSLContext) -> None:
    await server.serve(host, port, ssl=ctx)  # offers ALPN h2 and http/1.1
    print(f"echo on https://{host}:{server.port}/ (wss://{host}:{server.port}/echo)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()  # every client, on every stream, gets a 1001 close first


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, tls_context(args.certfile, args.keyfile)))
