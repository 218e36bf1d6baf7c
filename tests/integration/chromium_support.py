"""Headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) for browser tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    # No DNS look-ups: everything but our loopback address fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A launched Playwright ``Browser``; fails the test, saying why, when it cannot start."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run 'make test' as root (it apt-installs chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run 'make venv'")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
