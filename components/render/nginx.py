"""The proxy's nginx: settings -> nginx.conf, idr.conf, purge script, TLS
install script, rsyncd.conf.

Pure functions (no Pulumi): tests render these and run them in real nginx
and a real rsync daemon. `components/proxy.py` only wires them to hosts.
"""
from __future__ import annotations

import base64
import json
import re
import textwrap
from dataclasses import dataclass

from .. import layout
from ..layout import DATA_VOLUME_MOUNTS, ENVIRONMENT_PATH, PROXY_OMERO_PORT_RANGE, PROXY_OWN_LOCATIONS
from ..settings import Settings
from . import HostFile, render_template

# Where things live on the proxy (Rocky Linux 9 nginx package layout).
NGINX_CONF = "/etc/nginx/nginx.conf"
IDR_CONF = "/etc/nginx/conf.d/idr.conf"
MAINTENANCE_ROOT = "/usr/share/nginx/idr"
MAINTENANCE_PAGE = "maintenance.html"
# ACME HTTP-01 challenges (/.well-known/acme-challenge/) are answered from
# here on both public ports, never redirected (production serves them too): a
# certificate can be had with `certbot certonly --webroot -w <this>` on the
# proxy, then goes into stack config (idr:tlsCertificateChain, idr:tlsPrivateKey).
ACME_ROOT = "/usr/share/nginx/acme"
# IDR's website (idr.openmicroscopy.org) at /about/, and OMERO clients'
# connection file at /connection/, where IDR's playbooks put them: WEBSITE_LINK
# is a symlink to the fetched site (render/website.py), or to a one-line page.
WWW_ROOT = "/srv/www"
WEBSITE_LINK = f"{WWW_ROOT}/html"
WEBSITE_PATH = "/about"
CONNECTION_DIR = f"{WWW_ROOT}/connection"
CONNECTION_FILE = f"{CONNECTION_DIR}/omero-client.json"
# IDR's maintenance page, when the website has one; else the program's own.
WEBSITE_MAINTENANCE_PAGE = "omero-maintenance.html"
HTTPS_PORT = 443
CACHE_DIR = DATA_VOLUME_MOUNTS["proxy"]          # the cache volume's mount point
PURGE_SCRIPT = "/usr/local/sbin/idr-nginx-cache-purge"
PURGE_RECORD = "/var/lib/idr/nginx-cache-purge-generation"   # last generation purged

# Ports. OMERO.web is reached on settings.omero_web_port (80) of the OMERO
# hosts: IDR's deployment playbooks put it behind each host's own nginx there
# (gunicorn on 127.0.0.1:4080 answers only locally). OMERO's websockets
# (Glacier2) listen on 4065 of the read-only servers; JupyterHub on 8000.
OMERO_WEBSOCKET_PORT = 4065
OMERO_WEBSOCKET_PATH = "/omero-ws"
WEBSOCKET_TIMEOUT = "1d"      # an idle websocket session stays open this long
JUPYTERHUB_PORT = 8000
CACHE_BUSTER_PORT = 9000      # 127.0.0.1 only: operators come through an SSH tunnel
LONG_REQUEST_PORT = 8009      # 127.0.0.1 only, as above
RSYNC_PORT = 873
GRAFANA_PORT, PROMETHEUS_PORT = 3000, 9090     # on <env>-management (IDR's)

# OMERO's own ports (Ice: 4063 plain, 4064 SSL), forwarded by nginx's stream
# module to the same port of every read-only server. PROXY_OMERO_PORT_RANGE
# pins one public port per read-only server: first + (n - 1) -> omeroreadonly-n.
OMERO_PORTS = (4063, 4064)
PINNED_BACKEND_PORT = 4064
PINNED_FIRST, PINNED_LAST = PROXY_OMERO_PORT_RANGE
PINNED_MAX = PINNED_LAST - PINNED_FIRST + 1
STREAM_CONNECT_TIMEOUT = "5s"
STREAM_TIMEOUT = "1h"        # idle time after which a forwarded connection is closed

# Where a refused login sends the browser: the public view.
PUBLIC_VIEW = "/webclient/?experimenter=-1"
# OMERO.web's own nginx sets X-Forwarded-Proto itself (to its own scheme, http);
# the playbooks make OMERO.web read the client's scheme from this header instead.
SCHEME_HEADER = "X-Forwarded-Proto-Omero-Web"

