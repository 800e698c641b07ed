"""The proxy's rendered files, read as text, and the Proxy component under mocks.
Behaviour in real nginx is in tests/integration/test_nginx.py."""
from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from components import layout
from components.network import proxy_external_rules
from components.offline import Recording, run_mocked
from components.proxy import Proxy, ProxyArgs
from components.render import nginx as render
from components.render.hostfiles import install_script
from components.layout import PROXY_OMERO_PORT_RANGE, PROXY_PUBLIC_TCP_PORTS, SSH_PORT
from components.settings import ConfigError
from tests.support.settings import settings_for
from tests.support.tools import tool

BASE = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test", "sshBastion": "203.0.113.10",
        "deploymentEnabled": "false"}


def settings(secrets: dict | None = None, **raw):
    values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    return settings_for("prod", values, base=BASE, secret={"sshPrivateKey": "KEY", **(secrets or {})}.get)


def servers(conf: str) -> dict[str, str]:
    """server blocks of idr.conf by a short name: http, https, buster, long."""
    blocks = re.findall(r"^server \{\n(.*?)^\}", conf, flags=re.S | re.M)
    out = {}
    for block in blocks:
        listen = re.search(r"listen ([^\s;]+)", block).group(1)
        name = {"80": "http", "443": "https", "127.0.0.1:9000": "buster", "127.0.0.1:8009": "long"}[listen]
        out[name] = block
    assert set(out) == {"http", "https", "buster", "long"}
    return out


def locations(block: str) -> dict[str, str]:
    return dict(re.findall(r"^    location (.*?) \{\n(.*?)^    \}", block, flags=re.S | re.M))


def test_cache_zones_from_config():
    s = settings(nginxCacheZones='["thumbnails=10g", "render=40g", "static=200m", "default=1g"]',
                 nginxCacheInactive="90d")
    conf = render.idr_conf(s)
    zones = re.findall(r"^proxy_cache_path (\S+) levels=1:2 keys_zone=(\w+):(\d+)m max_size=(\w+) "
                       r"inactive=(\w+) use_temp_path=off;$", conf, flags=re.M)
    assert zones == [
        ("/var/cache/nginx/thumbnails", "thumbnails", "160", "10g", "90d"),
        ("/var/cache/nginx/render", "render", "512", "40g", "90d"),
        ("/var/cache/nginx/static", "static", "3", "200m", "90d"),
        ("/var/cache/nginx/default", "default", "16", "1g", "90d"),
    ]
    assert conf.count("proxy_cache_path") == 4


def test_cache_zones_must_fit_the_volume():
    with pytest.raises(ConfigError, match="nginxCacheZones"):
        settings(proxyVolumeSize=50)          # the default zones total 86 GB
    settings(proxyVolumeSize=100)


def zone_of_family(conf: str) -> dict[str, str]:
    return {fam: zone for zone, fam in re.findall(r'^    "~\S+" (\w+);  # ([\w-]+)$', conf, flags=re.M)}


def test_families_pick_their_zone_or_default():
    conf = render.idr_conf(settings(nginxCacheZones='["thumbnails=1g", "default=1g"]'))
    assert zone_of_family(conf) == {
        "thumbnails": "thumbnails", "render": "default", "metadata": "default", "api": "default",
        "static": "default", "gallery-api": "default", "img_detail": "default", "iviewer": "default",
        "search": "default", "figure": "default", "mapr": "default"}
    full = zone_of_family(render.idr_conf(settings()))
    assert (full["render"], full["metadata"], full["api"], full["static"]) == ("render", "metadata", "api", "static")
    assert full["mapr"] == "default"
    # Production's own mapr zone, when configured.
    mapr = zone_of_family(render.idr_conf(settings(nginxCacheZones='["mapr=5g", "default=1g"]')))
    assert mapr["mapr"] == "mapr" and mapr["figure"] == "default"


