"""Log in with FastAPI, then open a wshub WebSocket with the same session cookie.

Run it from this directory::

    uvicorn auth_fastapi:app --port 8000

``POST /login`` with ``{"user": "alice", "password": "wonderland"}`` sets a
signed, HttpOnly session cookie; ``GET /me`` reads it back.  The browser
sends the same cookie with its WebSocket handshake to ``/live``, and the
hub's handshake hook checks it with the same function before accepting.
FastAPI and the hub run in one process: ``app = ws.asgi(api)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time

from fastapi import Cookie, FastAPI, HTTPException
from fastapi import Response as FastAPIResponse
from pydantic import BaseModel

from wshub import Handshake, Response, WebSocket

# Set SESSION_SECRET to keep sessions valid across restarts and processes.
SECRET = os.environ.get("SESSION_SECRET", "").encode() or secrets.token_bytes(32)
SESSION_SECONDS = 3600
PASSWORDS = {"alice": "wonderland"}  # a real application keeps password hashes


def sign(user: str, expires: int) -> str:
    """A session cookie value: ``user:expires:HMAC``."""
    mac = hmac.new(SECRET, f"{user}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{user}:{expires}:{mac}"


def session_user(cookie: str | None) -> str | None:
    """The user of a genuine, unexpired session cookie; otherwise None."""
    cookie = cookie or ""
    parts = cookie.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    user, expires = parts[0], int(parts[1])
    if hmac.compare_digest(sign(user, expires), cookie) and expires > time.time():
        return user
    return None


# ------------------------------------------------------------- FastAPI side
api = FastAPI(title="login + WebSocket")


class Login(BaseModel):
    user: str
    password: str


@api.post("/login")
def login(form: Login, response: FastAPIResponse) -> dict[str, str]:
    expected = PASSWORDS.get(form.user, "")
    if not (expected and hmac.compare_digest(expected, form.password)):
        raise HTTPException(403, "wrong user or password")
    expires = int(time.time()) + SESSION_SECONDS
    response.set_cookie(
        "session", sign(form.user, expires), max_age=SESSION_SECONDS, httponly=True, samesite="lax"
    )
    return {"user": form.user}


@api.get("/me")
def me(session: str | None = Cookie(default=None)) -> dict[str, str]:
    user = session_user(session)
    if user is None:
        raise HTTPException(403, "log in first")
    return {"user": user}


# ---------------------------------------------------------------- hub side
def check(hs: Handshake) -> Response | None:
    """Accept only a handshake that carries a valid session cookie."""
    user = session_user(hs.cookies.get("session"))
    if user is None:
        return Response.text(403, "log in first: POST /login\n")
    hs.data = {"user": user}
    return None


# allow_origin stays at its default: only pages of this origin may connect,
# so another site cannot open a WebSocket that rides on the user's cookie.
ws = WebSocket(on_handshake=check)


@ws.on("/live")
def live(client_id: str, data: str | bytes) -> None:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    ws.send(client_id, json.dumps({**ws.data(client_id), "text": data}))


app = ws.asgi(api)  # WebSockets to the hub, everything else to FastAPI
