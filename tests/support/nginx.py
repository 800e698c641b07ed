"""Real nginx on loopback with the rendered proxy config, a stub OMERO.web,
a stub OMERO websocket endpoint, and stub OMERO servers (TCP) for the
stream ports.

The rendered files are rewritten for the test only: paths into a tmp dir,
public listen ports (HTTP, and the stream ports: OMERO's, rsync) onto
127.0.0.1:<free port>, 9000/8009 onto 127.0.0.1:<free port> (the address is
kept), upstream addresses (OMERO.web on idr:omeroWebPort, websockets on
4065, ...) onto the stubs (loopback only).
Everything else is the text a proxy would receive.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from components import layout
from components.render import nginx as render
from tests.support.settings import proxy_settings
from tests.support.tools import tool

NGINX = tool("nginx")
GIXY = tool("gixy")
OPENSSL = tool("openssl")
RSYNC = tool("rsync")
# The proxy loads nginx's stream module (Rocky: nginx-mod-stream) for rsync;
# Debian ships it as libnginx-mod-stream.
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
if not Path(STREAM_MODULE).exists():
    subprocess.run(["apt-get", "install", "-y", "-q", "libnginx-mod-stream"], check=True,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: every socket is held until all are chosen."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- stub OMERO.web

@dataclass
class Seen:
    backend: str
    method: str
    path: str
    headers: dict


@dataclass
class StubState:
    """Shared by every stub: the content version and what each backend saw."""

    version: int = 1
    delays: dict = field(default_factory=dict)   # path prefix -> seconds
    padding: int = 0                             # bytes added to every body (a thumbnail's size)
    # path regex (re.match) -> (status, content type, body[, headers]): answers
    # of a real OMERO.web (a JPEG, JSON, the gallery page) where a test needs
    # them; the first match wins, anything else gets the default text.
    responses: dict = field(default_factory=dict)
    seen: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str | None = None, backend: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self.seen
                       if (path is None or s.path == path) and (backend is None or s.backend == backend))


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256          # a benchmark opens many connections at once

    def handle_error(self, request, client_address):
        pass                          # clients (and a stopped stub) drop connections mid-request


class StubBackend:
    """HTTP server in a thread answering like an OMERO.web that forbids caching."""

    def __init__(self, name: str, state: StubState, host: str = "127.0.0.1"):
        self.name, self.state = name, state
        self.connections: set = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, as nginx's upstream keepalive expects

            def setup(self):
                super().setup()
                stub.connections.add(self.connection)

            def finish(self):
                stub.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with state.lock:
                    state.seen.append(Seen(stub.name, self.command, self.path, dict(self.headers)))
                    version = state.version
                for prefix, seconds in state.delays.items():
                    if self.path.startswith(prefix):
                        time.sleep(seconds)
                body = f"{self.path} v{version} from {stub.name}\n".encode() + b"." * state.padding
                status, content_type, extra = 200, "text/plain", {}
                for pattern, answer in list(state.responses.items()):
                    if re.match(pattern, self.path):
                        status, content_type, body, *more = answer
                        extra = more[0] if more else {}
                        break
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Expires", "0")
                self.send_header("Set-Cookie", "sessionid=from-backend; Path=/; HttpOnly")
                self.send_header("Vary", "Cookie")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

        self.server = _StubServer((host, 0), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Down for real: no listener and no kept-alive connection left."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------- stub OMERO (TCP)

class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve_tcp(host: str, handler) -> tuple[socketserver.ThreadingTCPServer, str]:
    """A threaded TCP stub on a free port of `host`, serving in the background."""
    server = _TcpServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"{host}:{server.server_address[1]}"


class OmeroStub:
    """A TCP server standing for one OMERO port of one server: says its name
    on connect ("omeroreadonly-2:4064"), then echoes what it receives."""

    def __init__(self, name: str, host: str = "127.0.0.1"):
        self.name = name
        stub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    self.request.sendall(f"{stub.name}\n".encode())
                    while data := self.request.recv(4096):
                        self.request.sendall(data)
                except OSError:
                    pass

        self.server, self.address = _serve_tcp(host, Handler)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- stub websockets

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # RFC 6455's


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_frame(payload: bytes, opcode: int = 0x1, masked: bool = False) -> bytes:
    """One final RFC 6455 frame (clients mask, servers do not)."""
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(reader) -> tuple[int, bytes]:
    """-> (opcode, payload) of the next frame from a binary file object."""
    first, second = reader.read(2)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(reader.read(2), "big")
    elif n == 127:
        n = int.from_bytes(reader.read(8), "big")
    mask = reader.read(4) if second & 0x80 else None
    payload = reader.read(n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


class WebSocketStub:
    """Stands for OMERO's websocket endpoint (Glacier2, 4065 of a read-only
    server): answers an HTTP/1.1 Upgrade with 101 and the RFC 6455 handshake,
    sends one text frame with its name, then echoes every frame until a
    close. A request without Upgrade gets 400. Keeps each request's headers."""

    def __init__(self, name: str, host: str = "127.0.0.1"):
        self.name = name
        self.requests: list[tuple[str, dict]] = []    # (request line, headers)
        stub = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    line = self.rfile.readline().decode().strip()
                    headers = {}
                    while (raw := self.rfile.readline()) not in (b"\r\n", b""):
                        k, _, v = raw.decode().partition(":")
                        headers[k.strip().lower()] = v.strip()
                    stub.requests.append((line, headers))
                    if headers.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in headers:
                        self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                    self.wfile.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + f"Sec-WebSocket-Accept: {ws_accept(headers['sec-websocket-key'])}\r\n\r\n".encode())
                    self.wfile.write(ws_frame(f"hello from {stub.name}".encode()))
                    self.wfile.flush()
                    while True:
                        opcode, payload = ws_read(self.rfile)
                        if opcode == 0x8:
                            self.wfile.write(ws_frame(payload, 0x8))
                            return
                        self.wfile.write(ws_frame(payload, opcode))
                        self.wfile.flush()
                except (OSError, ValueError):
                    pass

        self.server, self.address = _serve_tcp(host, Handler)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def omero_stubs(settings, ports=render.OMERO_PORTS) -> tuple[dict, list]:
    """One OmeroStub per read-only server and OMERO port, server n on
    127.0.0.(20+n). -> (backends by host name for rewrite(), every stub)."""
    backends, stubs = {}, []
    for h in layout.hosts_of(settings, "omeroreadonly"):
        for port in ports:
            stub = OmeroStub(f"{h.alias}:{port}", host=f"127.0.0.{20 + h.index}")
            backends.setdefault(h.name, {})[port] = stub.address
            stubs.append(stub)
    return backends, stubs