@pytest.mark.parametrize("url, cached", [
    ("/webgateway/render_thumbnail/1/96/", True), ("/webclient/get_thumbnail/1/", True),
    ("/webgateway/render_image/1/0/0/", True), ("/webclient/render_image_region/1/0/0/", True),
    ("/webgateway/metadata_details/1/", True), ("/webclient/metadata_details/image/1/", True),
    ("/api/v0/m/projects/", True), ("/webclient/api/containers/", True), ("/static/webgateway/x.js", True),
    ("/gallery-api/projects/", True), ("/webclient/img_detail/1/", True), ("/iviewer/", True),
    ("/webclient/search/?query=Name:idr0001", True), ("/figure/file/1/", True), ("/figure/", True),
    ("/webclient/", False), ("/webclient/?show=image-1", False), ("/webclient/login/", False),
    ("/webgateway/imgData/1/", False), ("/", False), ("/mapr/", False), ("/omero-ws", False),
    ("/webclient/searchx/", False), ("/figurex/", False),
])
def test_cached_location_covers_the_families(url, cached):
    conf = render.idr_conf(settings())
    regex = re.search(r"^    location ~ (\^\(\?:\S+) \{", conf, flags=re.M).group(1)
    assert bool(re.match(regex, url)) is cached


def test_cache_key_has_no_host_and_drops_jquery_timestamp():
    conf = render.idr_conf(settings())
    assert re.findall(r"^proxy_cache_key (.*);$", conf, flags=re.M) == ["$idr_cache_key"]
    key_map = re.search(r"map \$request_uri \$idr_cache_key \{(.*?)\}", conf, flags=re.S).group(1)
    assert "default $request_uri;" in key_map
    assert not re.search(r"\$(host|http_host|scheme|server_name)", key_map)
    assert key_map.count("_=[0-9]+") == 3


def test_backend_headers_ignored_and_cookies_cut_everywhere():
    conf = render.idr_conf(settings())
    assert "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;" in conf
    assert re.findall(r"proxy_cache_valid .*;", conf) == ["proxy_cache_valid 200 1d;"]
    for line in ("proxy_cache_use_stale error timeout invalid_header updating http_500 http_502 http_503 http_504;",
                 "proxy_cache_background_update on;", "proxy_cache_lock on;",
                 "proxy_cache_bypass $idr_session;", "proxy_no_cache $idr_session;"):
        assert line in conf
    for name, block in servers(conf).items():
        omero = {k: v for k, v in locations(block).items() if "proxy_pass http://omero" in v}
        # cached families, mapr, the rest; the public ones also websockets
        assert len(omero) == (4 if name in ("http", "https") else 3), name
        for body in omero.values():
            assert 'proxy_set_header Cookie "";' in body and "proxy_hide_header Set-Cookie;" in body
            # OMERO.web's own nginx overwrites X-Forwarded-Proto: this one reaches OMERO.web.
            assert "proxy_set_header X-Forwarded-Proto-Omero-Web $scheme;" in body
    assert render.idr_conf(settings(nginxCacheValid="12h")).count("proxy_cache_valid 200 12h;") == 1


def test_listens_and_upstreams():
    s = settings(omeroreadonlyCount=3, tlsCertificate="/etc/ssl/idr.pem", tlsCertificateKey="/etc/ssl/idr.key")
    conf = render.idr_conf(s)
    blocks = servers(conf)
    assert re.findall(r"listen .*;", conf) == [
        "listen 80 default_server;", "listen 443 ssl http2 default_server;",
        "listen 127.0.0.1:9000;", "listen 127.0.0.1:8009;"]
    https = blocks["https"]
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in https
    assert "ssl_certificate /etc/ssl/idr.pem;" in https and "ssl_certificate_key /etc/ssl/idr.key;" in https
    # OMERO.web behind each OMERO host's own nginx on port 80 (IDR's playbooks).
    assert s.omero_web_port == 80
    readonly = re.search(r"upstream omeroreadonly \{(.*?)\}", conf, flags=re.S).group(1)
    assert "ip_hash;" in readonly
    assert re.findall(r"server (\S+);", readonly) == [f"{h.fixed_ip}:80" for h in layout.hosts_of(s, "omeroreadonly")]
    readwrite = re.search(r"upstream omeroreadwrite \{(.*?)\}", conf, flags=re.S).group(1)
    assert re.findall(r"server (\S+);", readwrite) == [f"{layout.host(s, 'omeroreadwrite').fixed_ip}:80"]
    websockets = re.search(r"upstream omeroreadonly_ws \{(.*?)\}", conf, flags=re.S).group(1)
    assert "ip_hash;" in websockets
    assert re.findall(r"server (\S+);", websockets) == [f"{h.fixed_ip}:4065" for h in layout.hosts_of(s, "omeroreadonly")]
    assert ":4080" not in conf
    for name in ("http", "https"):
        assert "proxy_pass http://omeroreadonly;" in blocks[name] and "omeroreadwrite" not in blocks[name]
    for name in ("buster", "long"):
        assert "proxy_pass http://omeroreadwrite;" in blocks[name] and "omeroreadonly" not in blocks[name]
    other = render.idr_conf(settings(omeroreadonlyCount=3, omeroWebPort=8080))
    assert re.findall(r"^    server (\S+?):(\d+);$", other, flags=re.M) == \
        [(h.fixed_ip, "8080") for h in layout.hosts_of(s, "omeroreadonly")] + [(layout.host(s, "omeroreadwrite").fixed_ip, "8080")] + \
        [(h.fixed_ip, "4065") for h in layout.hosts_of(s, "omeroreadonly")]


