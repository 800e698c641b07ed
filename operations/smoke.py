"""Smoke checks of an IDR environment, as IDR's operators run them (IDR's
production-tests/test_web.py and its proxy's molecule tests): the release gate.

    python -m operations.smoke --url https://idr.openmicroscopy.org
    python -m operations.smoke --stack newidr        # its floating IP, as idr:serverName

Checks, each named in a failure: `home` (the gallery page), `about` (IDR's
website at /about/, not the proxy's one-line placeholder), `mapr` (a mapr
count), `render_image` (a JPEG, with a cache-busting query so OMERO renders
it), `api_cors` (/api/v0/ with Access-Control-Allow-Origin), `websocket` (an
upgrade on /omero-ws), `thumbnail_cache` (a thumbnail answered from the
proxy's cache on the second request: X-Cache-Status HIT).

Layers: `run_checks` is the pure check (URL in, failures out: the swap calls
it); `main` reads a stack's address (observation) and prints.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

# IDR's public IDs and texts, from IDR's production tests (IDR/deployment
# ansible/production-tests/test_web.py): what a working IDR answers.
IMAGE_ID = 2850181                 # render_image/2850181/10/0/: a JPEG over 50 kB
RENDER_Z, RENDER_T = 10, 0
MIN_JPEG_BYTES = 50000
THUMBNAIL_ID = 2850181
MAPR_COUNT_PATH = "/mapr/api/organism/count/"
MAPR_MIN_COUNT = 6                 # experimenter.childCount: organisms mapr knows
HOME_TEXT = "The Image Data Resource (IDR) is a public repository"
ABOUT_TEXT = "The IDR makes datasets that have never previously been"
WEBSOCKET_PATH = "/omero-ws"
CACHE_HEADER = "X-Cache-Status"    # the proxy's $upstream_cache_status
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHECKS = ("home", "about", "mapr", "render_image", "api_cors", "websocket", "thumbnail_cache")


@dataclass(frozen=True)
class Failure:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


@dataclass(frozen=True)
class Options:
    image_id: int = IMAGE_ID
    thumbnail_id: int = THUMBNAIL_ID
    min_jpeg_bytes: int = MIN_JPEG_BYTES
    mapr_min_count: int = MAPR_MIN_COUNT
    home_text: str = HOME_TEXT
    about_text: str = ABOUT_TEXT


class _Fail(Exception):
    pass


@dataclass
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""


class _Client:
    """HTTP(S) to `base_url`'s address, with `host` as Host header and TLS
    server name (the public name, while connecting to a spare IP)."""

    def __init__(self, base_url: str, host: Optional[str], verify_tls: bool, timeout: float):
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL {base_url!r}: http:// or https:// and a host")
        self.scheme, self.address = url.scheme, url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path
        default_port = self.port == (443 if self.scheme == "https" else 80)
        self.host = host or (url.hostname if default_port else f"{url.hostname}:{self.port}")
        self.server_name = self.host.rsplit(":", 1)[0] if ":" in self.host and not self.host.endswith(
                "]") else self.host
        self.timeout = timeout
        self.context = None
        if self.scheme == "https":
            self.context = ssl.create_default_context()
            if not verify_tls:
                self.context.check_hostname, self.context.verify_mode = False, ssl.CERT_NONE

    def socket(self) -> socket.socket:
        raw = socket.create_connection((self.address, self.port), timeout=self.timeout)
        if self.context is None:
            return raw
        return self.context.wrap_socket(raw, server_hostname=self.server_name)

    def get(self, path: str, headers: Optional[dict] = None) -> _Answer:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        conn.sock = self.socket()
        try:
            conn.request("GET", self.prefix + path, headers={"Host": self.host, "User-Agent": "idr-smoke",
                                                               **(headers or {})})
            resp = conn.getresponse()
            return _Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()


def _expect(ok: bool, detail: str) -> None:
    if not ok:
        raise _Fail(detail)


def _ok(client: _Client, path: str, headers: Optional[dict] = None) -> _Answer:
    answer = client.get(path, headers)
    _expect(answer.status == 200, f"GET {path} answered {answer.status}")
    return answer


def _text(answer: _Answer) -> str:
    return answer.body.decode("utf-8", "replace")


def _jpeg(answer: _Answer, path: str, min_bytes: int) -> None:
    kind = answer.header("Content-Type").split(";")[0].strip()
    _expect(kind == "image/jpeg", f"GET {path}: Content-Type {kind or 'none'}, not image/jpeg")
    _expect(answer.body[:2] == b"\xff\xd8", f"GET {path}: the body is no JPEG")
    _expect(len(answer.body) >= min_bytes, f"GET {path}: {len(answer.body)} bytes, fewer than {min_bytes}")


def check_home(client: _Client, o: Options) -> None:
    answer = _ok(client, "/")
    _expect(o.home_text in _text(answer), f"GET / does not say {o.home_text!r} (the gallery's home page)")


def check_about(client: _Client, o: Options) -> None:
    answer = _ok(client, "/about/")
    _expect(o.about_text in _text(answer), f"GET /about/ does not say {o.about_text!r}: "
            + _text(answer).strip().splitlines()[0][:200] if answer.body.strip() else "GET /about/ is empty")


def check_mapr(client: _Client, o: Options) -> None:
    answer = _ok(client, MAPR_COUNT_PATH)
    try:
        count = json.loads(answer.body)["experimenter"]["childCount"]
    except (ValueError, KeyError, TypeError):
        raise _Fail(f"GET {MAPR_COUNT_PATH}: no experimenter.childCount in {answer.body[:200]!r}") from None
    _expect(isinstance(count, int) and count >= o.mapr_min_count,
            f"GET {MAPR_COUNT_PATH}: childCount {count!r}, expected at least {o.mapr_min_count}")


def check_render_image(client: _Client, o: Options) -> None:
    # A new query each time: the proxy's cache key is the URI, so OMERO renders it.
    path = f"/webclient/render_image/{o.image_id}/{RENDER_Z}/{RENDER_T}/?dummy={time.time_ns()}"
    _jpeg(_ok(client, path), path, o.min_jpeg_bytes)


def check_api_cors(client: _Client, o: Options) -> None:
    answer = _ok(client, "/api/v0/", {"Origin": "https://example.org"})
    allowed = answer.header("Access-Control-Allow-Origin")
    _expect(allowed in ("*", "https://example.org"), f"GET /api/v0/: Access-Control-Allow-Origin "
                                                     f"{allowed or 'missing'}")
    try:
        json.loads(answer.body)
    except ValueError:
        raise _Fail(f"GET /api/v0/: not JSON: {answer.body[:200]!r}") from None


def check_websocket(client: _Client, o: Options) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock = client.socket()
    try:
        request = (f"GET {client.prefix}{WEBSOCKET_PATH} HTTP/1.1\r\nHost: {client.host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"User-Agent: idr-smoke\r\n\r\n")
        sock.sendall(request.encode())
        reader = sock.makefile("rb")
        status_line = reader.readline().decode("latin-1").strip()
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    finally:
        sock.close()
    _expect(status_line.split()[1:2] == ["101"], f"upgrade on {WEBSOCKET_PATH} answered {status_line or 'nothing'}")
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    _expect(headers.get("sec-websocket-accept") == accept, f"upgrade on {WEBSOCKET_PATH}: wrong Sec-WebSocket-Accept")


def check_thumbnail_cache(client: _Client, o: Options) -> None:
    path = f"/webgateway/render_thumbnail/{o.thumbnail_id}/96/"
    first = _ok(client, path)
    _jpeg(first, path, 1)
    second = _ok(client, path)
    status = second.header(CACHE_HEADER)
    _expect(status == "HIT", f"GET {path} twice: {CACHE_HEADER} {status or 'missing'} on the second, not HIT")
    _expect(second.body == first.body, f"GET {path} twice: the cached answer differs")


_CHECKS: dict[str, Callable[[_Client, Options], None]] = {
    "home": check_home, "about": check_about, "mapr": check_mapr, "render_image": check_render_image,
    "api_cors": check_api_cors, "websocket": check_websocket, "thumbnail_cache": check_thumbnail_cache,
}
assert tuple(_CHECKS) == CHECKS


def run_checks(base_url: str, host_header: Optional[str] = None, *, verify_tls: bool = True,
               timeout: float = 60.0, options: Options = Options(),
               only: Optional[tuple[str, ...]] = None) -> list[Failure]:
    """Every check against `base_url` (http[s]://address[:port]), sending
    `host_header` as Host (and TLS server name): [] when the environment
    passes, else one Failure per failed check, naming it."""
    client = _Client(base_url, host_header, verify_tls, timeout)
    failures = []
    for name in only or CHECKS:
        try:
            _CHECKS[name](client, options)
        except _Fail as fail:
            failures.append(Failure(name, str(fail)))
        except (OSError, http.client.HTTPException, ssl.SSLError) as error:
            failures.append(Failure(name, f"{type(error).__name__}: {error}"))
    return failures


# ---------------------------------------------------------------- command

def stack_name_and_tls(pulumi, stack: str, scheme: str) -> tuple[str, bool]:
    """(Host, verify TLS) of a stack: its idr:serverName; TLS unverified while
    the stack says its certificate is self-signed (the swap's gate uses it too)."""
    from components.settings import KEYS
    outputs, config = pulumi.outputs(stack), pulumi.config(stack)
    host = config.get("idr:serverName") or KEYS["serverName"].default
    return host, not (scheme == "https" and outputs.get("tlsSelfSigned", True))


def stack_target(stack: str, scheme: str) -> tuple[str, str, bool]:
    """(base URL, Host, verify TLS) of a stack: its floating IP as its serverName."""
    from .common import OperationError, Pulumi
    pulumi = Pulumi(say=lambda line: print(line, file=sys.stderr))
    ip = pulumi.outputs(stack).get("floatingIp") or ""
    if not ip:
        raise OperationError(f"{stack} holds no floating IP: check it with --url and --host")
    host, verify = stack_name_and_tls(pulumi, stack, scheme)
    return f"{scheme}://{ip}", host, verify


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.smoke", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="check this stack through its floating IP, as its idr:serverName")
    where.add_argument("--url", help="check this base URL, e.g. https://idr.openmicroscopy.org")
    parser.add_argument("--host", help="Host header and TLS name (default: the URL's host; with --stack its "
                                       "serverName)")
    parser.add_argument("--scheme", choices=("https", "http"), default="https", help="with --stack (default https)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    parser.add_argument("--image-id", type=int, default=IMAGE_ID, help=f"render_image's image (default {IMAGE_ID})")
    parser.add_argument("--thumbnail-id", type=int, default=THUMBNAIL_ID, help=f"the thumbnail's image (default "
            f"{THUMBNAIL_ID})")
    parser.add_argument("--min-jpeg-bytes", type=int, default=MIN_JPEG_BYTES)
    parser.add_argument("--mapr-min-count", type=int, default=MAPR_MIN_COUNT)
    parser.add_argument("--only", action="append", choices=CHECKS, help="run only this check (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    from .common import OperationError
    try:
        if args.stack:
            base_url, host, verify = stack_target(args.stack, args.scheme)
            host = args.host or host
        else:
            base_url, host, verify = args.url, args.host, True
        failures = run_checks(base_url, host, verify_tls=verify and not args.insecure, timeout=args.timeout,
                              only=tuple(args.only) if args.only else None,
                              options=Options(args.image_id, args.thumbnail_id, args.min_jpeg_bytes,
                                              args.mapr_min_count))
    except (OperationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in args.only or CHECKS:
        failed = [f for f in failures if f.check == name]
        print(f"{'FAIL' if failed else 'ok  '} {name}" + (f": {failed[0].detail}" if failed else ""))
    print(f"{base_url} (Host {host or urlsplit(base_url).netloc}): "
          + (f"{len(failures)} of {len(args.only or CHECKS)} checks failed" if failures else "every check passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
