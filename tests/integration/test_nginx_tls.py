"""A real certificate from stack config, put in place by the rendered TLS step
and served by real nginx on 443: checked before it is installed, rolled back
when nginx -t refuses it, swapped on a running nginx by a reload. Without a
chain, the setup step's self-signed placeholder.

The TLS step runs as rendered but for what a test machine needs: IDR_ROOT
(the tmp dir), the host guard, and nginx -t / systemctl pointed at the
test's own nginx."""
from __future__ import annotations

import hashlib
import re
import shlex
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import layout
from components.render import nginx as render

from tests.support.nginx import OPENSSL, ProxyUnderTest, tls_root
from tests.support.settings import proxy_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

THUMB = "/webgateway/render_thumbnail/101/96/"
# What settings accept as a chain (PEM blocks) but no TLS library reads.
CORRUPT_BLOCK = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def openssl(*args: str | Path, stdin: str | None = None) -> str:
    return subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, text=True,
                          input=stdin).stdout


@dataclass
class Issued:
    chain: str         # leaf then CA, PEM
    key: str           # the leaf's private key, PEM
    fingerprint: str   # sha256 of the leaf's DER
    cn: str


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ca")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=IDR test CA", "-keyout", d / "ca.key", "-out", d / "ca.crt")
    return d


def issue(ca: Path, cn: str) -> Issued:
    """A leaf certificate for `cn` signed by the test CA, with its chain."""
    d = ca / cn
    d.mkdir(exist_ok=True)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={cn}", "-keyout", d / "leaf.key", "-out", d / "leaf.csr")
    (d / "ext").write_text(f"subjectAltName=DNS:{cn}\n")
    openssl("x509", "-req", "-in", d / "leaf.csr", "-CA", ca / "ca.crt", "-CAkey", ca / "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", d / "ext", "-out", d / "leaf.crt")
    der = subprocess.run([OPENSSL, "x509", "-in", str(d / "leaf.crt"), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return Issued((d / "leaf.crt").read_text() + (ca / "ca.crt").read_text(), (d / "leaf.key").read_text(),
                  hashlib.sha256(der).hexdigest(), cn)


def tls_settings(issued: Issued, chain: str | None = None, key: str | None = None, **raw):
    return proxy_settings(secrets={"tlsPrivateKey": key or issued.key},
                         tlsCertificateChain=chain or issued.chain, **raw)


def run_tls_step(proxy: ProxyUnderTest, settings) -> subprocess.CompletedProcess:
    """The rendered TLS step, run against the test's nginx (running or not)."""
    script = render.tls_script(settings, settings.tls_private_key)
    nginx, pid = proxy.nginx, proxy.nginx.proc.pid if proxy.nginx.proc else None
    edits = {
        f"expected={shlex.quote(layout.host(settings, 'proxy').name)}\n": "expected=$(hostname -s)\n",
        "if ! nginx -t; then": f"if ! {shlex.join(nginx.cmd('-t'))}; then",
        "if systemctl is-active --quiet nginx; then": f"if {'kill -0 ' + str(pid) if pid else 'false'}; then",
        "systemctl reload nginx": f"kill -HUP {pid}",
    }
    for old, new in edits.items():
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IDR_ROOT": str(tls_root(proxy.tmp))}
    return subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, env=env, timeout=60)


def served(port: int, ca: Path | None = None, name: str | None = None) -> str:
    """sha256 of the certificate nginx presents on 127.0.0.1:`port`; with
    `ca`, the chain must verify for `name`."""
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt")) if ca else ssl.create_default_context()
    if not ca:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name or "localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def wait_served(port: int, fingerprint: str, seconds: float = 5) -> str:
    """What is served once a reload has settled (old workers finish)."""
    deadline = time.monotonic() + seconds
    while (now := served(port)) != fingerprint and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def files_of(proxy: ProxyUnderTest) -> tuple[Path, Path]:
    root = tls_root(proxy.tmp)
    return (root / proxy.settings.tls_certificate.lstrip("/"), root / proxy.settings.tls_certificate_key.lstrip("/"))


@pytest.fixture
def tls_proxy(tmp_path, ca):
    """nginx serving the certificate of idr-test.example given in config."""
    first = issue(ca, "idr-test.example")
    proxy = ProxyUnderTest(tmp_path / "nginx", None, secrets={"tlsPrivateKey": first.key},
                           tlsCertificateChain=first.chain)
    done = run_tls_step(proxy, proxy.settings)      # a new proxy: nginx not running yet
    assert done.returncode == 0, done.stderr
    proxy.start()
    yield proxy, first
    proxy.stop()


def test_certificate_from_config_served_on_443(tls_proxy, ca):
    proxy, first = tls_proxy
    assert not render.tls_self_signed(proxy.settings)
    cert, key = files_of(proxy)
    assert cert.read_text() == first.chain and key.read_text() == first.key
    assert (cert.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o644, 0o600)
    port = proxy.nginx.port("https")
    # The leaf we issued, and a chain that verifies against the CA for its name.
    assert served(port, ca, "idr-test.example") == first.fingerprint
    shown = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                            "idr-test.example", "-showcerts"], input="", capture_output=True, text=True,
                           timeout=30).stdout
    assert shown.count("-----BEGIN CERTIFICATE-----") == 2           # leaf and CA: the whole chain
    assert re.search(r"subject=\s*CN\s*=\s*idr-test\.example", shown)
    status, headers, body = proxy.get("https", THUMB)
    assert status == 200 and "v1" in body