def test_timeouts_and_cache_buster():
    blocks = servers(render.idr_conf(settings(nginxPublicReadTimeout=45, nginxLongReadTimeout=1200)))
    for name, timeout in (("http", 45), ("https", 45), ("buster", 1200), ("long", 1200)):
        locs = locations(blocks[name])
        # mapr: the long timeout on every port, cached in the shared cache
        mapr = locs["~ ^/mapr/"]
        assert re.findall(r"proxy_(?:read|cache_lock)_timeout (\d+)s;", mapr) == ["1200", "1200"]
        assert "proxy_cache $idr_cache_zone;" in mapr
        others = "".join(body for loc, body in locs.items() if loc not in ("~ ^/mapr/", "= /omero-ws"))
        assert set(re.findall(r"proxy_read_timeout (\d+)s;", others)) == {str(timeout)}
        assert "proxy_cache $idr_cache_zone;" in blocks[name]   # one shared cache
    assert [n for n, b in blocks.items() if "proxy_cache_bypass" in b] == ["buster"]
    # Both cached locations of the buster (mapr too) refresh their entries.
    assert blocks["buster"].count("proxy_cache_bypass 1;") == 2


@pytest.mark.parametrize("maintenance", [False, True])
def test_login_guard_and_maintenance(maintenance):
    blocks = servers(render.idr_conf(settings(maintenance=maintenance)))
    guarded = ("buster", "long") if maintenance else ("http", "https", "buster", "long")
    for name in guarded:
        # Regex locations are tried in order: the guards are the first two.
        # Before them only ACME's static files (^~) and the websockets (=),
        # which never reach OMERO.web.
        # which never reach OMERO.web, and the site's own (/about/,
        # /connection/, IDR's redirects, the environment's name): static
        # files, a redirect or a constant.
        everything = list(locations(blocks[name]).items())
        locs = [(k, v) for k, v in everything if k.startswith("~")]
        static = {k for k, v in everything if not k.startswith("~") and "proxy_pass" not in v}
        assert {k for k, v in everything if not k.startswith("~") and "proxy_pass" in v} <= {"= /omero-ws", "/"}
        for k in static:
            assert re.fullmatch(r"        (return 30[12] \S+;|alias \S+;(\n        index index.html;)?|"
                                r"root \S+;\n        default_type text/plain;|"
                                r'access_log off;\n        default_type text/plain;\n        return 200 "prod\\n";)\n',
                                locations(blocks[name])[k]), k
        assert locs[0] == ("~* ^/api/v[0-9]+/login", "        return 403;\n")
        assert locs[1] == ("~* ^/(?:[^/]+/)?login(?:/|$)", f"        return 302 {render.PUBLIC_VIEW};\n")
        # Regex redirects (IDR's study short URLs) come next: they answer a redirect and nothing else.
        for k, v in locs[2:]:
            assert "proxy_pass" in v or re.fullmatch(r"        return 30[12] \$idr_redirect_uri;\n", v), k
        assert "503" not in blocks[name]
    if maintenance:
        for name in ("http", "https"):
            assert "return 503;" in blocks[name] and "proxy_pass" not in blocks[name]
            assert "error_page 503 /maintenance.html;" in blocks[name]
    guard = re.compile(r"^/(?:[^/]+/)?login(?:/|$)", re.I)
    for url in ("/webclient/login/", "/webgateway/login", "/api/v0/login/", "/WEBCLIENT/LOGIN/", "/login"):
        assert guard.match(url) or re.match(r"^/api/v[0-9]+/login", url, re.I)
    for url in ("/webclient/", "/webclient/logout/", "/api/v0/m/images/", "/webclient/api/login_needed/"):
        assert not guard.match(url)


