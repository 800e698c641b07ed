"""The proxy's TLS certificate from stack config, under mocks: the private key
travels only as a secret (a remote command's stdin), never as a HostFile, and
never lands in the offline render. The script itself runs in real nginx in
tests/integration/test_nginx_tls.py."""
from __future__ import annotations

import base64
import hashlib
import subprocess

import pulumi
import pytest
from pulumi.runtime import rpc

from components.offline import IdrMocks, Recording, RecordingMonitor, run_mocked, run_stack
from components.proxy import Proxy, ProxyArgs
from components.render import nginx as render
from components.render.__main__ import write_tree
from components.render.hostfiles import install_script
from components.settings import ConfigError
from tests.support.restarts import violations
from tests.support.settings import proxy_settings
from tests.support.tools import tool

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"     # Pulumi's wire marker of a secret value
SIG_KEY = "4dabf18193072939515e22adb298388d"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """(certificate PEM, private key PEM) made by openssl."""
    d = tmp_path_factory.mktemp("pair")
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=idr.example", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return (d / "cert.pem").read_text(), (d / "key.pem").read_text()


def key_fragments(key_pem: str) -> list[str]:
    """Pieces of the key that must appear nowhere: its base64 lines, and the
    base64 of the whole text as the scripts would encode it."""
    body = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    encoded = base64.b64encode(key_pem.encode()).decode()
    return body + [encoded[i:i + 60] for i in range(0, len(encoded) - 60, 60)]


class RawMonitor(RecordingMonitor):
    """Also keeps each resource's inputs as they travel, secrets still marked."""

    def __init__(self, mocks, recording):
        super().__init__(mocks, recording)
        self.raw: dict[str, dict] = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.raw[f"{request.type}::{request.name}"] = rpc.deserialize_properties(request.object)
        return response


def run_proxy(settings, instance_ids=None):
    mocks, recording = IdrMocks(), Recording("prod")
    monitor = RawMonitor(mocks, recording)
    built = {}

    def body():
        built["proxy"] = Proxy("prod-proxy", ProxyArgs(settings=settings, depends_on=[],
                                                       instance_ids=instance_ids or {}))
    run_mocked(body, "prod", mocks, monitor=monitor)
    return recording, monitor.raw, built["proxy"]


def tls_settings(pair, key=None, **raw):
    cert, private = pair
    return proxy_settings("prod", secrets={"tlsPrivateKey": private if key is None else key},
                         tlsCertificateChain=cert, **raw)


def test_without_a_chain_self_signed_and_no_tls_step():
    rec, _raw, proxy = run_proxy(proxy_settings("prod"))
    assert proxy.tls_self_signed is True and proxy.tls is None
    assert not [c for c in rec.of_type("command:remote:Command") if c.name.endswith("-tls")]


def test_with_a_chain_the_key_travels_only_as_a_secret_stdin(pair):
    cert, key = pair
    s = tls_settings(pair)
    rec, raw, proxy = run_proxy(s, {"prod-proxy": "instance-1"})
    assert proxy.tls_self_signed is False
    tls = rec.named("prod-proxy-tls", "command:remote:Command")
    assert tls.options.parent == rec.named("prod-proxy", "idr:proxy:Proxy").urn
    # On the wire to the engine, stdin and its digest are secrets (encrypted in state).
    wire = raw["command:remote:Command::prod-proxy-tls"]
    assert wire["stdin"][SIG_KEY] == SECRET_SIG
    assert wire["triggers"][SIG_KEY] == SECRET_SIG
    assert tls.inputs["stdin"] == render.tls_script(s, key)
    assert tls.inputs["triggers"] == [hashlib.sha256(tls.inputs["stdin"].encode()).hexdigest(), "instance-1"]
    assert (tls.inputs["create"], tls.inputs["update"]) == ("sudo bash -s", "cat > /dev/null")
    # No HostFiles property holds the key or the pair; nothing but the TLS step's stdin does.
    for res in rec.resources:
        text = repr(res.inputs)
        for fragment in key_fragments(key):
            assert fragment not in text or res.name == "prod-proxy-tls", res.name
    for files in rec.of_type("idr:host:HostFiles"):
        assert s.tls_certificate_key not in {f["path"] for f in files.inputs["files"]}
        assert s.tls_certificate not in {f["path"] for f in files.inputs["files"]}
    # nginx starts only once the pair is in place.
    nginx = rec.named("prod-proxy-nginx", "command:remote:Command")
    assert tls.urn in nginx.options.depends_on
    assert nginx.inputs["stdin"] == install_script("prod-proxy", render.nginx_files(s), render.setup_script(s))


