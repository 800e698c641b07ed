"""Fixtures shared by the integration tests: the proxy's nginx on loopback
(tests/support/nginx.py) and the deployment step's sshd hosts
(tests/support/deployment_hosts.py)."""
from __future__ import annotations

import pytest

from tests.support.deployment_hosts import loopback_hosts
from tests.support.nginx import ProxyUnderTest, make_cert


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def proxy_factory(tmp_path, cert_pair):
    """start(**raw): a started ProxyUnderTest of settings `raw`; all stopped after the test."""
    started = []

    def start(**raw):
        proxy = ProxyUnderTest(tmp_path / f"nginx{len(started)}", cert_pair, **raw)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def hosts():
    """(directory, port) of sshd on the bastion and prod's host addresses."""
    with loopback_hosts() as running:
        yield running