def server_headers(block: str) -> list[str]:
    """add_header lines of a server block outside its locations."""
    outside = re.sub(r"^    location .*? \{\n.*?^    \}\n", "", block, flags=re.S | re.M)
    return re.findall(r"^    add_header (.*);$", outside, flags=re.M)


@pytest.mark.parametrize("raw", [{}, {"maintenance": True}, {"jupyterEnabled": True}, {"httpsRedirect": True}])
def test_headers_reach_every_location(raw):
    """nginx drops every server-level add_header in a location with an
    add_header of its own: no location has one, so each answer carries the
    server's: CORS on public ports, HSTS on 443, the cache status."""
    blocks = servers(render.idr_conf(settings(**raw)))
    cache = "X-Cache-Status $upstream_cache_status always"
    cors = 'Access-Control-Allow-Origin "*" always'
    hsts = 'Strict-Transport-Security "max-age=31536000" always'
    assert server_headers(blocks["http"]) == [cache, cors]
    assert server_headers(blocks["https"]) == [cache, hsts, cors]
    for name in ("buster", "long"):                    # operators' ports: not public answers
        assert server_headers(blocks[name]) == [cache]
    for name, block in blocks.items():
        assert locations(block), name
        for loc, body in locations(block).items():
            assert "add_header" not in body, (name, loc)


def test_websockets_to_readonly_4065_never_cached():
    s = settings(omeroreadonlyCount=3)
    blocks = servers(render.idr_conf(s))
    for name in ("http", "https"):
        body = locations(blocks[name])["= /omero-ws"]
        for line in ("proxy_pass http://omeroreadonly_ws;", "proxy_http_version 1.1;",
                     "proxy_set_header Upgrade $http_upgrade;",
                     "proxy_set_header Connection $idr_connection_upgrade;",
                     "proxy_read_timeout 1d;", "proxy_send_timeout 1d;", "proxy_cache off;",
                     'proxy_set_header Cookie "";', "proxy_hide_header Set-Cookie;"):
            assert f"        {line}\n" in body, (name, line)
        assert "proxy_cache " not in body.replace("proxy_cache off;", "")
    for name in ("buster", "long"):
        assert "omero-ws" not in blocks[name] and "omeroreadonly_ws" not in blocks[name]
    conf = render.idr_conf(s)
    assert re.search(r"map \$http_upgrade \$idr_connection_upgrade \{\n    default upgrade;\n    \"\" close;\n\}", conf)
    for name in ("http", "https"):                     # maintenance: no websockets either
        assert "omero-ws" not in servers(render.idr_conf(settings(maintenance=True)))[name]


def session_map(conf: str) -> str:
    (pattern,) = re.findall(r'map \$http_cookie \$idr_session \{\n    default "";\n    "~(.*)" 1;\n\}', conf)
    return pattern


