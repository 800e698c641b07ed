"""The proxy's rendered nginx config, run in real nginx on loopback against a
stub OMERO.web that forbids caching (Cache-Control: no-store, Expires: 0,
Set-Cookie, Vary: Cookie). Numbers in test names follow the issue's checks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from components import layout
from components.render import nginx as render

from tests.support.nginx import (
    RSYNC, Nginx, free_port, gixy_report, header, omero_hello,
    ws_accept, ws_frame, ws_handshake, ws_read,
)
from tests.support.settings import proxy_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

THUMB = "/webgateway/render_thumbnail/101/96/"
PUBLIC = ("http", "https")
ALL_PORTS = ("http", "https", "buster", "long")


@pytest.fixture
def proxy(proxy_factory):
    return proxy_factory()


def cache_status(headers):
    return header(headers, "X-Cache-Status")


# 1 --------------------------------------------------------------------------
def test_1_thumbnail_cached_once_and_no_set_cookie(proxy):
    for port in PUBLIC:
        status, headers, body = proxy.get(port, THUMB)
        assert status == 200 and "v1" in body
        assert not header(headers, "Set-Cookie")
    assert proxy.state.count(THUMB) == 1


def test_1_cache_key_ignores_host_and_jquery_timestamp(proxy):
    path = "/webclient/metadata_details/image/7/"
    variants = [
        (path, {}),
        (path + "?_=1700000000001", {"Host": "idr.openmicroscopy.org"}),
        (path + "?_=1700000000002", {"Host": "other.example"}),
    ]
    for url, hdrs in variants:
        assert proxy.get("http", url, headers=hdrs)[0] == 200
    assert proxy.state.count(backend="omeroreadonly") == 1
    # The parameter is stripped wherever it stands; other parameters stay in the key.
    for url in ("/api/v0/m/images/?limit=5&_=17&offset=0", "/api/v0/m/images/?limit=5&offset=0&_=18",
                "/api/v0/m/images/?_=19&limit=5&offset=0"):
        assert proxy.get("http", url)[0] == 200
    assert proxy.state.count(backend="omeroreadonly") == 2   # all three are ?limit=5&offset=0
    proxy.get("http", "/api/v0/m/images/?limit=6&offset=0")
    assert proxy.state.count(backend="omeroreadonly") == 3


def test_1_uncached_families_pass_through(proxy):
    for _ in range(2):
        assert proxy.get("http", "/webclient/?show=project-101")[0] == 200
    assert proxy.state.count("/webclient/?show=project-101") == 2
    for family in ("/webclient/render_image/1/0/0/", "/webgateway/metadata_details/1/", "/api/v0/m/projects/",
                   "/webclient/api/containers/", "/static/webclient/app.js", "/gallery-api/projects/",
                   "/webclient/img_detail/1/", "/iviewer/?images=1", "/webclient/get_thumbnail/1/"):
        for _ in range(2):
            status, headers, _body = proxy.get("http", family)
            assert status == 200
        assert cache_status(headers) == ["HIT"], family
        assert proxy.state.count(family) == 1, family


# 2 --------------------------------------------------------------------------
def test_2_cache_buster_refreshes_entry(proxy):
    assert "v1" in proxy.get("http", THUMB)[2]
    proxy.state.version = 2
    assert "v1" in proxy.get("http", THUMB)[2]            # cached copy kept
    status, headers, body = proxy.get("buster", THUMB)
    assert status == 200 and "v2 from omeroreadwrite" in body
    assert not header(headers, "Set-Cookie")
    for port in PUBLIC:
        status, headers, body = proxy.get(port, THUMB)
        assert "v2 from omeroreadwrite" in body and cache_status(headers) == ["HIT"]
    assert proxy.state.count(THUMB, "omeroreadonly") == 1
    assert proxy.state.count(THUMB, "omeroreadwrite") == 1


# 3 --------------------------------------------------------------------------
def test_3_buster_and_long_ports_loopback_only(proxy):
    conf = render.idr_conf(proxy.settings)
    listens = [line.strip() for line in conf.splitlines() if line.strip().startswith("listen")]
    for port in (render.CACHE_BUSTER_PORT, render.LONG_REQUEST_PORT):
        mine = [line for line in listens if f":{port}" in line or f" {port}" in line]
        assert mine == [f"listen 127.0.0.1:{port};"]
    # The test copy keeps the address; another local address is refused.
    with socket.socket() as probe:                      # 127.0.0.2 itself is usable here
        probe.bind(("127.0.0.2", 0))
        probe.listen()
        socket.create_connection(probe.getsockname(), timeout=2).close()
    for name in ("buster", "long"):
        port = proxy.nginx.port(name)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2)


# 4 --------------------------------------------------------------------------
def test_4_slow_answer_via_8009_then_cached_on_public(proxy_factory):
    proxy = proxy_factory(nginxPublicReadTimeout=1, nginxLongReadTimeout=10)
    slow = "/webclient/render_image/9/0/0/?slow=1"
    proxy.state.delays["/webclient/render_image/9/"] = 2.0
    status, _h, _b = proxy.get("http", slow)
    assert status == 504
    status, headers, body = proxy.get("long", slow)
    assert status == 200 and "from omeroreadwrite" in body
    assert not header(headers, "Set-Cookie")
    started = time.monotonic()
    status, headers, body = proxy.get("http", slow)
    assert status == 200 and "from omeroreadwrite" in body and cache_status(headers) == ["HIT"]
    assert time.monotonic() - started < 1
    assert proxy.state.count(slow, "omeroreadwrite") == 1


# 5 --------------------------------------------------------------------------
@pytest.mark.parametrize("port", ALL_PORTS)
def test_5_no_login_and_no_session_through_proxy(proxy, port):
    assert proxy.settings.session_cookie_name == "sessionid_test"     # sessionid_<environment>
    secret = {"Cookie": "sessionid_test=private-session-of-an-operator; csrftoken=abc"}
    logins = [("POST", "/webclient/login/", 302), ("GET", "/webclient/login/?url=/webclient/", 302),
              ("POST", "/webgateway/login/", 302), ("POST", "/api/v0/login/", 403),
              ("POST", "/WebClient/Login", 302), ("GET", "/webclient//login/", 302)]
    for method, path, expected in logins:
        status, headers, _ = proxy.get(port, path, method=method, headers={**secret, "Content-Type":
                                       "application/x-www-form-urlencoded"}, body=b"username=me&password=pw")
        assert status == expected, (port, path)
        if expected == 302:
            assert header(headers, "Location") == [render.PUBLIC_VIEW]
    assert proxy.state.count() == 0          # no login ever reached OMERO.web

    # A session cookie on a cached URL and an uncached page: OMERO.web never
    # sees it, the client gets no cookie, and nothing is stored.
    for path in (THUMB, "/webclient/?show=image-1"):
        status, headers, _ = proxy.get(port, path, headers=secret)
        assert status == 200 and not header(headers, "Set-Cookie")
    assert proxy.state.count() == 2
    assert all("Cookie" not in seen.headers for seen in proxy.state.seen)
    before = proxy.state.count(THUMB)
    proxy.get("http", THUMB)
    assert proxy.state.count(THUMB) == before + 1, "the cookie request's answer was stored"


# 6 --------------------------------------------------------------------------
def purge_script_for(proxy, cache_dir: str) -> Path:
    text = render.purge_script(proxy.settings)
    assert f"cache_dir={render.CACHE_DIR}\n" in text and "systemctl reload nginx" in text
    text = text.replace(f"cache_dir={render.CACHE_DIR}\n", f"cache_dir={cache_dir}\n")
    text = text.replace("systemctl reload nginx", f"kill -HUP {proxy.nginx.proc.pid}")
    script = proxy.tmp / f"purge-{abs(hash(cache_dir))}.sh"
    script.write_text(text)
    return script


def test_6_emptying_cache_reaches_backend_again(proxy):
    proxy.get("http", THUMB)
    assert cache_status(proxy.get("http", THUMB)[1]) == ["HIT"]
    cache = proxy.tmp / "cache"
    (cache / "lost+found").mkdir()
    (cache / ".hidden").write_text("x")
    assert any(p.is_file() for p in (cache / "thumbnails").rglob("*"))
    script = purge_script_for(proxy, str(cache))
    for _ in range(2):                                   # safe to run again
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # nginx may already have made its (empty) zone directories again.
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        assert (cache / "lost+found").is_dir() and not (cache / ".hidden").exists()
        time.sleep(0.5)
    status, headers, _ = proxy.get("http", THUMB)
    assert status == 200 and cache_status(headers) == ["MISS"]
    assert proxy.state.count(THUMB) == 2


@pytest.mark.parametrize("bad", ["", "/", "/tmp", "relative/dir", "LINK", "MISSING", "TRAILING"])
def test_6_purge_refuses_wrong_paths(proxy, bad):
    victim = Path(tempfile.mkdtemp(dir=proxy.tmp))
    (victim / "keep").write_text("precious")
    link = proxy.tmp / "cache-link"
    link.symlink_to(victim)
    path = {"LINK": str(link), "MISSING": str(proxy.tmp / "nope"), "TRAILING": str(victim) + "/"}.get(bad, bad)
    script = purge_script_for(proxy, f"'{path}'")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=victim)
    assert done.returncode != 0 and "refusing" in done.stderr
    assert (victim / "keep").read_text() == "precious"
    assert proxy.nginx.proc.poll() is None


# 7 --------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [{}, {"maintenance": True}, {"jupyterEnabled": True, "rsyncEnabled": True},
                                 {"nginxCacheZones": '["default=1g", "thumbnails=2g", "mapr=1g"]'},
                                 {"omeroreadonlyCount": 22}, {"httpsRedirect": True},
                                 {"httpsRedirect": True, "maintenance": True},
                                 {"sessionCookieName": "omero.sid-1", "omeroWebPort": 8080},
                                 {"jupyterEnabled": True, "websiteRef": "", "nginxDirectRedirects": "[]",
                                  "nginxRedirectLocations": '["^~ /s/ 302", "~* ^/x$ 301"]'}])
def test_7_nginx_t_and_gixy(tmp_path, cert_pair, raw):
    settings = proxy_settings(**raw)
    nginx = Nginx(settings, tmp_path, {}, *cert_pair, keep_listens=True)   # listens as rendered
    assert "listen 443 ssl http2 default_server;" in (tmp_path / "etc/nginx/conf.d/idr.conf").read_text()
    checked = nginx.test_config()
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    report = gixy_report(nginx.conf)
    assert report.returncode == 0, report.stderr
    issues = json.loads(report.stdout)
    serious = [i for i in issues if i["severity"] in ("MEDIUM", "HIGH")]
    assert serious == [], serious
    # gixy really reads these files: drop the cipher list and it complains.
    conf_d = tmp_path / "etc/nginx/conf.d/idr.conf"
    conf_d.write_text("\n".join(l for l in conf_d.read_text().splitlines() if "ssl_ciphers" not in l))
    weakened = json.loads(gixy_report(nginx.conf).stdout)
    assert any(i["plugin"] == "weak_ssl_tls" for i in weakened)


def test_7_tls_versions(proxy):
    import ssl
    for version, ok in ((ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_3, True)):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", proxy.nginx.port("https")), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                assert tls.version() == version.name.replace("v1_", "v1.")


# 8 --------------------------------------------------------------------------
def test_8_backend_down_serves_stale_and_fails_fast(proxy_factory):
    proxy = proxy_factory(nginxCacheValid="1s")
    assert "v1" in proxy.get("http", THUMB)[2]
    proxy.ro.stop()
    time.sleep(2.5)               # the entry is now stale (nginx counts whole seconds)
    status, headers, body = proxy.get("http", THUMB)
    assert status == 200 and "v1" in body and cache_status(headers) == ["STALE"]
    started = time.monotonic()
    status, _h, _b = proxy.get("http", "/webgateway/render_thumbnail/999/")
    assert status in (502, 504)
    assert time.monotonic() - started < 2


# 9 --------------------------------------------------------------------------
def test_9_maintenance_on_public_ports_only(proxy_factory):
    proxy = proxy_factory(maintenance=True)
    for port in PUBLIC:
        for path in ("/", THUMB, render.PUBLIC_VIEW, "/mapr/api/gene/"):
            status, _h, body = proxy.get(port, path)
            assert status == 503 and "down for maintenance" in body
        # IDR's redirects still answer (a login goes to the public view, which is down).
        status, headers, _b = proxy.get(port, "/webclient/login/")
        assert status == 302 and header(headers, "Location") == [render.PUBLIC_VIEW]
    for port in ("buster", "long"):
        assert proxy.get(port, THUMB)[0] == 200
    assert proxy.state.count(backend="omeroreadonly") == 0


# jupyter and rsync ----------------------------------------------------------
def test_jupyter_routed_with_websockets_only_when_enabled(proxy_factory):
    off = proxy_factory()
    off.get("http", "/jupyter/hub/")
    assert off.state.count(backend="jupyterhub") == 0
    on = proxy_factory(jupyterEnabled=True)
    status, _h, _b = on.get("https", "/jupyter/hub/api", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Cookie": "jupyterhub-session-id=x"})
    assert status == 200
    (seen,) = on.state.seen
    assert seen.backend == "jupyterhub"
    assert seen.headers["Upgrade"] == "websocket" and seen.headers["Connection"].lower() == "upgrade"
    assert seen.headers["Cookie"] == "jupyterhub-session-id=x"   # JupyterHub has its own login
    assert on.get("http", "/jupyter")[0] == 302


@pytest.fixture
def rsync_daemon(tmp_path):
    """The rendered rsyncd.conf in the real rsync daemon on 127.0.0.1."""
    settings = proxy_settings(rsyncEnabled=True)
    data = Path(tempfile.mkdtemp(dir="/tmp", prefix="idr-rsync-data-"))
    os.chmod(data, 0o755)
    (data / "idr0001").mkdir()
    (data / "idr0001" / "image.tif").write_text("pixels\n")
    for p in (data / "idr0001", data / "idr0001" / "image.tif"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    text = render.rsyncd_conf(settings)
    assert f"path = {render.RSYNC_PATH}\n" in text
    text = (text.replace(f"path = {render.RSYNC_PATH}\n", f"path = {data}\n")
            .replace(f"hosts allow = {layout.host(settings, 'proxy').fixed_ip}", "hosts allow = 127.0.0.1")
            .replace("gid = nobody", "gid = nogroup")   # Debian's name for RHEL's nobody group
            .replace("/var/log/rsyncd.log", str(tmp_path / "rsyncd.log"))
            .replace("/run/rsyncd.pid", str(tmp_path / "rsyncd.pid"))
            .replace("/run/rsyncd.lock", str(tmp_path / "rsyncd.lock")))
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(text)
    port = free_port()
    proc = subprocess.Popen([RSYNC, "--daemon", "--no-detach", f"--config={conf}",
                             "--address=127.0.0.1", f"--port={port}"])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    yield f"127.0.0.1:{port}", data
    proc.terminate()
    proc.wait(timeout=10)
    subprocess.run(["rm", "-rf", str(data)], check=True)


def test_rsync_public_data_read_only_through_proxy(proxy_factory, rsync_daemon, tmp_path):
    daemon, data = rsync_daemon
    proxy = proxy_factory(rsyncEnabled=True, rsync_daemon=daemon)
    url = f"rsync://127.0.0.1:{proxy.nginx.port('rsync')}/{render.RSYNC_MODULE}/"
    listing = subprocess.run([RSYNC, url], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0 and "idr0001" in listing.stdout, listing.stderr
    dest = tmp_path / "copy"
    copied = subprocess.run([RSYNC, "-r", url, str(dest)], capture_output=True, text=True, timeout=30)
    assert copied.returncode == 0, copied.stderr
    assert (dest / "idr0001" / "image.tif").read_text() == "pixels\n"
    upload = tmp_path / "upload.txt"
    upload.write_text("not allowed")
    pushed = subprocess.run([RSYNC, str(upload), url], capture_output=True, text=True, timeout=30)
    assert pushed.returncode != 0 and "read only" in pushed.stderr
    assert not (data / "upload.txt").exists()
    # Only the proxy is admitted by the daemon itself.
    other = subprocess.run([RSYNC, "--address=127.0.0.2", f"rsync://{daemon}/{render.RSYNC_MODULE}/"],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode != 0 and "access denied" in other.stderr.lower()


def test_rsync_off_stops_the_daemon_and_removes_its_config(rsync_daemon, tmp_path):
    """idr:rsyncEnabled back to false: the step stops the daemon a former
    `on` started (by the pid file its config names) and removes that config;
    run again, it does nothing."""
    daemon, _ = rsync_daemon
    conf = tmp_path / "rsyncd.conf"
    assert f"pid file = {render.RSYNCD_PID}" in render.rsyncd_conf(proxy_settings(rsyncEnabled=True))
    pid = int((tmp_path / "rsyncd.pid").read_text())
    script = (render.rsyncd_off_script(proxy_settings())
              .replace(render.RSYNCD_PID, str(tmp_path / "rsyncd.pid"))
              .replace(render.RSYNCD_CONF, str(conf)))
    (tmp_path / "off.sh").write_text(script)
    for _ in range(2):
        result = subprocess.run(["bash", "-euo", "pipefail", str(tmp_path / "off.sh")],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert not conf.exists() and not (tmp_path / "rsyncd.pid").exists()
        # Gone, or exited and waiting for this test (its parent) to reap it.
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        host, port = daemon.split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()
    # A config that is not ours is left alone.
    conf.write_text("# someone else's rsyncd.conf\n")
    subprocess.run(["bash", str(tmp_path / "off.sh")], check=True, timeout=30)
    assert conf.exists()


# OMERO ports (stream) ---------------------------------------------------------
@pytest.fixture
def omero_proxy(proxy_factory):
    """Three read-only servers, each with stub OMERO servers on 4063 and 4064."""
    return proxy_factory(omero=True, omeroreadonlyCount=3)


def test_omero_ports_reach_readonly_and_stick_to_one_server(omero_proxy):
    nginx = omero_proxy.nginx
    readonly = {h.alias for h in layout.hosts_of(omero_proxy.settings, "omeroreadonly")}
    for port in render.OMERO_PORTS:
        reached = {}
        for k in range(40):                        # 40 client addresses, 3 connections each
            source = f"127.0.1.{10 + k}"
            names = {omero_hello(nginx.stream_port(port), source) for _ in range(3)}
            assert len(names) == 1, (port, source, names)      # one client, one server
            (name,) = names
            server, _, backend_port = name.partition(":")
            assert server in readonly and backend_port == str(port), name
            reached[source] = server
        assert set(reached.values()) == readonly, reached     # every server takes clients


def test_omero_pinned_ports_reach_exactly_their_server(omero_proxy):
    nginx = omero_proxy.nginx
    hosts = layout.hosts_of(omero_proxy.settings, "omeroreadonly")
    assert sorted(nginx.ports.stream) == [4063, 4064, 14060, 14061, 14062]
    for h in hosts:
        for k in range(5):
            assert omero_hello(nginx.stream_port(14060 + h.index - 1), f"127.0.1.{10 + k}") \
                == f"{h.alias}:4064"


def test_omero_server_down_clients_go_to_another(omero_proxy):
    nginx = omero_proxy.nginx
    source = "127.0.1.10"
    first = omero_hello(nginx.stream_port(4064), source)
    (down,) = [s for s in omero_proxy.omero_stubs if s.name == first]
    down.stop()
    started = time.monotonic()
    again = omero_hello(nginx.stream_port(4064), source)
    assert again != first and again.endswith(":4064")
    assert time.monotonic() - started < 2
    # Its pinned port has nowhere else to go: the client is closed at once.
    index = int(first.split(":")[0].rsplit("-", 1)[1])
    with socket.create_connection(("127.0.0.1", nginx.stream_port(14060 + index - 1)), timeout=5) as conn:
        assert conn.recv(100) == b""


# OMERO.web as IDR's playbooks install it (issue 10) ----------------------------
def test_backends_on_omero_web_port_substituted_by_stubs(proxy_factory):
    for raw, port in (({}, 80), ({"omeroWebPort": 8080}, 8080)):
        proxy = proxy_factory(**raw)
        s = proxy.settings
        rendered = render.idr_conf(s)
        for h in layout.hosts_of(s, "omeroreadonly") + (layout.host(s, "omeroreadwrite"),):
            assert f"    server {h.fixed_ip}:{port};\n" in rendered
        for h in layout.hosts_of(s, "omeroreadonly"):
            assert f"    server {h.fixed_ip}:{render.OMERO_WEBSOCKET_PORT};\n" in rendered
        # The test copy: exactly those upstreams, now the stubs.
        served = proxy.nginx.files[render.IDR_CONF].read_text()
        assert "192.168." not in served
        assert served.count(f"server {proxy.ro.address};") == 2 and served.count(f"server {proxy.ws.address};") == 2
        assert served.count(f"server {proxy.rw.address};") == 1
        assert "from omeroreadonly" in proxy.get("http", "/webclient/")[2]
        assert "from omeroreadwrite" in proxy.get("buster", "/webclient/")[2]


def test_scheme_header_reaches_omero_web(proxy):
    for port, scheme, path in (("http", "http", THUMB), ("https", "https", "/webclient/"),
                               ("https", "https", "/mapr/api/genes/"), ("buster", "http", "/webclient/")):
        before = len(proxy.state.seen)
        assert proxy.get(port, path)[0] == 200
        seen = proxy.state.seen[before]
        # OMERO.web's own nginx rewrites X-Forwarded-Proto; this one survives it.
        assert seen.headers["X-Forwarded-Proto-Omero-Web"] == scheme, (port, path)


NEW_FAMILIES = ("/webclient/search/?query=Name:idr0001", "/figure/file/12/", "/mapr/api/gene/?value=PAX7")


def test_new_families_cached(proxy):
    for path in NEW_FAMILIES:
        statuses = [cache_status(proxy.get(port, path)[1]) for port in ("http", "https", "http")]
        assert statuses == [["MISS"], ["HIT"], ["HIT"]], path
        assert proxy.state.count(path) == 1, path


def test_mapr_long_timeouts_public_and_cache_buster(proxy_factory):
    proxy = proxy_factory(nginxPublicReadTimeout=1, nginxLongReadTimeout=10)
    mapr, other = "/mapr/api/gene/?value=slow", "/webclient/search/?query=slow"
    proxy.state.delays.update({"/mapr/": 2.0, "/webclient/search/": 2.0})
    assert proxy.get("http", other)[0] == 504          # the public timeout everywhere else
    status, headers, body = proxy.get("http", mapr)     # mapr: the long one
    assert status == 200 and "v1 from omeroreadonly" in body and cache_status(headers) == ["MISS"]
    started = time.monotonic()
    assert cache_status(proxy.get("https", mapr)[1]) == ["HIT"]
    assert time.monotonic() - started < 1
    # The cache-buster refreshes mapr from omeroreadwrite, slow as it is.
    proxy.state.version = 2
    status, headers, body = proxy.get("buster", mapr)
    assert status == 200 and "v2 from omeroreadwrite" in body
    status, headers, body = proxy.get("http", mapr)
    assert "v2 from omeroreadwrite" in body and cache_status(headers) == ["HIT"]


def test_cors_and_security_headers_on_every_answer(proxy):
    """Every kind of public answer carries Access-Control-Allow-Origin: *
    (and HSTS on 443): nginx drops server-level add_header in a location
    that has its own, so each location is asked."""
    (proxy.tmp / "acme/.well-known/acme-challenge").mkdir(parents=True)
    (proxy.tmp / "acme/.well-known/acme-challenge/token1").write_text("token1.thumbprint")
    answers = {
        "cached, miss": (THUMB, 200, ["MISS"]), "cached, hit": (THUMB, 200, ["HIT"]),
        "mapr": ("/mapr/api/genes/", 200, None), "uncached": ("/webclient/?show=image-1", 200, []),
        "login redirect": ("/webclient/login/", 302, []), "api login": ("/api/v0/login/", 403, []),
        "acme": ("/.well-known/acme-challenge/token1", 200, []),
        "acme, missing": ("/.well-known/acme-challenge/none", 404, []),
        "websocket without upgrade": (render.OMERO_WEBSOCKET_PATH, 400, []),
    }
    for port in PUBLIC:
        for what, (path, code, cache) in answers.items():
            if what == "cached, miss" and port == "https":
                cache = ["HIT"]
            status, headers, _ = proxy.get(port, path)
            assert status == code, (port, what)
            assert header(headers, "Access-Control-Allow-Origin") == ["*"], (port, what)
            assert header(headers, "Strict-Transport-Security") == (
                ["max-age=31536000"] if port == "https" else []), (port, what)
            if cache is not None:
                assert cache_status(headers) == cache, (port, what)
    for port in ("buster", "long"):                    # operators' ports: not public answers
        status, headers, _ = proxy.get(port, THUMB)
        assert status == 200 and not header(headers, "Access-Control-Allow-Origin")


def test_cors_on_maintenance_page(proxy_factory):
    proxy = proxy_factory(maintenance=True)
    for port in PUBLIC:
        status, headers, _ = proxy.get(port, THUMB)
        assert status == 503 and header(headers, "Access-Control-Allow-Origin") == ["*"]


def test_session_cookie_never_served_from_nor_stored_in_cache(proxy):
    name = proxy.settings.session_cookie_name
    assert name == "sessionid_test"
    with_session = {"Cookie": f"csrftoken=x; {name}=a-session"}
    for port in PUBLIC:
        proxy.state.version = 1
        path = f"{THUMB}{port}/"
        assert cache_status(proxy.get(port, path)[1]) == ["MISS"]
        proxy.state.version = 2
        status, headers, body = proxy.get(port, path, headers=with_session)
        assert status == 200 and "v2" in body and cache_status(headers) == ["BYPASS"]   # not from cache
        status, headers, body = proxy.get(port, path)
        assert "v1" in body and cache_status(headers) == ["HIT"]                       # and not stored
        # A first request carrying the cookie stores nothing either.
        fresh = f"/webclient/search/?query={port}"
        assert cache_status(proxy.get(port, fresh, headers=with_session)[1]) == ["BYPASS"]
        assert cache_status(proxy.get(port, fresh)[1]) == ["MISS"]
    # The long-request port too: never from the cache, never stored.
    assert cache_status(proxy.get("long", f"{THUMB}http/", headers=with_session)[1]) == ["BYPASS"]
    assert "v1" in proxy.get("http", f"{THUMB}http/")[2]
    # Other cookies (another name, or the name as a suffix) change nothing.
    for cookie in ("sessionid=a-session", f"x{name}=a", f"{name}="):
        assert cache_status(proxy.get("http", f"{THUMB}http/", headers={"Cookie": cookie})[1]) == ["HIT"], cookie
    assert all("Cookie" not in seen.headers for seen in proxy.state.seen)


@pytest.mark.parametrize("port", PUBLIC)
def test_websocket_upgrade_through_omero_ws(proxy_factory, port):
    proxy = proxy_factory(nginxPublicReadTimeout=1)
    conn, reader, status, answer, key = ws_handshake(
        proxy.nginx.port(port), tls=port == "https", headers={"Cookie": "sessionid_test=x"})
    try:
        assert status == 101
        assert answer["upgrade"] == ["websocket"] and answer["connection"] == ["upgrade"]
        assert answer["sec-websocket-accept"] == [ws_accept(key)]
        assert "x-cache-status" not in answer and "set-cookie" not in answer
        assert ws_read(reader) == (0x1, b"hello from omeroreadonly-ws")        # backend -> client
        time.sleep(2)                                   # idle beyond the public read timeout
        for payload in (b"ping", bytes(range(256)) * 300):                   # client -> backend -> client
            conn.sendall(ws_frame(payload, 0x2, masked=True))
            assert ws_read(reader) == (0x2, payload)
        conn.sendall(ws_frame(b"", 0x8, masked=True))
        assert ws_read(reader)[0] == 0x8
    finally:
        conn.close()
    (line, seen), = proxy.ws.requests
    assert line == f"GET {render.OMERO_WEBSOCKET_PATH} HTTP/1.1"
    assert seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
    assert seen["x-forwarded-proto-omero-web"] == ("https" if port == "https" else "http")
    assert "cookie" not in seen
    assert proxy.state.count() == 0                     # OMERO.web never saw it
    assert not [p for p in (proxy.tmp / "cache").rglob("*") if p.is_file()]   # nothing cached


def test_https_redirect_on_80_only(proxy_factory):
    proxy = proxy_factory(httpsRedirect=True)
    (proxy.tmp / "acme/.well-known/acme-challenge").mkdir(parents=True)
    (proxy.tmp / "acme/.well-known/acme-challenge/tok").write_text("tok.thumb")
    for path in ("/", THUMB, "/webclient/?show=image-1&x=%20y", "/webclient/login/"):
        status, headers, _ = proxy.get("http", path, headers={"Host": "idr.example"})
        assert status == 301 and header(headers, "Location") == [f"https://idr.example{path}"], path
    # ACME's HTTP-01 challenges are answered on 80 itself.
    status, _h, body = proxy.get("http", "/.well-known/acme-challenge/tok")
    assert status == 200 and body == "tok.thumb"
    assert proxy.state.count() == 0                     # nothing on 80 reached OMERO.web
    assert "v1 from omeroreadonly" in proxy.get("https", THUMB)[2]
    for port in ("buster", "long"):                     # loopback ports: never redirected
        status, headers, body = proxy.get(port, THUMB)
        assert status == 200 and "from omeroreadwrite" in body and not header(headers, "Location")