def omero_hello(port: int, source: str = "127.0.0.1", timeout: float = 5) -> str:
    """Connect to nginx's (rewritten) stream listener from `source`; the
    first line the backend says, after a round trip through the proxy."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as conn:
        reader = conn.makefile("rb")
        name = reader.readline().decode().strip()
        conn.sendall(b"ping\n")
        assert reader.readline() == b"ping\n", name
        return name


# ---------------------------------------------------------------- nginx

def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "test.crt", directory / "test.key"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


@dataclass
class Ports:
    http: int
    https: int
    buster: int
    long: int
    rsync: int
    stream: dict = field(default_factory=dict)   # rendered public stream port -> local port (OMERO)


def tls_root(tmp: Path) -> Path:
    """Where the test proxy's configured certificate paths live
    (idr:tlsCertificate under it): the TLS step's IDR_ROOT."""
    return tmp / "root"


def rewrite(text: str, settings, tmp: Path, ports: Ports | None, backends: dict,
            cert: Path | None, key: Path | None) -> str:
    """The test-only rewrite of a rendered nginx file (paths, listens, upstreams).
    With `ports` None the listen directives stay as rendered (nginx -t and
    gixy do not bind; gixy also reads any listen containing "443" as TLS).
    With `cert` None, the configured certificate paths are kept, under
    tls_root(tmp), where the TLS step installs them."""
    cert = cert or tls_root(tmp) / settings.tls_certificate.lstrip("/")
    key = key or tls_root(tmp) / settings.tls_certificate_key.lstrip("/")
    text = text.replace("user nginx;", "user root;")
    text = text.replace("include /usr/share/nginx/modules/*.conf;", f"load_module {STREAM_MODULE};")
    text = text.replace("pid /run/nginx.pid;", f"pid {tmp}/nginx.pid;")
    text = text.replace("/var/log/nginx/", f"{tmp}/log/")
    text = text.replace("/etc/nginx/", f"{tmp}/etc/nginx/")
    text = text.replace(render.CACHE_DIR + "/", f"{tmp}/cache/")
    text = text.replace(render.ACME_ROOT, f"{tmp}/acme")
    text = text.replace(render.MAINTENANCE_ROOT, f"{tmp}/www")
    text = text.replace(render.WWW_ROOT + "/", f"{tmp}/srv-www/")
    text = text.replace(f"ssl_certificate {settings.tls_certificate};", f"ssl_certificate {cert};")
    text = text.replace(f"ssl_certificate_key {settings.tls_certificate_key};", f"ssl_certificate_key {key};")
    listens = ports and {
        "80": f"127.0.0.1:{ports.http}",
        "443": f"127.0.0.1:{ports.https}",
        f"127.0.0.1:{render.CACHE_BUSTER_PORT}": f"127.0.0.1:{ports.buster}",   # address kept
        f"127.0.0.1:{render.LONG_REQUEST_PORT}": f"127.0.0.1:{ports.long}",     # address kept
        str(render.RSYNC_PORT): f"127.0.0.1:{ports.rsync}",
        **{str(rendered): f"127.0.0.1:{local}" for rendered, local in ports.stream.items()},
    }

    def listen(m):
        return f"listen {listens[m.group(1)]}{m.group(2)}"

    if ports is not None:
        text = re.sub(r"listen (\S+?)([ ;])", listen, text)
    # Backends by role, or by host name (which wins) for one server of a role.
    for host in layout.hosts(settings):
        targets = {**backends.get(host.role, {}), **backends.get(host.name, {})}
        for port, target in targets.items():
            text = text.replace(f"server {host.fixed_ip}:{port};", f"server {target};")
            text = text.replace(f"proxy_pass {host.fixed_ip}:{port};", f"proxy_pass {target};")
    return text


