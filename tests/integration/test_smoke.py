"""operations.smoke against real nginx (the rendered proxy config) and
stand-ins answering as a working IDR: every check passes; each check
failing alone fails the run, naming that check and no other."""
from __future__ import annotations

import json

import pytest

from components.render import website
from operations import smoke
from tests.support.nginx import ProxyUnderTest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60000
THUMB_JPEG = b"\xff\xd8\xff\xe0thumbnail"


def idr_answers() -> dict:
    """What IDR's OMERO.web (and its image server) answer to the smoke checks."""
    return {
        r"/$": (200, "text/html; charset=utf-8",
                f"<title>IDR</title><p>{smoke.HOME_TEXT} of image datasets</p>".encode()),
        r"/mapr/api/organism/count/": (200, "application/json", json.dumps({"experimenter": {"childCount": 8}}).encode()),
        r"/webclient/render_image/": (200, "image/jpeg", JPEG),
        r"/webgateway/render_thumbnail/": (200, "image/jpeg", THUMB_JPEG),
        r"/api/v0/$": (200, "application/json", b'{"data": [{"version": "0"}]}'),
    }


def fill_website(proxy, text: str = smoke.ABOUT_TEXT) -> None:
    www = proxy.tmp / "srv-www"
    (www / "releases/r1").mkdir(parents=True, exist_ok=True)
    (www / "releases/r1/index.html").write_text(f"<p>{text} available</p>\n")
    (www / "html").symlink_to("releases/r1")


@pytest.fixture
def idr(tmp_path, cert_pair):
    proxy = ProxyUnderTest(tmp_path / "nginx", cert_pair)
    proxy.state.responses.update(idr_answers())
    fill_website(proxy)
    yield proxy.start()
    proxy.stop()


def run(proxy, port: str = "https", **kw) -> list[smoke.Failure]:
    scheme = "https" if port == "https" else "http"
    return smoke.run_checks(f"{scheme}://127.0.0.1:{proxy.nginx.port(port)}", "idr.example.org",
                            verify_tls=False, timeout=10, **kw)


@pytest.mark.parametrize("port", ["https", "http"])
def test_a_working_idr_passes_every_check(idr, port):
    assert run(idr, port) == []
    # They went through the proxy to OMERO.web, as the public would.
    seen = [s.path for s in idr.state.seen]
    assert "/" in seen and smoke.MAPR_COUNT_PATH in seen and "/api/v0/" in seen
    assert sum(p.startswith(f"/webclient/render_image/{smoke.IMAGE_ID}/10/0/?dummy=") for p in seen) == 1
    assert all(s.headers["Host"] == "idr.example.org" for s in idr.state.seen)
    assert len(idr.ws.requests) == 1
    # render_image busts the cache: a second run renders again; the thumbnail stays cached.
    assert run(idr, port, only=("render_image", "thumbnail_cache")) == []
    renders = [p for p in (s.path for s in idr.state.seen) if p.startswith("/webclient/render_image/")]
    assert len(renders) == 2 and len(set(renders)) == 2
    assert sum(s.path.startswith("/webgateway/render_thumbnail/") for s in idr.state.seen) == 1


BREAKS = {
    "home": lambda p: p.state.responses.update({r"/$": (200, "text/html", b"<p>Welcome to OMERO.web</p>")}),
    "about": lambda p: ((p.tmp / "srv-www/html").unlink(), (p.tmp / "srv-www/placeholder").mkdir(),
                        (p.tmp / "srv-www/placeholder/index.html").write_text(website.placeholder_html(p.settings)),
                        (p.tmp / "srv-www/html").symlink_to("placeholder")),
    "mapr": lambda p: p.state.responses.update(
        {r"/mapr/api/organism/count/": (200, "application/json", b'{"experimenter": {"childCount": 2}}')}),
    "render_image": lambda p: p.state.responses.update(
        {r"/webclient/render_image/": (200, "image/png", b"\x89PNG" + b"\x00" * 60000)}),
    "api_cors": lambda p: p.state.responses.update({r"/api/v0/$": (500, "text/html", b"<h1>Server Error</h1>")}),
    "websocket": lambda p: p.ws.stop(),
    # OMERO.web saying "do not cache" in the one header the proxy does not ignore.
    "thumbnail_cache": lambda p: p.state.responses.update(
        {r"/webgateway/render_thumbnail/": (200, "image/jpeg", THUMB_JPEG, {"X-Accel-Expires": "0"})}),
}


@pytest.mark.parametrize("check", smoke.CHECKS)
def test_each_check_failing_alone_fails_naming_it(idr, check, capsys):
    assert set(BREAKS) == set(smoke.CHECKS)
    BREAKS[check](idr)
    failures = run(idr)
    assert [f.check for f in failures] == [check], failures
    assert failures[0].detail
    # The command says the same and exits 1.
    code = smoke.main(["--url", f"https://127.0.0.1:{idr.nginx.port('https')}", "--host", "idr.example.org",
                       "--insecure", "--timeout", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL {check}: " in out and out.count("FAIL") == 1 and "1 of 7 checks failed" in out


def test_command_passes_and_a_stack_is_checked_through_its_floating_ip(idr, monkeypatch, capsys):
    code = smoke.main(["--url", f"https://127.0.0.1:{idr.nginx.port('https')}", "--host", "idr.example.org",
                       "--insecure"])
    assert code == 0 and "every check passed" in capsys.readouterr().out

    class FakePulumi:
        def __init__(self, say):
            pass

        def outputs(self, stack):
            return {"floatingIp": "203.0.113.20", "tlsSelfSigned": True} if stack == "newidr" else {"floatingIp": ""}

        def config(self, stack):
            return {"idr:serverName": "idr-next.example.org"}

    monkeypatch.setattr("operations.common.Pulumi", FakePulumi)
    assert smoke.stack_target("newidr", "https") == ("https://203.0.113.20", "idr-next.example.org", False)
    assert smoke.stack_target("newidr", "http") == ("http://203.0.113.20", "idr-next.example.org", True)
    assert smoke.main(["--stack", "other"]) == 2
    assert "holds no floating IP" in capsys.readouterr().err


def test_tls_is_verified_against_the_public_name(idr):
    """Connecting to an address, the certificate is checked for the Host
    name (the test's is for localhost): nothing passes unverified."""
    failures = smoke.run_checks(f"https://127.0.0.1:{idr.nginx.port('https')}", "idr.example.org", timeout=10)
    assert [f.check for f in failures] == list(smoke.CHECKS)
    assert all("SSL" in f.detail or "certificate" in f.detail for f in failures)


def test_the_swaps_gate_checks_the_new_stack_at_an_address_as_its_server_name(idr):
    """operations.swap.smoke_gate: what the swap runs before the public IP
    moves (its refusal: tests/test_swap_smoke_gate.py)."""
    from operations.swap import smoke_gate

    class StackOutputs:
        def outputs(self, stack):
            return {"floatingIp": "203.0.113.20", "tlsSelfSigned": True}

        def config(self, stack):
            return {"idr:serverName": "idr.example.org"}

    check = smoke_gate(StackOutputs(), "newidr", "https")
    address = f"127.0.0.1:{idr.nginx.port('https')}"
    assert check(address) == []
    BREAKS["render_image"](idr)
    failures = check(address)
    assert len(failures) == 1 and failures[0].startswith("render_image: ")
