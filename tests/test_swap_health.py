"""The swap's health check against a real HTTP server on loopback: 200, or a
redirect to HTTPS (idr:httpsRedirect), is healthy; anything else is not."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from operations.swap import http_ok

ANSWERS = {
    "/ok": (200, None), "/to-https": (301, "https://idr.example.org/to-https"),
    "/to-http": (302, "http://elsewhere.example.org/"), "/maintenance": (503, None),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status, location = ANSWERS[self.path]
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.mark.parametrize("path,healthy", [("/ok", True), ("/to-https", True), ("/to-http", False),
                                          ("/maintenance", False)])
def test_health_check(server, path, healthy):
    ok, message = http_ok("127.0.0.1", server, path, timeout=5)
    assert ok == healthy, message
    assert message.startswith(f"http://127.0.0.1:{server}{path} answered ")