@pytest.mark.parametrize("raw, name", [
    ({}, "sessionid_prod"),
    ({"environment": "new-idr"}, "sessionid_new-idr"),
    ({"sessionCookieName": "omero.session-id"}, "omero.session-id"),
])
def test_session_cookie_guard_uses_the_configured_cookie(raw, name):
    s = settings(**raw)
    assert s.session_cookie_name == name
    conf = render.idr_conf(s)
    assert "$cookie_" not in conf
    pattern = session_map(conf)
    # PCRE and Python's re agree on this pattern's syntax.
    regex = re.compile(pattern)
    for cookie, carries in [
        (f"{name}=abc", True), (f"csrftoken=x; {name}=abc", True), (f"csrftoken=x;{name}=abc; b=1", True),
        ("sessionid=abc", name == "sessionid"), (f"x{name}=abc", False), (f"{name}x=abc", False),
        (f"{name}=", False), (f"{name}=; other=1", False), ("", False),
        (f"{name.upper()}=abc", False),                # cookie names are case-sensitive
    ]:
        assert bool(regex.search(cookie)) is carries, cookie
    if "." in name:                                    # a dot is a dot, not any character
        assert not regex.search(name.replace(".", "X") + "=abc")


def test_https_redirect_only_on_the_public_http_port():
    plain = servers(render.idr_conf(settings()))
    redirect = servers(render.idr_conf(settings(httpsRedirect=True)))
    for name in ("https", "buster", "long"):           # untouched
        assert redirect[name] == plain[name]
    locs = locations(redirect["http"])
    # The environment's name is answered there too (the probes of idr:probeAddresses use plain HTTP).
    assert set(locs) == {"^~ /.well-known/acme-challenge/", "= /idr-environment", "/"}
    assert locs["/"] == "        return 301 https://$host$request_uri;\n"
    assert "proxy_pass" not in redirect["http"]
    # Maintenance does not stop the redirect (HTTPS shows the page).
    both = servers(render.idr_conf(settings(httpsRedirect=True, maintenance=True)))
    assert both["http"] == redirect["http"] and "return 503;" in both["https"]


def test_acme_challenges_served_on_both_public_ports():
    for raw in ({}, {"httpsRedirect": True}, {"maintenance": True}):
        blocks = servers(render.idr_conf(settings(**raw)))
        for name in ("http", "https"):
            body = locations(blocks[name])["^~ /.well-known/acme-challenge/"]
            assert f"root {render.ACME_ROOT};" in body
        for name in ("buster", "long"):
            assert "acme" not in blocks[name]
    script = render.setup_script(settings())
    assert f"install -d -m 0755 {render.ACME_ROOT}" in script
    assert re.search(rf"restorecon -R .*{render.ACME_ROOT}", script)


def test_jupyter_only_when_enabled():
    off = render.idr_conf(settings())
    assert "jupyterhub" not in off
    # Off: IDR's redirect to the page about analysis environments.
    for name in ("http", "https"):
        assert set(k for k in locations(servers(off)[name]) if "jupyter" in k) == {"^~ /jupyter"}
    s = settings(jupyterEnabled=True)
    on = render.idr_conf(s)
    assert f"server {layout.host(s, 'dockermanager').fixed_ip}:8000;" in on
    blocks = servers(on)
    for name in ("http", "https"):
        locs = locations(blocks[name])
        body = locs["^~ /jupyter/"]
        assert "proxy_set_header Upgrade $http_upgrade;" in body
        assert "proxy_set_header Connection $idr_connection_upgrade;" in body
        # On: /jupyter and /jupyter/... are JupyterHub's (exact and longer
        # prefix win); IDR's redirect is left with /jupyterx and the like.
        assert locs["= /jupyter"] == "        return 302 /jupyter/;\n"
        assert "/about/analysis-environments.html" in locs["^~ /jupyter"]
    assert "jupyter" not in blocks["buster"] + blocks["long"]
    # A redirect may not take JupyterHub's own locations.
    with pytest.raises(ConfigError, match="nginxDirectRedirects.*JupyterHub"):
        settings(jupyterEnabled=True, nginxDirectRedirects='["^~ /jupyter/ 302 /about/"]')


def test_rsync_switch():
    s = settings()
    main = render.nginx_conf(s)
    assert "stream {" in main                             # OMERO's ports, always
    assert "listen 873;" not in main and "idr_rsync" not in main
    s = settings(rsyncEnabled=True)
    main = render.nginx_conf(s)
    assert main.count("stream {") == 1 and f"server {layout.host(s, 'omeroreadwrite').fixed_ip}:873;" in main
    assert "listen 873;" in main and "nginx-mod-stream" in render.setup_script(s)
    rsyncd = render.rsyncd_conf(s)
    for line in ("uid = nobody", "read only = yes", "path = /data", f"hosts allow = {layout.host(s, 'proxy').fixed_ip}",
                 "hosts deny = *", "use chroot = yes"):
        assert line in rsyncd


