"""What IDR's users and operators find on the proxy besides OMERO.web (issue
20), in real nginx with the rendered config and the stub OMERO.web: IDR's
access log read by IDR's own fluentd regex, IDR's redirects, the website at
/about/, the connection file at /connection/."""
from __future__ import annotations

import json
import re
import time

import pytest

from components.render import nginx as render
from tests.support.nginx import header

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

THUMB = "/webgateway/render_thumbnail/101/96/"
PUBLIC = ("http", "https")

# IDR/deployment 61583a5, ansible/files/fluentd/nginx-proxy.conf: the `format`
# of its nginx.access source, verbatim (Ruby's named groups).
FLUENTD_NGINX_ACCESS = (
    r'/^(?<host>[^ ]*) - (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>[^ ]*) +\S*)?" '
    r'(?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>[^\"]*)" "(?<agent>[^\"]*)")? "(?<forwarded>[^\"]*)" '
    r'(?<reqtime>[^ ]*) (?<cachestatus>[^ ]*) (?<upstream>[^ ]*)/')
# ... and its time_format.
FLUENTD_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


def fluentd_regex() -> re.Pattern:
    """The Ruby regex in Python: /.../ delimiters off, (?<name> -> (?P<name>."""
    body = FLUENTD_NGINX_ACCESS[1:-1]
    return re.compile(body.replace("(?<", "(?P<"))


def website(proxy, files: dict | None) -> None:
    """The proxy's /srv/www/html: a fetched site (`files`), or (None) the
    placeholder the website step links while there is none."""
    www = proxy.tmp / "srv-www"
    target = www / ("releases/r1" if files is not None else "placeholder")
    target.mkdir(parents=True, exist_ok=True)
    if files is None:
        from components.render import website as site
        (target / "index.html").write_text(site.placeholder_html(proxy.settings))
    for name, text in (files or {}).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    link = www / "html"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target.relative_to(www))


def log_lines(proxy, name: str = "access.log") -> list[str]:
    proxy.flush_logs()
    return (proxy.tmp / "log" / name).read_text().splitlines()


# ------------------------------------------------------------------ access log

def test_access_log_is_idrs_and_fluentd_parses_miss_and_hit(proxy_factory):
    proxy = proxy_factory()
    assert "log_format main_timed_cache_upstream\n" in render.nginx_conf(proxy.settings)
    assert "access_log /var/log/nginx/access.log main_timed_cache_upstream buffer=64k flush=1s;" in \
        render.nginx_conf(proxy.settings)
    agent, referer = 'Mozilla/5.0 (X11; "quoted")', "https://idr.openmicroscopy.org/webclient/?show=image-1"
    hdrs = {"User-Agent": agent, "Referer": referer, "X-Forwarded-For": "198.51.100.7"}
    for _ in range(2):                                  # MISS, then HIT
        assert proxy.get("http", THUMB + "?x=1", headers=hdrs)[0] == 200
    assert proxy.get("https", "/webclient/?show=image-1")[0] == 200           # passes through: no cache status
    assert proxy.get("http", "/webclient/login/")[0] == 302                   # answered by nginx itself
    lines = log_lines(proxy)
    assert len(lines) == 4, lines
    regex = fluentd_regex()
    parsed = [regex.match(line) for line in lines]
    assert all(parsed), lines
    # Each nginx worker writes its own buffer: the lines, found by what they
    # say, not by their order.
    fields = [m.groupdict() for m in parsed]

    def one(**want) -> dict:
        (found,) = [f for f in fields if all(f[k] == v for k, v in want.items())]
        return found
    miss, hit = one(cachestatus="MISS"), one(cachestatus="HIT")
    passed, redirect = one(path="/webclient/?show=image-1"), one(path="/webclient/login/")
    for m in (miss, hit):
        assert (m["host"], m["user"], m["method"], m["path"], m["code"]) == \
            ("127.0.0.1", "-", "GET", THUMB + "?x=1", "200")
        # nginx escapes the agent's quotes (\x22): the field stays one field.
        assert m["referer"] == referer and m["agent"] == agent.replace('"', "\\x22")
        assert m["forwarded"] == "198.51.100.7" and int(m["size"]) > 0 and float(m["reqtime"]) >= 0
        time.strptime(m["time"], FLUENTD_TIME_FORMAT)
    assert miss["cachestatus"] == "MISS" and miss["upstream"] == proxy.ro.address
    assert hit["cachestatus"] == "HIT" and hit["upstream"] == "-"
    assert passed["cachestatus"] == "-" and passed["upstream"] == proxy.ro.address
    assert redirect["code"] == "302" and redirect["upstream"] == "-"
    # IDR's operators' grep (its molecule test): '"GET <path> HTTP/1.1" 200 .+ HIT -'
    assert re.search(rf'"GET {re.escape(THUMB)}\?x=1 HTTP/1.1" 200 .+ HIT -', "\n".join(lines))