def test_a_new_key_or_chain_reruns_only_the_tls_step(pair, tmp_path):
    s1 = tls_settings(pair)
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=idr.example", "-keyout", str(tmp_path / "k2"),
                    "-out", str(tmp_path / "c2")], check=True, capture_output=True)
    s2 = tls_settings(((tmp_path / "c2").read_text(), (tmp_path / "k2").read_text()))
    first, second = run_proxy(s1)[0], run_proxy(s2)[0]
    step = lambda rec, name: rec.named(name, "command:remote:Command").inputs
    assert step(first, "prod-proxy-tls")["triggers"] != step(second, "prod-proxy-tls")["triggers"]
    assert step(first, "prod-proxy-nginx") == step(second, "prod-proxy-nginx")


def test_nginx_config_is_the_same_with_or_without_a_chain(pair):
    """Only the files at idr:tlsCertificate/-Key change: nginx's config (run by
    gixy and nginx -t in tests/integration) does not."""
    plain, given = proxy_settings("prod"), tls_settings(pair)
    assert render.idr_conf(given) == render.idr_conf(plain)
    assert render.nginx_conf(given) == render.nginx_conf(plain)


def test_chain_without_key_is_refused(pair):
    with pytest.raises(ConfigError, match="tlsPrivateKey"):
        proxy_settings("prod", tlsCertificateChain=pair[0])


def test_offline_render_never_holds_the_key(pair, tmp_path):
    """The whole program offline with a real key given as the secret: neither
    the rendered tree nor resources.txt contains any of it."""
    cert, key = pair
    rec = run_stack("prod", {"tlsCertificateChain": cert, "tlsPrivateKey": key})
    tls = rec.named("prod-proxy-nginx-tls", "command:remote:Command")
    assert base64.b64encode(key.encode()).decode()[:60] in tls.inputs["stdin"].replace("\n", "")
    out = tmp_path / "out"
    write_tree(rec, out)
    assert (out / "resources.txt").exists()
    everything = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    for fragment in key_fragments(key):
        assert fragment not in everything
    assert "PRIVATE KEY-----" not in everything
    # The TLS step is listed (its triggers are digests), its script is not written out.
    resources = (out / "resources.txt").read_text()
    assert "\tprod-proxy-nginx-tls\t" in resources
    assert not list(out.rglob("*-tls.sh"))


def test_tls_script_checks_before_it_installs_and_rolls_back(pair, tmp_path):
    cert, key = pair
    s = tls_settings(pair)
    script = render.tls_script(s, key)
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    assert "expected=prod-proxy\n" in script                   # the host guard of every step
    assert base64.b64encode(cert.encode()).decode()[:76] in script
    order = [script.index(x) for x in ("cert_pub=", "key_pub=", 'place "$staging/chain.pem" "$cert" 0644',
                                       'place "$staging/key.pem" "$key" 0600', "if ! nginx -t; then",
                                       "systemctl reload nginx")]
    assert order == sorted(order)
    rollback = script[script.index("if ! nginx -t; then"):script.index("systemctl is-active")]
    assert "restore" in rollback and "exit 1" in rollback
    assert violations(script) == []                            # systemctl only
    with pytest.raises(ValueError):
        render.tls_script(proxy_settings("prod"), key)
    (tmp_path / "tls.sh").write_text(script)
    # The nginx step as it is with a chain given (no self-signed branch).
    (tmp_path / "nginx.sh").write_text(install_script("prod-proxy", render.nginx_files(s), render.setup_script(s)))
    done = subprocess.run([tool("shellcheck"), "-s", "bash", str(tmp_path / "tls.sh"), str(tmp_path / "nginx.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