# rsync: the public data on omeroreadwrite, served read-only through the proxy.
RSYNCD_CONF = "/etc/rsyncd.conf"
RSYNCD_PID = "/run/rsyncd.pid"      # as rsyncd.conf names it
RSYNC_MODULE = "idr"
RSYNC_PATH = DATA_VOLUME_MOUNTS["omeroreadwrite"]


@dataclass(frozen=True)
class Family:
    """A URL family production caches: a regex on $uri and its cache zone
    (falls back to 'default' when the zone is not configured)."""

    name: str
    regex: str
    zone: str


# Order matters: the first match picks the zone (thumbnails before render_).
CACHED_FAMILIES = (
    Family("thumbnails", r"^/web(?:client|gateway)/(?:get_thumbnail|render_thumbnail|render_birds_eye_view)",
           "thumbnails"),
    Family("render", r"^/web(?:client|gateway)/render_", "render"),
    Family("metadata", r"^/web(?:client|gateway)/metadata_", "metadata"),
    Family("api", r"^/(?:webclient/)?api/", "api"),
    Family("static", r"^/static/", "static"),
    Family("gallery-api", r"^/gallery-api/", "default"),
    Family("img_detail", r"^/webclient/img_detail/", "default"),
    Family("iviewer", r"^/iviewer/", "default"),
    Family("search", r"^/webclient/search/", "default"),
    Family("figure", r"^/figure/", "default"),
)
# mapr's queries are slow: cached in a location of its own with the long read
# timeout (idr:nginxLongReadTimeout) on every port. Its own zone when one
# named "mapr" is configured (production: 5g), else default.
MAPR = Family("mapr", r"^/mapr/", "mapr")


def nginx_string(text: str) -> str:
    """`text` as a double-quoted nginx string that nginx takes literally: a
    '$' becomes ${idr_dollar} (a variable holding '$'), since nginx has no
    escape for it and would read '$8...' as a regex capture."""
    return '"' + text.replace("$", "${idr_dollar}") + '"'