def test_new_certificate_swapped_on_a_running_nginx(tls_proxy, ca):
    proxy, first = tls_proxy
    second = issue(ca, "idr-next.example")
    pid = proxy.nginx.proc.pid
    done = run_tls_step(proxy, tls_settings(second))
    assert done.returncode == 0, done.stderr
    assert f"installed {tls_root(proxy.tmp)}" in done.stdout and "idr-next.example" in done.stdout
    port = proxy.nginx.port("https")
    assert wait_served(port, second.fingerprint) == second.fingerprint
    assert served(port, ca, "idr-next.example") == second.fingerprint
    assert proxy.nginx.proc.pid == pid and proxy.nginx.proc.poll() is None     # reloaded, not restarted


def test_key_of_another_certificate_refused_before_anything_changes(tls_proxy, ca):
    proxy, first = tls_proxy
    second = issue(ca, "idr-other.example")
    cert, key = files_of(proxy)
    before = (cert.read_bytes(), key.read_bytes())
    done = run_tls_step(proxy, tls_settings(second, key=first.key))   # settings only check the format
    assert done.returncode == 1 and "refusing" in done.stderr and "nothing changed" in done.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before
    time.sleep(0.5)
    assert served(proxy.nginx.port("https")) == first.fingerprint
    # An encrypted key is refused the same way (and never prompts).
    encrypted = openssl("pkey", "-aes256", "-passout", "pass:secret", stdin=second.key)
    done = run_tls_step(proxy, tls_settings(second, key=encrypted))
    assert done.returncode == 1 and "not an unencrypted PEM private key" in done.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before


def test_nginx_t_failure_puts_the_old_pair_back_and_never_reloads(tls_proxy, ca):
    proxy, first = tls_proxy
    second = issue(ca, "idr-broken.example")
    cert, key = files_of(proxy)
    before = (cert.read_bytes(), key.read_bytes(), cert.stat().st_mode, key.stat().st_mode)
    # The key matches the first certificate, so only nginx itself can find the fault.
    settings = tls_settings(second, chain=second.chain + CORRUPT_BLOCK)
    done = run_tls_step(proxy, settings)
    assert done.returncode == 1, done.stdout
    assert "nginx -t refused" in done.stderr and "PEM_read_bio_X509" in done.stderr
    assert (cert.read_bytes(), key.read_bytes(), cert.stat().st_mode, key.stat().st_mode) == before
    assert not list(cert.parent.glob("*.idr-new")) and not list(key.parent.glob("*.idr-new"))
    port = proxy.nginx.port("https")
    time.sleep(0.5)
    assert served(port) == first.fingerprint
    # What is on disk is good: a reload (or a reboot) keeps serving it.
    proxy.nginx.reload()
    assert proxy.nginx.proc.poll() is None
    assert served(port, ca, "idr-test.example") == first.fingerprint


def test_first_install_failure_leaves_no_files(tmp_path, ca):
    """A new proxy (no pair yet) whose chain nginx refuses: nothing stays behind."""
    bad = issue(ca, "idr-new.example")
    proxy = ProxyUnderTest(tmp_path / "nginx", None, secrets={"tlsPrivateKey": bad.key},
                           tlsCertificateChain=bad.chain + CORRUPT_BLOCK)
    try:
        done = run_tls_step(proxy, proxy.settings)
        assert done.returncode == 1 and "nginx -t refused" in done.stderr
        cert, key = files_of(proxy)
        assert not cert.exists() and not key.exists()
    finally:
        proxy.stop()


def test_self_signed_placeholder_without_a_chain(tmp_path):
    """No chain in config: the setup step's own block makes a self-signed
    certificate for the server name, which nginx serves, and never touches
    an existing one."""
    settings = proxy_settings()
    assert render.tls_self_signed(settings) and settings.tls_private_key is None
    script = render.setup_script(settings)
    block = script[script.index("cert="):script.index("\nfi\n") + 4]
    assert "openssl req -x509" in block
    root = tls_root(tmp_path / "nginx")
    block = block.replace(f"cert={settings.tls_certificate}", f"cert={root}{settings.tls_certificate}")
    block = block.replace(f"key={settings.tls_certificate_key}", f"key={root}{settings.tls_certificate_key}")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=True, capture_output=True, env=env)
    cert = root / settings.tls_certificate.lstrip("/")
    key = root / settings.tls_certificate_key.lstrip("/")
    made = (cert.read_bytes(), key.read_bytes())
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=True, capture_output=True, env=env)
    assert (cert.read_bytes(), key.read_bytes()) == made                      # never touched again
    proxy = ProxyUnderTest(tmp_path / "nginx", None)
    try:
        proxy.start()
        subject = openssl("x509", "-noout", "-subject", "-issuer", "-in", cert)
        assert subject.count(f"CN = {settings.server_name}") == 2           # self-signed
        der = subprocess.run([OPENSSL, "x509", "-in", str(cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        assert served(proxy.nginx.port("https")) == hashlib.sha256(der).hexdigest()
    finally:
        proxy.stop()