# ------------------------------------------------------------ OMERO ports (stream)

def stream_block(main: str) -> str:
    (block,) = re.findall(r"^stream \{\n(.*?)^\}", main, flags=re.S | re.M)
    return block


def stream_servers(main: str) -> dict[str, str]:
    """listen -> proxy_pass of every server of the stream block."""
    return dict(re.findall(r"^    server \{\n        listen (\S+?);.*?\n        proxy_pass (\S+);\n    \}",
                           stream_block(main), flags=re.M))


def upstream_servers(main: str, name: str) -> tuple[str, list[str]]:
    body = re.search(rf"^    upstream {name} \{{\n(.*?)^    \}}", stream_block(main), flags=re.S | re.M).group(1)
    return body, re.findall(r"^        server (\S+);$", body, flags=re.M)


def public_listens(*confs: str) -> set[int]:
    """Ports nginx listens on from anywhere (not 127.0.0.1)."""
    found = set()
    for conf in confs:
        for target in re.findall(r"^\s*listen (\S+?)[ ;]", conf, flags=re.M):
            if not target.startswith("127.0.0.1:"):
                found.add(int(target))
    return found


@pytest.mark.parametrize("count, pinned", [(3, 3), (22, 20)])
def test_omero_ports_forward_to_readonly_servers(count, pinned):
    s = settings(omeroreadonlyCount=count)
    readonly = layout.hosts_of(s, "omeroreadonly")
    assert len(readonly) == count
    main = render.nginx_conf(s)
    block = stream_block(main)
    assert "proxy_connect_timeout 5s;" in block and "proxy_timeout 1h;" in block
    for port in (4063, 4064):
        body, servers_ = upstream_servers(main, f"omeroreadonly_{port}")
        assert servers_ == [f"{h.fixed_ip}:{port}" for h in readonly]     # exactly the read-only servers
        assert "hash $remote_addr consistent;" in body
    expected = {"4063": "omeroreadonly_4063", "4064": "omeroreadonly_4064"}
    expected |= {str(14060 + h.index - 1): f"{h.fixed_ip}:4064" for h in readonly[:pinned]}
    assert stream_servers(main) == expected
    for h in readonly[:pinned]:
        assert f"listen {14060 + h.index - 1};    # {h.alias}\n" in block
    # Beyond the 20th: no pinned port, and the file says so.
    assert "beyond the 20th gets no pinned port" in block
    unpinned = [h.alias for h in readonly[20:]]
    assert unpinned == (["omeroreadonly-21", "omeroreadonly-22"] if count == 22 else [])
    if unpinned:
        assert "here omeroreadonly-21, omeroreadonly-22." in block
    assert "here " not in block or unpinned
    # Nothing but read-only servers behind the OMERO ports.
    others = [h.fixed_ip for h in layout.hosts(s) if h.role != "omeroreadonly"]
    assert not any(f"{ip}:" in block for ip in others)


@pytest.mark.parametrize("count", [1, 4, 20, 22])
@pytest.mark.parametrize("rsync", [False, True])
def test_security_group_and_nginx_listeners_agree(count, rsync):
    """Every port the proxy's security group opens to the world (but SSH) has
    an nginx listener, and nginx listens publicly on nothing else. The pinned
    range is opened whole: ports of servers that do not exist are refused."""
    s = settings(omeroreadonlyCount=count, rsyncEnabled=rsync, jupyterEnabled=True)
    opened = set()
    for rule in proxy_external_rules(s):
        assert rule.protocol == "tcp"
        opened |= set(range(rule.port_min, rule.port_max + 1))
    opened.discard(SSH_PORT)
    listening = public_listens(render.nginx_conf(s), render.idr_conf(s))
    lo, hi = PROXY_OMERO_PORT_RANGE
    unused = set(range(lo + min(count, hi - lo + 1), hi + 1))      # pinned ports of absent servers
    assert listening == opened - unused
    assert listening <= opened
    if count >= 20:
        assert listening == opened
    # The renderer and settings share their port lists.
    assert set(render.OMERO_PORTS) <= set(PROXY_PUBLIC_TCP_PORTS)
    assert (render.PINNED_FIRST, render.PINNED_LAST) == PROXY_OMERO_PORT_RANGE


