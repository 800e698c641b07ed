"""Bad config fails before anything is declared, with one message naming the
key, the value and what is allowed."""
from __future__ import annotations

import json
import subprocess
import sys

import pulumi
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from components.offline import PROJECT_DIR, effective_config, run_stack
from components.settings import ConfigError, build_settings

VOL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SNAP = "aaaabbbb-cccc-dddd-eeee-ffff00001111"

BAD = [
    # (overrides, key, value text in message, words of what is allowed)
    ({"omeroreadonlyCount": "0"}, "idr:omeroreadonlyCount", "0", "from 1 to 120"),
    ({"omeroreadonlyCount": "four"}, "idr:omeroreadonlyCount", "'four'", "a whole number"),
    ({"omeroreadonlyCount": "200"}, "idr:omeroreadonlyCount", "200", "from 1 to 120"),
    ({"databaseVolumeSize": "500", "databaseVolumeFromVolume": VOL, "databaseVolumeSourceSize": "800"},
     "idr:databaseVolumeSize", "500", "at least the size of its source (800 GB)"),
    ({"omeroreadwriteVolumeFromVolume": VOL, "omeroreadwriteVolumeFromSnapshot": SNAP},
     "idr:omeroreadwriteVolumeFromSnapshot", SNAP, "one source only"),
    ({"imageOverrides": '["webserver=Rocky-9"]'}, "idr:imageOverrides", "'webserver=Rocky-9'", "a known role"),
    ({"bfcacheSlots": '["omeroreadonly=2", "database=4"]'}, "idr:bfcacheSlots", "'database=4'", "a known role"),
    ({"floatingIp": "203.0.113.300"}, "idr:floatingIp", "'203.0.113.300'", "an IPv4 address"),
    ({"sshAllowedCidrs": '["10.0.0.0/33"]'}, "idr:sshAllowedCidrs", "'10.0.0.0/33'", "CIDR"),
    ({"subnetCidr": "192.168.1.7/24"}, "idr:subnetCidr", "'192.168.1.7/24'", "no host bits set"),
    ({"nginxPublicReadTimeout": "0"}, "idr:nginxPublicReadTimeout", "0", "from 1 to 3600"),
    ({"nginxLongReadTimeout": "100000"}, "idr:nginxLongReadTimeout", "100000", "from 1 to 86400"),
    ({"sshPrivateKey": None}, "idr:sshPrivateKey", "None", "pulumi config set --secret idr:sshPrivateKey"),
    ({"sshPublicKey": ""}, "idr:sshPublicKey", "''", "an OpenSSH public key"),
    ({"rsyncEnabled": "maybe"}, "idr:rsyncEnabled", "'maybe'", "true or false"),
    ({"nginxCacheZones": '["thumbnails=90g", "default=1g"]'}, "idr:nginxCacheZones", "thumbnails=90g",
     "at most 90% of proxyVolumeSize"),
    ({"subnetCidr": "192.168.1.0/26"}, "idr:subnetCidr", "'192.168.1.0/26'", "a /25 or larger"),
    ({"subnetCidr": "192.168.1.0/25", "omeroreadonlyCount": "30"}, "idr:omeroreadonlyCount", "30",
     "at most 26 in subnet 192.168.1.0/25"),
    ({"existingNetwork": "idr-net"}, "idr:existingSubnet", "'idr-net'", "set together"),
    ({"floatingIp": "", "sshBastion": ""}, "idr:sshBastion", "''", "required when floatingIp is empty"),
    ({"cloneFromStack": "prod"}, "idr:cloneFromStack", "'prod'", "another stack than this one"),
    ({"environment": "Prod_1"}, "idr:environment", "'Prod_1'", "lower-case letters"),
    ({"dnsNameservers": "8.8.8.8"}, "idr:dnsNameservers", "'8.8.8.8'", "a list of strings"),
    ({"omeroBin": "omero; rm -rf /"}, "idr:omeroBin", "'omero; rm -rf /'", "an absolute path"),
    ({"statementTimeoutMs": "10"}, "idr:statementTimeoutMs", "10", "from 1000 to 3600000"),
]


@pytest.mark.parametrize("overrides,key,value,allowed", BAD, ids=[b[1] + "=" + b[2][:20] for b in BAD])
def test_bad_config_names_key_value_and_what_is_allowed(overrides, key, value, allowed):
    with pytest.raises(ConfigError) as error:
        run_stack("prod", overrides)
    message = str(error.value)
    assert message.startswith(f"config {key} = ")
    assert value in message and allowed in message
    assert isinstance(error.value, pulumi.RunError)  # Pulumi prints it without a traceback


def test_bad_config_declares_no_resource():
    from components.offline import IdrMocks, run_config
    config, secrets = effective_config("prod", {"omeroreadonlyCount": "0"})
    mocks = IdrMocks()
    with pytest.raises(ConfigError):
        run_config("prod", config, secrets, mocks)
    assert mocks.calls == []


def test_render_cli_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "components.render", "prod", str(tmp_path / "out"),
                             "--config", "floatingIp=1.2.3"], cwd=PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config idr:floatingIp = '1.2.3' is not allowed: an IPv4 address such as 203.0.113.10, or empty"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _raw(config):
    return lambda name: config.get(f"idr:{name}")


def _settings(overrides):
    config, _ = effective_config("prod", overrides)
    return build_settings("prod", _raw(config), lambda name: "secret")


@hsettings(max_examples=150, deadline=None)
@given(st.integers().filter(lambda n: not 1 <= n <= 120))
def test_any_out_of_range_readonly_count_is_refused(n):
    with pytest.raises(ConfigError, match=rf"idr:omeroreadonlyCount = {n} "):
        _settings({"omeroreadonlyCount": str(n)})


@hsettings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda t: t.strip().lstrip("+-").isdigit() is False))
def test_any_non_number_count_is_refused(text):
    with pytest.raises(ConfigError, match="a whole number"):
        _settings({"omeroreadonlyCount": text})


@hsettings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_floating_ip_is_an_ipv4_address_or_refused(text):
    import ipaddress
    try:
        ipaddress.IPv4Address(text.strip())
        valid = True
    except ValueError:
        valid = text.strip() == ""
    if valid:
        assert _settings({"floatingIp": text, "sshBastion": "bastion.example.org"}).floating_ip == text.strip()
    else:
        with pytest.raises(ConfigError, match="idr:floatingIp"):
            _settings({"floatingIp": text})


@hsettings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["proxy", "omeroreadonly", "omeroreadwrite", "database", "dockermanager",
                                 "webclient", "db", ""]), min_size=1, max_size=3, unique=True))
def test_image_overrides_accept_only_known_roles(roles):
    overrides = {"imageOverrides": json.dumps([f"{r}=Rocky-9.5" for r in roles])}
    known = {"proxy", "omeroreadonly", "omeroreadwrite", "database", "dockermanager"}
    if set(roles) <= known:
        s = _settings(overrides)
        assert {h.image for h in s.hosts if h.role in roles} == {"Rocky-9.5"}
    else:
        with pytest.raises(ConfigError, match="a known role"):
            _settings(overrides)