def stream_ports(settings) -> list[int]:
    """Every OMERO port nginx listens on as rendered: 4063, 4064, the pinned ones."""
    return [*render.OMERO_PORTS, *(p["port"] for p in render.pinned_ports(settings))]


class Nginx:
    """nginx -p <tmp> with the rewritten rendered config, not the system service."""

    def __init__(self, settings, tmp: Path, backends: dict, cert: Path | None, key: Path | None,
                 keep_listens: bool = False):
        self.settings, self.tmp = settings, tmp
        stream = stream_ports(settings)
        local = free_ports(5 + len(stream))
        self.ports = Ports(*local[:5], stream=dict(zip(stream, local[5:])))
        self.conf = tmp / "etc" / "nginx" / "nginx.conf"
        for d in ("log", "cache", "www", "acme", "etc/nginx/conf.d", "srv-www"):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/nginx/mime.types", tmp / "etc" / "nginx" / "mime.types")
        self.files = {}
        for f in render.nginx_files(settings):
            if f.path == render.PURGE_SCRIPT:
                continue                  # run by the tests themselves, rewritten
            text = f.content
            if f.path.endswith(".conf"):
                text = rewrite(text, settings, tmp, None if keep_listens else self.ports, backends, cert, key)
            target = self.host_path(f.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self.files[f.path] = target
        self.proc = None

    def host_path(self, path: str) -> Path:
        for prefix, local in (("/etc/nginx/", "etc/nginx/"), (render.MAINTENANCE_ROOT + "/", "www/"),
                              (render.WWW_ROOT + "/", "srv-www/")):
            if path.startswith(prefix):
                return self.tmp / local / path[len(prefix):]
        raise AssertionError(f"no test location for {path}")

    def cmd(self, *extra):
        return [NGINX, "-p", str(self.tmp), "-c", str(self.conf), *extra]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd("-t"), capture_output=True, text=True)

    def start(self):
        checked = self.test_config()
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(self.cmd("-g", "daemon off;"), stderr=subprocess.PIPE, text=True)
        ports = [self.ports.http, self.ports.https, self.ports.buster, self.ports.long]
        if self.settings.rsync_enabled:
            ports.append(self.ports.rsync)
        ports += self.ports.stream.values()
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                assert self.proc.poll() is None, self.proc.stderr.read()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"nginx not listening on {port}"
                    time.sleep(0.05)
        return self

    def reload(self):
        """What `systemctl reload nginx` does: SIGHUP to the master."""
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def flush_logs(self):
        """The access log is buffered (flush=1s): what logrotate's
        `nginx -s reopen` does, SIGUSR1, makes every worker write what it
        holds; done when the logs stop growing."""
        logs = list((self.tmp / "log").glob("*.log"))
        self.proc.send_signal(signal.SIGUSR1)
        sizes, deadline = None, time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = [f.stat().st_size for f in logs]
            if now == sizes:
                break
            sizes = now

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -------------------------------------------------------- client
    def port(self, name: str) -> int:
        return getattr(self.ports, name)

    def stream_port(self, rendered: int) -> int:
        """The local port standing for the rendered public stream port (4064, 14060, ...)."""
        return self.ports.stream[rendered]

    def request(self, port: str, path: str, method: str = "GET", headers: dict | None = None,
                body: bytes | None = None, timeout: float = 30):
        """-> (status, headers as a list of (name, value), body text)."""
        number = self.port(port)
        if port == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", number, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", number, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read().decode()
        finally:
            conn.close()