def _keys_zone_mb(size_bytes: int) -> int:
    """Shared memory for cache keys: about 1/64 of the zone's disk size
    (1 MB holds ~8000 keys), at least 1 MB, at most 512 MB."""
    return max(1, min(512, size_bytes // (64 * 1024**2)))


def pinned_ports(settings: Settings) -> list[dict]:
    """One public port per read-only server, for the first PINNED_MAX of them:
    {"port", "alias", "backend"}."""
    return [
        {"port": PINNED_FIRST + h.index - 1, "alias": h.alias, "backend": f"{h.fixed_ip}:{PINNED_BACKEND_PORT}"}
        for h in layout.hosts_of(settings, "omeroreadonly") if h.index <= PINNED_MAX
    ]


def tls_self_signed(settings: Settings) -> bool:
    """No certificate chain in config: the proxy makes itself a self-signed
    placeholder (and never touches a certificate already there)."""
    return not settings.tls_certificate_chain


def session_cookie_regex(name: str) -> str:
    """A PCRE matching a Cookie header that carries cookie `name` with a
    value. nginx's $cookie_<name> cannot name a cookie with '-' or '.' in it
    (sessionid_<environment>, and environments have dashes)."""
    return r"(?:^|;)\s*" + re.escape(name) + r"=[^;\s]"


def _context(settings: Settings) -> dict:
    zone_names = {z.name for z in settings.nginx_cache_zones}
    families = [
        {"name": f.name, "regex": f.regex, "zone": f.zone if f.zone in zone_names else "default"}
        for f in (*CACHED_FAMILIES, MAPR)
    ]
    # One location for every cached family but mapr; regexes are all anchored at ^.
    cached_regex = "^(?:" + "|".join(f.regex[1:] for f in CACHED_FAMILIES) + ")"
    web_port = settings.omero_web_port
    # Grafana and Prometheus's federation on the management host (idr:monitoringEnabled).
    management = layout.host(settings, "management").fixed_ip if settings.monitoring_enabled else ""
    return {
        "settings": settings,
        "zones": [
            {"name": z.name, "size": z.size, "keys_mb": _keys_zone_mb(z.bytes)}
            for z in settings.nginx_cache_zones
        ],
        "families": families,
        "cached_regex": cached_regex,
        "mapr_regex": MAPR.regex,
        "cache_dir": CACHE_DIR,
        "readonly": [f"{h.fixed_ip}:{web_port}" for h in layout.hosts_of(settings, "omeroreadonly")],
        "readonly_ws": [f"{h.fixed_ip}:{OMERO_WEBSOCKET_PORT}" for h in layout.hosts_of(settings, "omeroreadonly")],
        "websocket_path": OMERO_WEBSOCKET_PATH,
        "websocket_timeout": WEBSOCKET_TIMEOUT,
        "readwrite": f"{layout.host(settings, 'omeroreadwrite').fixed_ip}:{web_port}",
        "jupyterhub": f"{layout.host(settings, 'dockermanager').fixed_ip}:{JUPYTERHUB_PORT}",
        "grafana": f"{management}:{GRAFANA_PORT}" if management else "",
        "prometheus": f"{management}:{PROMETHEUS_PORT}" if management else "",
        "rsync_backend": f"{layout.host(settings, 'omeroreadwrite').fixed_ip}:{RSYNC_PORT}",
        "rsync_port": RSYNC_PORT,
        "omero_ports": OMERO_PORTS,
        "omero_upstreams": {
            port: [f"{h.fixed_ip}:{port}" for h in layout.hosts_of(settings, "omeroreadonly")] for port in OMERO_PORTS
        },
        "pinned": pinned_ports(settings),
        "unpinned": [h.alias for h in layout.hosts_of(settings, "omeroreadonly") if h.index > PINNED_MAX],
        "pinned_first": PINNED_FIRST,
        "pinned_max": PINNED_MAX,
        "pinned_backend_port": PINNED_BACKEND_PORT,
        "stream_connect_timeout": STREAM_CONNECT_TIMEOUT,
        "stream_timeout": STREAM_TIMEOUT,
        "cache_buster_port": CACHE_BUSTER_PORT,
        "long_request_port": LONG_REQUEST_PORT,
        "public_view": PUBLIC_VIEW,
        "scheme_header": SCHEME_HEADER,
        "session_cookie_regex": session_cookie_regex(settings.session_cookie_name),
        "acme_root": ACME_ROOT,
        "maintenance_root": MAINTENANCE_ROOT,
        "maintenance_page": MAINTENANCE_PAGE,
        "idr_conf": IDR_CONF,
        "direct_redirects": [
            {"location": r.location, "code": r.code, "destination": nginx_string(r.destination)}
            for r in settings.nginx_direct_redirects],
        # Keys are literal (or regexes, '$' an anchor): only the values are nginx strings.
        "redirect_map": [(f'"{e.match}"', nginx_string(e.destination)) for e in settings.nginx_redirect_map],
        "redirect_locations": [{"location": r.location, "code": r.code} for r in settings.nginx_redirect_locations],
        "website_path": WEBSITE_PATH,
        "website_link": WEBSITE_LINK,
        "website_maintenance_page": WEBSITE_MAINTENANCE_PAGE,
        "connection_dir": CONNECTION_DIR,
        "own_locations": PROXY_OWN_LOCATIONS,
        "environment_path": ENVIRONMENT_PATH,
    }


def nginx_conf(settings: Settings) -> str:
    """/etc/nginx/nginx.conf: main context, http shell, and the stream block
    (OMERO's ports; rsync when enabled)."""
    return render_template("nginx/nginx.conf.j2", **_context(settings))


def idr_conf(settings: Settings) -> str:
    """/etc/nginx/conf.d/idr.conf: caches, upstreams and every server."""
    return render_template("nginx/idr.conf.j2", **_context(settings))


def omero_client_json(settings: Settings) -> str:
    """/connection/omero-client.json, as IDR's idr-haproxy.yml writes it: the
    arguments an OMERO client (omero-py, idr-py) connects to the public IDR
    with: Glacier2 over websockets on the proxy's public HTTPS port and
    OMERO_WEBSOCKET_PATH (@omero.host@ is the host the client was given), as
    OMERO.web's public user."""
    return json.dumps([
        f"--Ice.Default.Router=OMERO.Glacier2/router:wss -p {HTTPS_PORT} -h @omero.host@ -r {OMERO_WEBSOCKET_PATH}",
        "--omero.user=public",
        "--omero.pass=public",
    ], indent=1) + "\n"


def maintenance_html(settings: Settings) -> str:
    return render_template("nginx/maintenance.html.j2", server_name=settings.server_name)


def nginx_files(settings: Settings) -> list[HostFile]:
    """Every file nginx reads on the proxy, and the purge script. The script
    travels with nginx, not with the purge command, so that a change of its
    text never re-runs a purge: only a new idr:cachePurgeGeneration does."""
    return [
        HostFile(NGINX_CONF, nginx_conf(settings)),
        HostFile(IDR_CONF, idr_conf(settings)),
        HostFile(f"{MAINTENANCE_ROOT}/{MAINTENANCE_PAGE}", maintenance_html(settings)),
        HostFile(CONNECTION_FILE, omero_client_json(settings)),
        HostFile(PURGE_SCRIPT, purge_script(settings), mode="0755"),
    ]


def setup_script(settings: Settings) -> str:
    """Shell run as root on the proxy after the files are in place: install,
    check, reload (or start on first run)."""
    return render_template(
        "nginx/setup.sh.j2",
        settings=settings,
        cache_dir=CACHE_DIR,
        maintenance_root=MAINTENANCE_ROOT,
        acme_root=ACME_ROOT,
        www_root=WWW_ROOT,
        self_signed=tls_self_signed(settings),
        rsync_port=RSYNC_PORT,
        # Ports nginx's stream listens on for OMERO (SELinux labels them http_port_t).
        omero_stream_ports=[*map(str, OMERO_PORTS), f"{PINNED_FIRST}-{PINNED_LAST}"],
    )


def _b64(text: str) -> str:
    return "\n".join(textwrap.wrap(base64.b64encode(text.encode()).decode(), 76))


def tls_script(settings: Settings, private_key: str) -> str:
    """Shell run as root on the proxy that puts idr:tlsCertificateChain and
    idr:tlsPrivateKey at idr:tlsCertificate (0644) and idr:tlsCertificateKey
    (0600) together, and takes them back if nginx -t refuses them.

    The text holds the private key: the Proxy component only ever passes it
    as a secret Output (the stdin of a remote command), never as a HostFile."""
    if tls_self_signed(settings):
        raise ValueError("no idr:tlsCertificateChain: the proxy uses a self-signed certificate")
    return render_template(
        "nginx/tls-install.sh.j2",
        host=layout.host(settings, "proxy").name,
        cert=settings.tls_certificate,
        key=settings.tls_certificate_key,
        chain_b64=_b64(settings.tls_certificate_chain),
        key_b64=_b64(private_key if private_key.endswith("\n") else private_key + "\n"),
    )


def purge_script(settings: Settings) -> str:
    """The page's `rm -rf /var/cache/nginx/*`, guarded, then a reload."""
    return render_template("nginx/cache-purge.sh.j2", cache_dir=CACHE_DIR)


def purge_files(settings: Settings) -> list[HostFile]:
    """What the purge command itself installs: the generation it runs for,
    so the host shows which purge it last did. It changes only together
    with the trigger, so it never causes a run of its own."""
    return [HostFile(PURGE_RECORD, f"{settings.cache_purge_generation}\n")]


def rsyncd_conf(settings: Settings) -> str:
    """/etc/rsyncd.conf on omeroreadwrite: one read-only module over /data,
    reachable only from the proxy (which forwards its public 873)."""
    return render_template(
        "rsync/rsyncd.conf.j2",
        module=RSYNC_MODULE,
        path=RSYNC_PATH,
        proxy_ip=layout.host(settings, "proxy").fixed_ip,
    )


def rsyncd_files(settings: Settings) -> list[HostFile]:
    return [HostFile(RSYNCD_CONF, rsyncd_conf(settings))]


def rsyncd_off_script(settings: Settings) -> str:
    """With rsync off: stop and disable the daemon a former `on` started,
    and remove the config this program wrote."""
    return render_template("rsync/off.sh.j2", path=RSYNC_PATH, pid_file=RSYNCD_PID, conf=RSYNCD_CONF)


def rsyncd_setup_script(settings: Settings) -> str:
    return render_template("rsync/setup.sh.j2", path=RSYNC_PATH)
