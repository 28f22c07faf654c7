"""Headless Chromium for the browser tests (imported as a plain module, like utils.py).

The browser is Debian's ``chromium`` package driven by Playwright for Python; Playwright's own
browser downloads are never used (``.ci/run`` installs the Debian package). Where either is missing
the tests skip and say which one and how to install it, and ``make test`` repeats that in its last
line; where ``DENSFLOW_REQUIRE_BROWSER=1`` (CI sets it) they fail instead, so that CI never passes
without them.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing a browser does on its own: no update checks, sync or background traffic.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def skip_without_browser() -> None:
    """Skip the calling test, with the reason, unless Chromium and Playwright are both installed
    (fail instead where ``DENSFLOW_REQUIRE_BROWSER=1``)."""
    missing = pytest.fail if os.environ.get("DENSFLOW_REQUIRE_BROWSER") == "1" else pytest.skip
    if not CHROMIUM.exists():
        found = shutil.which("chromium")
        missing(
            f"no Chromium at {CHROMIUM}"
            + (f" (the one at {found} is not used: these tests run Debian's)" if found else "")
            + ": install it with `apt-get install -y --no-install-recommends chromium`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("Playwright for Python is missing: `pip install -e '.[docs]'` installs it")


@contextlib.contextmanager
def chromium() -> Iterator:
    """A Playwright browser on the installed Chromium, closed on exit."""
    skip_without_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A browser leaving a page closes the connections still loading it: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a browser refuses fonts from file:// pages);
    yields the base URL, ending in a slash."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
