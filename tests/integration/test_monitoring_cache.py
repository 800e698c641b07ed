"""The proxy's monitoring with real software: the rendered nginx (monitoring
on) with stub OMERO.web, Grafana and Prometheus backends on loopback, and
real mtail (Debian's) tailing nginx's real access log with the program's
mtail file, as the proxy runs it (idr-mtail.service). Prometheus's scrape is
stood for by reading mtail's /metrics and checking it with promtool.

- Cache metrics: a thumbnail's MISS then HIT, a render answer OMERO.web
  fails (502, an upstream error), a page nginx serves itself; request times
  by URL family.
- /grafana/ reaches Grafana, read-only (GET, and POST only for panel data
  queries), never cached, no cookie either way; /prometheus/federate reaches
  Prometheus's /federate.
"""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import time

import pytest

from components.render import monitoring
from components.render import nginx as render
from tests.support.nginx import Nginx, ProxyUnderTest, StubBackend, free_port, gixy_report, header
from tests.support.settings import proxy_settings
from tests.support.tools import tool

pytestmark = pytest.mark.integration

MTAIL, PROMTOOL = tool("mtail"), tool("promtool")
THUMB = "/webgateway/render_thumbnail/101/96/"
FAILING = "/webgateway/render_image/7/0/0/"


class Mtail:
    """mtail as idr-mtail.service starts it, on a loopback port."""

    def __init__(self, tmp, log):
        progs = tmp / "mtail"
        progs.mkdir()
        (progs / monitoring.MTAIL_PROGRAM).write_text((monitoring.FILES / monitoring.MTAIL_PROGRAM).read_text())
        self.port = free_port()
        self.proc = subprocess.Popen([MTAIL, "--progs", str(progs), "--logs", str(log), "--address", "127.0.0.1",
                                      "--port", str(self.port), "--logtostderr"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "mtail not listening"
                time.sleep(0.1)

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200
            return resp.read().decode()
        finally:
            conn.close()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def proxy(tmp_path, cert_pair):
    """nginx with monitoring on; the management host's Grafana and Prometheus are stubs."""
    proxy = ProxyUnderTest(tmp_path / "nginx", cert_pair, monitoringEnabled="true")
    proxy.grafana = StubBackend("grafana", proxy.state)
    proxy.prometheus = StubBackend("prometheus", proxy.state)
    backends = {**proxy.backends, "management": {render.GRAFANA_PORT: proxy.grafana.address,
                                                 render.PROMETHEUS_PORT: proxy.prometheus.address}}
    proxy.nginx = Nginx(proxy.settings, proxy.tmp, backends, *cert_pair)
    proxy.state.responses[FAILING] = (502, "text/plain", b"OMERO.web failed")
    proxy.start()
    yield proxy
    proxy.stop()
    proxy.grafana.stop()
    proxy.prometheus.stop()


def value(text: str, name: str, **labels) -> float:
    """The sample of `name` whose labels include `labels` (exactly one)."""
    found = []
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            found.append(float(line.rsplit(" ", 1)[1]))
    assert len(found) == 1, (name, labels, found)
    return found[0]


def warmed_up(proxy, mtail) -> float:
    """mtail counting the log, every warm-up line in: the count of nginx's
    own (family other, not cacheable) requests to add to."""
    # mtail reads the log from its end once it has opened it: until a line
    # is counted, it may not have.
    deadline = time.monotonic() + 20
    while 'family="other"' not in mtail.metrics():
        proxy.get("http", "/about/")
        assert time.monotonic() < deadline, "mtail counts nothing"
        time.sleep(0.2)
    # Every warm-up line written out (the log is buffered) and counted.
    proxy.flush_logs()
    others, deadline = None, time.monotonic() + 20
    while others != (others := value(mtail.metrics(), "idr_nginx_requests_total", family="other", cache="-")):
        assert time.monotonic() < deadline, "mtail's count does not settle"
        time.sleep(0.5)
    return others


def test_cache_metrics_from_the_real_access_log(proxy, tmp_path):
    mtail = Mtail(tmp_path, proxy.tmp / "log" / "access.log")
    try:
        others = warmed_up(proxy, mtail)
        for _ in range(2):                                   # MISS, then HIT
            assert proxy.get("http", THUMB)[0] == 200
        assert proxy.get("https", FAILING)[0] == 502
        assert proxy.get("http", "/about/")[0] in (200, 404)  # nginx's own answer: not cacheable
        requests = ("thumbnails", "MISS", "200"), ("thumbnails", "HIT", "200"), ("render", "MISS", "502")
        deadline = time.monotonic() + 20
        while True:                                          # mtail tails the log as nginx writes it
            text = mtail.metrics()
            if all(f'cache="{c}",family="{f}"' in text and f'status="{s}"' in text for f, c, s in requests) \
                    and value(text, "idr_nginx_requests_total", family="other", cache="-") == others + 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        for family, cache, status in requests:
            assert value(text, "idr_nginx_requests_total", family=family, cache=cache, status=status) == 1
        assert value(text, "idr_nginx_upstream_errors_total", family="render", status="502") == 1
        assert value(text, "idr_nginx_request_seconds_count", family="thumbnails") == 2
        assert value(text, "idr_nginx_request_seconds_bucket", family="thumbnails", le="+Inf") == 2
        lines = [line for line in text.splitlines() if line.startswith(("# HELP idr_", "# TYPE idr_", "idr_"))]
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input="\n".join(lines) + "\n",
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        mtail.stop()


def test_a_starved_mtail_counts_every_line_later_across_a_log_rotation(proxy, tmp_path):
    """mtail runs under SCHED_IDLE: on a saturated proxy it gets no CPU and
    falls behind. Stopped outright here (SIGSTOP) while nginx writes lines
    and the log is rotated as logrotate does it (rename, then nginx's
    reopen), it counts every one of them once it runs again: late, not lost."""
    log = proxy.tmp / "log" / "access.log"
    mtail = Mtail(tmp_path, log)
    try:
        others = warmed_up(proxy, mtail)
        mtail.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(30):
                assert proxy.get("http", "/about/")[0] in (200, 404)
            proxy.flush_logs()
            log.rename(log.with_name("access.log.1"))
            proxy.flush_logs()                               # nginx -s reopen: a new access.log
            for _ in range(20):
                assert proxy.get("http", "/about/")[0] in (200, 404)
            proxy.flush_logs()
            assert log.exists() and len(log.read_text().splitlines()) == 20
        finally:
            mtail.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while (counted := value(mtail.metrics(), "idr_nginx_requests_total", family="other", cache="-")) < others + 50:
            assert time.monotonic() < deadline, f"mtail counted {counted - others} of 50 lines"
            time.sleep(0.5)
        time.sleep(1)
        assert value(mtail.metrics(), "idr_nginx_requests_total", family="other", cache="-") == others + 50
    finally:
        mtail.stop()


def test_grafana_read_only_never_cached_and_federation(proxy):
    for _ in range(2):
        status, headers, _ = proxy.get("https", "/grafana/d/idr-cache", headers={"Cookie": "grafana_session=x"})
        assert status == 200 and header(headers, "X-Cache-Status") == []
    seen = [s for s in proxy.state.seen if s.backend == "grafana"]
    assert [s.path for s in seen] == ["/grafana/d/idr-cache"] * 2          # never from a cache
    assert all("Cookie" not in s.headers for s in seen)
    # Panels' data queries are the only POST; nothing else writes.
    assert proxy.get("https", "/grafana/api/ds/query", method="POST", body=b"{}",
                     headers={"Content-Type": "application/json"})[0] == 200
    for method, path in (("POST", "/grafana/login"), ("POST", "/grafana/api/dashboards/db"),
                         ("DELETE", "/grafana/api/dashboards/uid/idr-cache"), ("PUT", "/grafana/api/user"),
                         ("GET", "/grafana/api/ds/query")):
        assert proxy.get("https", path, method=method, body=b"{}")[0] == 403, (method, path)
    assert [s.method for s in proxy.state.seen if s.backend == "grafana"] == ["GET", "GET", "POST"]
    assert proxy.get("http", "/grafana")[0] == 301
    assert proxy.get("http", "/prometheus/federate?match[]=up")[0] == 200
    assert proxy.get("http", "/prometheus/federate", method="POST", body=b"")[0] == 403
    # No other path of Prometheus is reachable (these go where any path goes: OMERO.web).
    proxy.get("http", "/prometheus/federate/../api/v1/admin/tsdb/snapshot")
    proxy.get("http", "/prometheus/api/v1/query?query=up")
    proxy.get("http", "/prometheus/federate/x")
    assert [s.path for s in proxy.state.seen if s.backend == "prometheus"] == ["/federate?match[]=up"]


@pytest.mark.parametrize("raw", [{}, {"maintenance": True}, {"httpsRedirect": True, "jupyterEnabled": True}])
def test_nginx_t_and_gixy_with_monitoring(tmp_path, cert_pair, raw):
    nginx = Nginx(proxy_settings(monitoringEnabled=True, **raw), tmp_path, {}, *cert_pair, keep_listens=True)
    assert "location ^~ /grafana/ {" in (tmp_path / "etc/nginx/conf.d/idr.conf").read_text()
    checked = nginx.test_config()
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    report = gixy_report(nginx.conf)
    assert report.returncode == 0, report.stderr
    serious = [i for i in json.loads(report.stdout) if i["severity"] in ("MEDIUM", "HIGH")]
    assert serious == [], serious