def test_setup_installs_stream_module_and_labels_omero_ports():
    script = render.setup_script(settings())          # rsync off: the stream block is still there
    assert re.search(r"^dnf install -y nginx nginx-mod-stream ", script, flags=re.M)
    selinux = script[script.index("selinuxenabled"):]
    for port in ("4063", "4064", "14060-14079"):
        assert re.search(rf"semanage port .*-t http_port_t -p tcp {port}\b", selinux), port


def test_self_signed_certificate_only_without_a_chain(tmp_path):
    plain = settings()
    assert render.tls_self_signed(plain)
    script = render.setup_script(plain)
    assert "openssl req -x509" in script and 'if [ ! -e "$cert" ] || [ ! -e "$key" ]; then' in script
    cert = tmp_path / "c.pem"
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=idr.example", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(cert)], check=True, capture_output=True)
    given = settings(tlsCertificateChain=cert.read_text(), secrets={"tlsPrivateKey": (tmp_path / "k.pem").read_text()})
    assert not render.tls_self_signed(given)
    script = render.setup_script(given)
    assert "openssl req" not in script
    assert "the TLS step installs them" in script
    steps = [script.index(s) for s in ("the TLS step installs them", "\nnginx -t\n", "systemctl reload nginx")]
    assert steps == sorted(steps)


def test_setup_installs_checks_then_reloads():
    script = render.setup_script(settings())
    steps = [script.index(s) for s in ("dnf install -y nginx", "nginx -t", "systemctl reload nginx")]
    assert steps == sorted(steps)
    assert "systemctl start nginx" in script and "systemctl enable nginx" in script
    assert not re.search(r"\bservice nginx|nginx -s|omero (admin|web)", script)
    files = {f.path for f in render.nginx_files(settings())}
    assert files == {"/etc/nginx/nginx.conf", "/etc/nginx/conf.d/idr.conf", "/usr/share/nginx/idr/maintenance.html",
                     render.PURGE_SCRIPT, render.CONNECTION_FILE}
    assert "include /etc/nginx/conf.d/idr.conf;" in render.nginx_conf(settings())