def test_timing_log_has_what_idrs_format_leaves_out(proxy_factory):
    proxy = proxy_factory()
    proxy.get("http", THUMB)
    proxy.get("buster", THUMB)
    # The log is buffered (flush=5s): wait for nginx's flush; a worker that
    # exits writes what it still holds, so read again after the stop.
    deadline = time.monotonic() + 20
    while len(log_lines(proxy, "timing.log")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    proxy.stop()
    lines = log_lines(proxy, "timing.log")
    assert len(lines) == 2, lines
    # Each worker flushes its own buffer: the lines may come in either order.
    ports = set()
    for line in lines:
        m = re.fullmatch(rf'\S+ (\d+) 200 \S+ rt=[0-9.]+ urt=[0-9.]+ "GET {re.escape(THUMB)} HTTP/1.1"', line)
        assert m, line
        ports.add(int(m[1]))
    assert ports == {proxy.nginx.port("http"), proxy.nginx.port("buster")}, lines


# ------------------------------------------------------------------ redirects

@pytest.mark.parametrize("port", PUBLIC)
def test_idrs_direct_redirects(proxy_factory, port):
    proxy = proxy_factory()
    expected = {
        "/webclient": (302, render.PUBLIC_VIEW),
        "/webclient/login": (302, render.PUBLIC_VIEW),
        "/webclient/login/?url=/webclient/": (302, render.PUBLIC_VIEW),
        "/mineotaur/anything": (302, "/about/mineotaur.html"),
        "/jupyter": (302, "/about/analysis-environments.html"),
        "/jupyter/hub/login": (302, "/about/analysis-environments.html"),
        "/curation-workflow": (302, "/about/curation-workflow.html"),
        "/submitter-survey": (302, "https://forms.gle/beR4vqLrgLgRzgSX9"),
    }
    cookie = {"Cookie": "sessionid_test=a-session"}
    for path, (code, location) in expected.items():
        for method in ("GET", "POST"):
            status, headers, _ = proxy.get(port, path, method=method, headers=cookie)
            assert (status, header(headers, "Location")) == (code, [location]), (path, method)
            assert header(headers, "Access-Control-Allow-Origin") == ["*"], path
    # The neighbours still reach OMERO.web; nothing above did.
    assert proxy.state.count() == 0
    for path in ("/webclient/", "/curation-workflow/x", "/webclientx"):
        assert proxy.get(port, path)[0] == 200, path
    assert proxy.state.count() == 3


@pytest.mark.parametrize("port", PUBLIC)
def test_every_redirect_of_the_study_map(proxy_factory, port):
    proxy = proxy_factory()
    for entry in proxy.settings.nginx_redirect_map:
        if entry.match.startswith("~"):
            continue
        path = entry.match
        status, headers, _ = proxy.get(port, path)
        code = 301 if path.startswith("/study/") else 302
        assert (status, header(headers, "Location")) == (code, [entry.destination]), path
    # IDR's links carry a literal '$' ("c=1|318:9927$808080"), which nginx would read as a capture.
    assert any("9927$808080" in e.destination for e in proxy.settings.nginx_redirect_map)
    # The regex entries: any other URL of /mito, /tara, /pgpc; and the map's default.
    for path, location in (("/mito", "/webclient/?show=screen-1101"), ("/tara/x", "/webclient/?show=screen-1201"),
                           ("/pgpc/webclient/?show=run-9", "/webclient/?show=screen-1151")):
        status, headers, _ = proxy.get(port, path)
        assert (status, header(headers, "Location")) == (302, [location]), path
    assert proxy.state.count() == 0
    assert proxy.get(port, "/mitochondria")[0] == 200         # not /mito/: OMERO.web's
    assert proxy.get(port, "/study/idr0083/figure/4j")[0] == 200


def test_redirects_from_config_and_jupyter_route_taking_precedence(proxy_factory):
    proxy = proxy_factory(jupyterEnabled=True, nginxDirectRedirects='["= /old 301 /about/new.html"]',
                  nginxRedirectMap='["/s/1 /webclient/?show=screen-1"]', nginxRedirectLocations='["^~ /s/ 302"]')
    for path, location, code in (("/old", "/about/new.html", 301), ("/s/1", "/webclient/?show=screen-1", 302),
                                 ("/s/2", "/", 302)):
        status, headers, _ = proxy.get("https", path)
        assert (status, header(headers, "Location")) == (code, [location]), path
    # IDR's defaults are replaced, not added to: /mineotaur is OMERO.web's now.
    assert proxy.get("https", "/mineotaur")[0] == 200
    # jupyterEnabled: /jupyter/ is JupyterHub's, /jupyter goes there.
    assert proxy.get("https", "/jupyter/hub/")[0] == 200 and proxy.state.count(backend="jupyterhub") == 1
    status, headers, _ = proxy.get("https", "/jupyter")
    assert (status, header(headers, "Location")) == (302, ["/jupyter/"])


# ------------------------------------------------------------------ /about/

@pytest.mark.parametrize("port", PUBLIC)
def test_about_redirects_to_about_slash_with_public_scheme_and_host(proxy_factory, port):
    proxy = proxy_factory()
    status, headers, _ = proxy.get(port, "/about", headers={"Host": "idr.example.org"})
    scheme = "https" if port == "https" else "http"
    assert (status, header(headers, "Location")) == (301, [f"{scheme}://idr.example.org/about/"])
    assert header(headers, "Access-Control-Allow-Origin") == ["*"]


def test_about_serves_the_website_then_the_placeholder_never_omero_web(proxy_factory):
    proxy = proxy_factory()
    website(proxy, {"index.html": "<h1>The IDR makes datasets</h1>\n", "experiments.html": "experiments\n",
                    "img/logos/logo-idr.svg": "<svg/>\n"})
    for port in PUBLIC:
        for path, text in (("/about/", "The IDR makes datasets"), ("/about/index.html", "The IDR makes datasets"),
                           ("/about/experiments.html", "experiments"), ("/about/img/logos/logo-idr.svg", "<svg/>")):
            status, headers, body = proxy.get(port, path)
            assert status == 200 and text in body, (port, path)
            assert header(headers, "Access-Control-Allow-Origin") == ["*"]
        assert proxy.get(port, "/about/missing.html")[0] == 404
    website(proxy, None)                                  # no site: the one-line page says so
    status, _h, body = proxy.get("https", "/about/")
    assert status == 200 and "has not been fetched to this proxy yet" in body and len(body.splitlines()) == 1
    assert proxy.get("https", "/about/experiments.html")[0] == 404
    assert proxy.state.count() == 0                       # OMERO.web never saw /about


def test_about_without_a_website_configured(proxy_factory):
    proxy = proxy_factory(websiteRef="")
    website(proxy, None)
    status, _h, body = proxy.get("http", "/about/")
    assert status == 200 and "not installed on this proxy (idr:websiteRef is empty)" in body
    assert proxy.state.count() == 0


def test_maintenance_page_from_the_website_else_the_programs(proxy_factory):
    proxy = proxy_factory(maintenance=True)
    website(proxy, None)                                  # no site yet: the program's page
    status, headers, body = proxy.get("https", "/webclient/")
    assert status == 503 and "down for maintenance" in body
    assert header(headers, "Access-Control-Allow-Origin") == ["*"]
    website(proxy, {"index.html": "site\n", "omero-maintenance.html": "<p>IDR is being updated</p>\n"})
    for port in PUBLIC:
        status, _h, body = proxy.get(port, "/webclient/?show=image-1")
        assert status == 503 and "IDR is being updated" in body
        assert proxy.get(port, "/about/")[0] == 200                # the website stays up
    assert proxy.state.count() == 0


# ------------------------------------------------------------------ /connection/

@pytest.mark.parametrize("port", PUBLIC)
def test_connection_file_from_the_published_ports_with_cors(proxy_factory, port):
    proxy = proxy_factory()
    status, headers, body = proxy.get(port, "/connection/omero-client.json")
    assert status == 200 and header(headers, "Content-Type") == ["application/json"]
    assert header(headers, "Access-Control-Allow-Origin") == ["*"]
    assert json.loads(body) == [
        f"--Ice.Default.Router=OMERO.Glacier2/router:wss -p {render.HTTPS_PORT} -h @omero.host@ "
        f"-r {render.OMERO_WEBSOCKET_PATH}",
        "--omero.user=public", "--omero.pass=public"]
    assert proxy.state.count() == 0