def ws_handshake(port: int, path: str = render.OMERO_WEBSOCKET_PATH, tls: bool = False,
                 headers: dict | None = None, timeout: float = 10):
    """A real HTTP/1.1 Upgrade to nginx on 127.0.0.1:`port`.
    -> (socket, reader, status, response headers, the key sent)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        raw = ctx.wrap_socket(raw)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: idr.example", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    reader = raw.makefile("rb")
    status = int(reader.readline().split()[1])
    answer = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        answer.setdefault(k.strip().lower(), []).append(v.strip())
    return raw, reader, status, answer, key


class ProxyUnderTest:
    """Stubs for omeroreadonly (OMERO.web and websockets), omeroreadwrite and
    JupyterHub, plus nginx. `cert_pair` None: nginx uses the configured
    certificate paths under tls_root(tmp) (the TLS step puts them there)."""

    def __init__(self, tmp: Path, cert_pair, rsync_daemon: str | None = None, omero: bool = False,
                 secrets: dict | None = None, **raw):
        self.settings = proxy_settings(secrets=secrets, **raw)
        self.state = StubState()
        self.ro = StubBackend("omeroreadonly", self.state)
        self.rw = StubBackend("omeroreadwrite", self.state)
        self.jupyter = StubBackend("jupyterhub", self.state)
        self.ws = WebSocketStub("omeroreadonly-ws")
        web = self.settings.omero_web_port          # what the playbooks install: each host's nginx
        backends = {
            "omeroreadonly": {web: self.ro.address, render.OMERO_WEBSOCKET_PORT: self.ws.address},
            "omeroreadwrite": {web: self.rw.address},
            "dockermanager": {render.JUPYTERHUB_PORT: self.jupyter.address},
        }
        if rsync_daemon:
            backends["omeroreadwrite"][render.RSYNC_PORT] = rsync_daemon
        self.omero_stubs = []
        if omero:                       # stub OMERO servers behind the stream ports
            by_host, self.omero_stubs = omero_stubs(self.settings)
            backends.update(by_host)
        self.backends = backends
        self.tmp = tmp
        self.nginx = Nginx(self.settings, tmp, backends, *(cert_pair or (None, None)))

    def start(self):
        self.nginx.start()
        return self

    def flush_logs(self):
        self.nginx.flush_logs()

    def stop(self):
        self.nginx.stop()
        for stub in (self.ro, self.rw, self.jupyter, self.ws, *self.omero_stubs):
            try:
                stub.stop()
            except Exception:  # already stopped by the test
                pass

    def get(self, port, path, **kw):
        return self.nginx.request(port, path, **kw)


def header(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def gixy_report(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(GIXY), "-f", "json", str(conf)], capture_output=True, text=True)
