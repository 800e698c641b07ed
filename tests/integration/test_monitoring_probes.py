"""Which environment holds an address of idr:probeAddresses, for real:
rendered nginx (the proxy's) answers its environment's name at
/idr-environment on both public ports, unlogged, whatever
idr:httpsRedirect and idr:maintenance say; the real blackbox exporter
(Debian's, the version the program runs) checks the rendered config and
probes that nginx on loopback with the program's modules: "holds" only for
its own environment's name, "answers" for any IDR proxy, neither for a
silent address."""
from __future__ import annotations

import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from components.layout import ENVIRONMENT_PATH
from components.render import monitoring
from tests.support.nginx import free_port, header
from tests.support.settings import proxy_settings, settings_for
from tests.support.tools import tool

pytestmark = pytest.mark.integration

BLACKBOX = tool("prometheus-blackbox-exporter")


@pytest.mark.parametrize("raw", [{}, {"httpsRedirect": True}, {"maintenance": True},
                                 {"httpsRedirect": True, "maintenance": True}])
def test_proxy_answers_its_environment_on_both_public_ports_unlogged(proxy_factory, raw):
    proxy = proxy_factory(**raw)
    name = proxy.settings.environment
    for port in ("http", "https"):
        status, headers, body = proxy.get(port, ENVIRONMENT_PATH)
        assert (status, body) == (200, f"{name}\n"), (port, status, body)
        assert header(headers, "Content-Type") == ["text/plain"]
        # Never a cache entry: nginx itself answers (no cache status to show).
        assert not header(headers, "X-Cache-Status")
    assert proxy.state.seen == []  # no backend asked
    # Exact match only: a longer path is not it.
    assert proxy.get("https", ENVIRONMENT_PATH + "/x")[2] != f"{name}\n"
    # A logged request for comparison: the probes never reach the access log (nor the cache metrics).
    proxy.get("https", "/about/")
    proxy.flush_logs()
    log = (proxy.tmp / "log" / "access.log").read_text()
    assert "/about/" in log and f"GET {ENVIRONMENT_PATH} " not in log


def test_blackbox_checks_every_stacks_rendered_config(tmp_path):
    out = subprocess.run([BLACKBOX, "--version"], capture_output=True, text=True)
    assert re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr).group(1) == monitoring.BLACKBOX_VERSION
    for stack in ("prod", "newidr"):
        path = tmp_path / f"{stack}.yml"
        path.write_text(monitoring.blackbox_config(settings_for(stack)))
        checked = subprocess.run([BLACKBOX, "--config.check", f"--config.file={path}"], capture_output=True, text=True)
        assert checked.returncode == 0 and "Config file is ok" in checked.stderr, checked.stderr
        # Deprecated or unknown keys would be warned about here (as no_follow_redirects was).
        assert "level=warn" not in checked.stderr and "level=error" not in checked.stderr, checked.stderr
    # The check is real: a module with a bad regexp is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text(monitoring.blackbox_config(settings_for("prod")).replace(r"\Aprod\n\z", "(prod"))
    assert subprocess.run([BLACKBOX, "--config.check", f"--config.file={broken}"], capture_output=True).returncode != 0


class Blackbox:
    """The real blackbox exporter on loopback with a rendered config."""

    def __init__(self, tmp_path, settings):
        self.config = tmp_path / f"blackbox-{settings.environment}.yml"
        self.config.write_text(monitoring.blackbox_config(settings))
        self.port = free_port()
        self.log = open(tmp_path / f"blackbox-{settings.environment}.log", "w")
        self.proc = subprocess.Popen([BLACKBOX, f"--config.file={self.config}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/healthy", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "blackbox exporter did not start"
                time.sleep(0.1)

    def probe_success(self, module: str, target: str) -> float:
        query = urllib.parse.urlencode({"module": module, "target": target})
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/probe?{query}", timeout=30).read().decode()
        return float(re.search(r"^probe_success (\S+)$", text, re.M).group(1))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_real_probes_tell_which_environment_holds_an_address(proxy_factory, tmp_path):
    # As the scrape job builds the URL from an address (http://<address>/idr-environment),
    # here with nginx's loopback port; httpsRedirect on, as in production.
    proxy = proxy_factory(httpsRedirect=True)
    target = f"http://127.0.0.1:{proxy.nginx.port('http')}{ENVIRONMENT_PATH}"
    silent = f"http://127.0.0.1:{free_port()}{ENVIRONMENT_PATH}"
    own = Blackbox(tmp_path, proxy.settings)
    other = Blackbox(tmp_path, proxy_settings("other"))
    try:
        assert proxy.settings.environment != "other"
        assert own.probe_success(monitoring.HOLDS_MODULE, target) == 1     # this environment holds it
        assert own.probe_success(monitoring.ANSWERS_MODULE, target) == 1
        assert other.probe_success(monitoring.HOLDS_MODULE, target) == 0   # the other one does not
        assert other.probe_success(monitoring.ANSWERS_MODULE, target) == 1  # but an IDR proxy answers there
        for box in (own, other):                                            # nobody answers: ProbeAddressSilent
            assert box.probe_success(monitoring.HOLDS_MODULE, silent) == 0
            assert box.probe_success(monitoring.ANSWERS_MODULE, silent) == 0
        # The HTTPS redirect is not followed and not needed: elsewhere the address answers 301.
        assert own.probe_success(monitoring.ANSWERS_MODULE, target.replace(ENVIRONMENT_PATH, "/about/")) == 0
    finally:
        own.stop()
        other.stop()
    proxy.flush_logs()
    assert ENVIRONMENT_PATH not in (proxy.tmp / "log" / "access.log").read_text()