@pytest.mark.parametrize("raw", [{}, {"rsyncEnabled": True}])
def test_scripts_pass_shellcheck(tmp_path, raw):
    s = settings(**raw)
    scripts = {
        "nginx.sh": install_script("prod-proxy", render.nginx_files(s), render.setup_script(s)),
        "purge-run.sh": install_script("prod-proxy", render.purge_files(s), render.PURGE_SCRIPT),
        "purge.sh": render.purge_script(s),
        "rsyncd.sh": install_script("prod-omeroreadwrite", render.rsyncd_files(s), render.rsyncd_setup_script(s)),
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([tool("shellcheck"), "-s", "bash", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# ------------------------------------------------------------ component

def run_proxy(**raw) -> Recording:
    s = settings(**raw)
    return run_mocked(lambda: Proxy("prod-proxy", ProxyArgs(settings=s, depends_on=[])), "prod")


def test_component_wires_nginx_only_by_default():
    rec = run_proxy()
    (proxy,) = rec.of_type("idr:proxy:Proxy")
    # nginx, IDR's website, and with rsync off the step that keeps rsyncd stopped on omeroreadwrite.
    files = sorted(rec.of_type("idr:host:HostFiles"), key=lambda f: f.name)
    assert [f.name for f in files] == ["prod-proxy-nginx", "prod-proxy-rsyncd-off", "prod-proxy-website"]
    off = files[1]
    assert off.inputs["host"] == "prod-omeroreadwrite" and off.inputs["files"] == []
    assert off.inputs["run"] == render.rsyncd_off_script(settings())
    assert files[0].inputs["host"] == "prod-proxy"
    assert files[0].options.parent == proxy.urn
    assert {f["path"] for f in files[0].inputs["files"]} == {f.path for f in render.nginx_files(settings())}
    assert files[0].inputs["run"] == render.setup_script(settings())


def test_component_purge_per_generation_and_rsync():
    rec = run_proxy(cachePurgeGeneration=3, rsyncEnabled=True)
    purge = rec.named("prod-proxy-cache-purge", "idr:host:HostFiles")
    assert purge.inputs["host"] == "prod-proxy" and purge.inputs["run"] == render.PURGE_SCRIPT
    # The script comes with nginx: editing it never purges.
    assert purge.inputs["files"] == [{"path": render.PURGE_RECORD, "mode": "0644", "content": "3\n"}]
    # After nginx is set up (a component dependency means its command).
    assert rec.named("prod-proxy-nginx", "command:remote:Command").urn in purge.options.depends_on
    command = rec.named("prod-proxy-cache-purge", "command:remote:Command")
    # The script's digest (components/hostfiles.py), then the generation: no instance ID.
    assert command.inputs["triggers"] == [hashlib.sha256(command.inputs["stdin"].encode()).hexdigest(), 3]
    rsyncd = rec.named("prod-proxy-rsyncd", "idr:host:HostFiles")
    assert rsyncd.inputs["host"] == "prod-omeroreadwrite"
    assert [f["path"] for f in rsyncd.inputs["files"]] == ["/etc/rsyncd.conf"]


@pytest.mark.parametrize("key, value, allowed", [
    ("nginxDirectRedirects", '["/webclient 302 /x"]', "entries '<= or ^~> <path> <code> <destination>'"),
    ("nginxDirectRedirects", '["= /a 200 /x"]', "a code of 301, 302"),
    ("nginxDirectRedirects", '["= /a 302 http://example.org/"]', "a destination path or https:// URL"),
    ("nginxDirectRedirects", '["= /a;b 302 /x"]', "without spaces, quotes, backslashes, braces or ';'"),
    ("nginxDirectRedirects", '["= /about 302 /x"]', "= /about is the proxy's own"),
    ("nginxRedirectMap", '["/a"]', "entries '<request URI or ~regex> <destination>'"),
    ("nginxRedirectMap", '["~(unclosed /x"]', "a request URI starting with / or a regex"),
    ("nginxRedirectMap", '["/a /x", "/a /y"]', "each request URI or regex once"),
    ("nginxRedirectLocations", '["= /a"]', "entries '<modifier> <path or regex> <code>'"),
    ("nginxRedirectLocations", '["= /study/idr0083/figure/4i 301", "= /study/idr0083/figure/4i 302"]',
     "in nginxRedirectLocations already"),
    ("websiteSource", "http://example.org/site.tar.gz", "a git repository (https://, ssh://"),
    ("websiteRef", "../x", "a commit hash or tag name"),
])
def test_redirect_and_website_keys_refuse_in_one_line(key, value, allowed):
    with pytest.raises(ConfigError) as error:
        settings(**{key: value})
    message = str(error.value)
    assert message.startswith(f"config idr:{key} = ") and allowed in message and "\n" not in message, message


def test_website_step_wired_after_nginx_and_reruns_only_itself():
    from components.render import website
    rec = run_proxy()
    step = rec.named("prod-proxy-website", "idr:host:HostFiles")
    assert step.inputs["host"] == "prod-proxy"
    assert {f["path"] for f in step.inputs["files"]} == {f.path for f in website.website_files(settings())}
    assert rec.named("prod-proxy-nginx", "command:remote:Command").urn in \
        rec.named("prod-proxy-website", "command:remote:Command").options.depends_on
    # A new ref changes the website step's files, never nginx's.
    other = settings(websiteRef="2026.01.28")
    assert render.nginx_files(other) == render.nginx_files(settings())
    assert website.website_files(other) != website.website_files(settings())
    assert website.source_url(other).endswith("/download/2026.01.28/idr.openmicroscopy.org.tar.gz")
