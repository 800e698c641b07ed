"""Bad config fails before anything is declared, with one message naming the
key, the value and what is allowed."""
from __future__ import annotations

import json
import subprocess
import sys

import pulumi
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from components import layout
from components.offline import PROJECT_DIR, effective_config, run_stack
from components.settings import ConfigError
from tests.support.settings import settings_for

VOL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SNAP = "aaaabbbb-cccc-dddd-eeee-ffff00001111"
# Real public keys (ssh-keygen), with and without their comment.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKUKz3MaP5c9vbrtDe+443tLoJwM33BYhOrINrUY02Aj"
ECDSA256 = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBO6cQas7y4zI0aI3w3wWUV93GT+ontj7jng8u"
            "6dsErNMBB9IbDdw6O/pHWIyV9nq5eU2goMH2m8eTXaq+aRCH6I=")
ED25519_BODY = ED25519.split()[1]

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
    # Login user: a POSIX name, nothing a shell or ssh would read twice.
    ({"sshUser": ""}, "idr:sshUser", "''", "a POSIX login name such as rocky"),
    ({"sshUser": "rocky linux"}, "idr:sshUser", "'rocky linux'", "a POSIX login name"),
    ({"sshUser": "rocky;id"}, "idr:sshUser", "'rocky;id'", "a POSIX login name"),
    ({"sshUser": "$(id)"}, "idr:sshUser", "'$(id)'", "a POSIX login name"),
    ({"sshUser": "rocky\n"}, "idr:sshUser", "'rocky\\n'", "a POSIX login name"),
    ({"sshUser": "Rocky"}, "idr:sshUser", "'Rocky'", "lower-case letters"),
    # Public key: '<type> <base64> [comment]' with a body that decodes to that type.
    ({"sshPublicKey": "   "}, "idr:sshPublicKey", "'   '", "required"),
    ({"sshPublicKey": "ssh-ed25519 "}, "idr:sshPublicKey", "'ssh-ed25519 '", "'<type> <base64> [comment]'"),
    ({"sshPublicKey": "ssh-ed25519 not-base64! me"}, "idr:sshPublicKey", "not-base64!", "base64 that decodes"),
    ({"sshPublicKey": "ssh-ed25519 " + ED25519_BODY[:-1]}, "idr:sshPublicKey", ED25519_BODY[:-1], "base64 that decodes"),
    ({"sshPublicKey": "ssh-rsa " + ED25519_BODY}, "idr:sshPublicKey", "ssh-rsa AAAA", "decodes to a key of that type"),
    ({"sshPublicKey": "ssh-dss " + ED25519_BODY}, "idr:sshPublicKey", "ssh-dss", "type one of ssh-ed25519, ssh-rsa"),
    ({"sshPublicKey": ED25519_BODY}, "idr:sshPublicKey", ED25519_BODY, "'<type> <base64> [comment]'"),
    ({"sshPublicKey": ED25519 + "\n" + ECDSA256}, "idr:sshPublicKey", "ssh-ed25519", "one OpenSSH public key line"),
    # Bastion host key, when set: the same, or a line as ssh-keyscan prints it.
    ({"sshBastionHostKey": "ssh-ed25519"}, "idr:sshBastionHostKey", "'ssh-ed25519'", "ssh-keyscan line"),
    ({"sshBastionHostKey": "203.0.113.10 ssh-ed25519"}, "idr:sshBastionHostKey", "203.0.113.10", "<type> <base64>"),
    ({"sshBastionHostKey": "ssh-ed25519 AAAA"}, "idr:sshBastionHostKey", "'ssh-ed25519 AAAA'", "base64 that decodes"),
    ({"sshBastionHostKey": "@cert-authority * " + ED25519}, "idr:sshBastionHostKey", "@cert-authority", "ssh-keyscan"),
    ({"sshBastionHostKey": "SHA256:q2Yt6jE0yGxPbnoqFb2Ypv1J9EUMg2Yh1n3U1ZrC8Dc"}, "idr:sshBastionHostKey", "SHA256:",
     "OpenSSH public key line"),
    # Names OpenStack looks up: an empty one matches any.
    ({"externalNetwork": ""}, "idr:externalNetwork", "''", "the name of the external network: not empty"),
    ({"externalNetwork": " public"}, "idr:externalNetwork", "' public'", "without leading or trailing spaces"),
    ({"image": ""}, "idr:image", "''", "a Glance image name: not empty"),
    ({"image": "Rocky-9\t"}, "idr:image", "'Rocky-9\\t'", "a Glance image name"),
    ({"imageOverrides": '["database="]'}, "idr:imageOverrides", "'database='", "entries 'role=image'"),
    ({"imageOverrides": '["database=   "]'}, "idr:imageOverrides", "'database=   '", "entries 'role=image'"),
    ({"proxyFlavor": " m1.large"}, "idr:proxyFlavor", "' m1.large'", "a flavor name"),
    ({"existingNetwork": " ", "existingSubnet": "idr-subnet"}, "idr:existingNetwork", "' '", "a network name"),
    ({"availabilityZone": "nova zone"}, "idr:availabilityZone", "'nova zone'", "letters, digits and . _ : - only"),
    ({"availabilityZone": 'nova"'}, "idr:availabilityZone", "'nova\"'", "letters, digits and . _ : - only"),
    ({"volumeType": "ceph'ssd"}, "idr:volumeType", "ceph'ssd", "letters, digits and . _ : - only"),
    ({"volumeType": " "}, "idr:volumeType", "' '", "or empty for the cloud's default"),
    # serverName: a DNS host name.
    ({"serverName": ".."}, "idr:serverName", "'..'", "a DNS host name"),
    ({"serverName": "-."}, "idr:serverName", "'-.'", "a DNS host name"),
    ({"serverName": "idr..openmicroscopy.org"}, "idr:serverName", "'idr..openmicroscopy.org'", "no label empty"),
    ({"serverName": "-idr.openmicroscopy.org"}, "idr:serverName", "'-idr.openmicroscopy.org'", "starting or ending"),
    ({"serverName": "idr.openmicroscopy.org."}, "idr:serverName", "'idr.openmicroscopy.org.'", "a DNS host name"),
    ({"serverName": "a" * 64 + ".org"}, "idr:serverName", "aaaa", "a DNS host name"),
    ({"serverName": ""}, "idr:serverName", "''", "a DNS host name"),
    # healthCheckPath: what urllib can put in a request line.
    ({"healthCheckPath": "webclient/"}, "idr:healthCheckPath", "'webclient/'", "a URL path starting with /"),
    ({"healthCheckPath": "/web client/"}, "idr:healthCheckPath", "'/web client/'", "without spaces or control"),
    ({"healthCheckPath": "/webclient/\r\nX: y"}, "idr:healthCheckPath", "/webclient/", "control characters"),
    ({"healthCheckPath": "/webclient/\n"}, "idr:healthCheckPath", "'/webclient/\\n'", "control characters"),
    ({"healthCheckPath": "/d\u00e9mo"}, "idr:healthCheckPath", "/d", "printable ASCII"),
    # subnetCidr: private (RFC 1918) only.
    ({"subnetCidr": "169.254.0.0/16"}, "idr:subnetCidr", "'169.254.0.0/16'", "this one is link-local"),
    ({"subnetCidr": "224.0.0.0/24"}, "idr:subnetCidr", "'224.0.0.0/24'", "this one is multicast"),
    ({"subnetCidr": "127.0.0.0/24"}, "idr:subnetCidr", "'127.0.0.0/24'", "this one is loopback"),
    ({"subnetCidr": "203.0.113.0/24"}, "idr:subnetCidr", "'203.0.113.0/24'", "inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
    ({"subnetCidr": "100.64.0.0/24"}, "idr:subnetCidr", "'100.64.0.0/24'", "RFC 1918"),
    ({"subnetCidr": "172.32.0.0/24"}, "idr:subnetCidr", "'172.32.0.0/24'", "RFC 1918"),
    # Others that had a loose check.
    ({"sshBastion": ".."}, "idr:sshBastion", "'..'", "an IP address or DNS host name"),
    ({"sshBastion": "-oProxyCommand"}, "idr:sshBastion", "'-oProxyCommand'", "an IP address or DNS host name"),
    ({"databaseName": "idr\n"}, "idr:databaseName", "'idr\\n'", "a PostgreSQL identifier"),
    ({"environment": "prod\n"}, "idr:environment", "'prod\\n'", "lower-case letters"),
    ({"omeroBin": "/opt/omero/server/OMERO.server/bin/"}, "idr:omeroBin", "bin/'", "an absolute path of a file"),
    ({"omeroBin": "/opt/omero\r/omero"}, "idr:omeroBin", "omero\\r", "control or shell characters"),
    ({"nginxCacheInactive": "180d\n"}, "idr:nginxCacheInactive", "'180d\\n'", "an nginx time"),
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


def _settings(overrides):
    """Settings of prod's config with `overrides` (strings; None removes a key)."""
    return settings_for("prod", overrides)


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
        assert {h.image for h in layout.hosts(s) if h.role in roles} == {"Rocky-9.5"}
    else:
        with pytest.raises(ConfigError, match="a known role"):
            _settings(overrides)


# --------------------------------------------------------------------------
# What the new rules still accept, and properties of them.

def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _key_line(kind: str, material: bytes, comment: str = "") -> str:
    import base64
    body = base64.b64encode(_ssh_string(kind.encode()) + material).decode()
    return f"{kind} {body}" + (f" {comment}" if comment else "")


KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


@pytest.mark.parametrize("stack", ["prod", "newidr"])
def test_stack_files_and_defaults_still_pass(stack):
    config, _ = effective_config(stack, {})
    s = settings_for(stack)
    assert s.ssh_user == "rocky" and s.server_name == "idr.openmicroscopy.org" and s.subnet_cidr == "192.168.1.0/24"
    assert s.ssh_public_key == config["idr:sshPublicKey"].strip()  # unchanged: it is in every server's user data


@pytest.mark.parametrize("key", [ED25519, ED25519 + " idr-deploy", ECDSA256 + " me@host with spaces",
                                 *(_key_line(kind, b"\x00\x00\x00\x20" + bytes(32)) for kind in KEY_TYPES)])
def test_every_listed_key_type_is_accepted(key):
    assert _settings({"sshPublicKey": key}).ssh_public_key == key


@pytest.mark.parametrize("given", [
    ED25519, ED25519 + " root@idr-proxy", "203.0.113.10 " + ED25519, "[203.0.113.10]:2222 " + ED25519,
    "idr-proxy,203.0.113.10 " + ED25519, "|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= " + ED25519,
    "  203.0.113.10\t" + ED25519 + "  ",
])
def test_bastion_host_key_is_normalised_to_type_and_base64_for_pulumi_command(given):
    """pulumi-command hands host_key to Go's ssh.ParseAuthorizedKey and pins
    that key's type; settings gives it '<type> <base64>' whatever was pasted."""
    from components.connection import connection_for
    s = _settings({"sshBastionHostKey": given})
    assert s.ssh_bastion_host_key == ED25519
    assert connection_for(s, layout.host(s, "proxy")).host_key == ED25519
    assert connection_for(s, layout.host(s, "database")).proxy.host_key == ED25519


def test_no_bastion_host_key_means_none_pinned():
    from components.connection import connection_for
    s = _settings({})
    assert s.ssh_bastion_host_key == "" and connection_for(s, layout.host(s, "proxy")).host_key is None


@pytest.mark.parametrize("overrides", [
    {"sshUser": "root"}, {"sshUser": "_idr-deploy2"}, {"serverName": "localhost"},
    {"serverName": "idr-next.openmicroscopy.org"}, {"serverName": "IDR.example.ORG"},
    {"availabilityZone": "nova"}, {"availabilityZone": "az-1.zone_b:host01"}, {"volumeType": "ceph-ssd"},
    {"volumeType": ""}, {"healthCheckPath": "/"}, {"healthCheckPath": "/webclient/?experimenter=-1&x=%20y"},
    {"subnetCidr": "10.20.0.0/16"}, {"subnetCidr": "172.16.5.0/24"}, {"subnetCidr": "172.31.255.0/24"},
    {"subnetCidr": "192.168.0.0/16"}, {"image": "Rocky Linux 9.4"}, {"imageOverrides": '["database= Rocky-9.4"]'},
    {"sshBastion": "bastion.example.org"}, {"sshBastion": "2001:db8::10"},
])
def test_values_the_new_rules_still_accept(overrides):
    _settings(overrides)


@hsettings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(max_size=40).map(lambda t: "/" + t),
                 st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7f), max_size=40).map(lambda t: "/" + t)))
def test_health_check_path_is_accepted_exactly_when_http_client_can_send_it(path):
    import http.client
    try:
        connection = http.client.HTTPConnection("203.0.113.10")
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)  # builds the line, no I/O
        sendable = path.startswith("/")
    except (http.client.InvalidURL, UnicodeEncodeError, ValueError):
        sendable = False
    if sendable:
        assert _settings({"healthCheckPath": path}).health_check_path == path
    else:
        with pytest.raises(ConfigError, match="idr:healthCheckPath"):
            _settings({"healthCheckPath": path})


@hsettings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcxyz019_-.$; \t\n'\"A/@"), max_size=36))
def test_any_accepted_ssh_user_is_a_plain_posix_name(user):
    import shlex
    try:
        accepted = _settings({"sshUser": user}).ssh_user
    except ConfigError as error:
        assert str(error).startswith("config idr:sshUser = ") and "a POSIX login name" in str(error)
        return
    assert accepted == user and shlex.quote(user) == user and 1 <= len(user) <= 32
    assert user[0].isalpha() or user[0] == "_"
    assert not set(user) & set("$; \t\n'\"A/@.")


@hsettings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 25))
def test_subnet_is_accepted_only_inside_rfc1918(address, prefix):
    import ipaddress
    network = ipaddress.IPv4Network((address, prefix), strict=False)
    private = any(network.subnet_of(ipaddress.IPv4Network(n)) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
    if private:
        s = _settings({"subnetCidr": str(network)})
        assert s.subnet_cidr == str(network)
        assert not (network.is_link_local or network.is_multicast or network.is_loopback or network.is_global)
    else:
        with pytest.raises(ConfigError, match=r"idr:subnetCidr = .*\(RFC 1918\)"):
            _settings({"subnetCidr": str(network)})


@hsettings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab9-."), min_size=1, max_size=20))
def test_any_accepted_server_name_is_a_dns_host_name(name):
    try:
        _settings({"serverName": name})
    except ConfigError as error:
        assert str(error).startswith(f"config idr:serverName = {name!r} ") and "a DNS host name" in str(error)
        return
    labels = name.split(".")
    assert all(labels) and not any(label.startswith("-") or label.endswith("-") for label in labels)
    name.encode("idna")  # Python's own DNS name check (empty or over-long labels raise)


@hsettings(max_examples=100, deadline=None)
@given(st.sampled_from(KEY_TYPES), st.sampled_from(KEY_TYPES), st.binary(min_size=1, max_size=80),
       st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=12))
def test_a_key_is_accepted_only_when_its_body_is_of_the_type_it_says(said, actual, material, comment):
    line = f"{said} {_key_line(actual, material).split()[1]}" + (f" {comment}" if comment else "")
    if said == actual:
        assert _settings({"sshPublicKey": line}).ssh_public_key == line
        assert _settings({"sshBastionHostKey": "idr-proxy " + line}).ssh_bastion_host_key == " ".join(line.split()[:2])
    else:
        with pytest.raises(ConfigError, match="idr:sshPublicKey = .* decodes to a key of that type"):
            _settings({"sshPublicKey": line})


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=16))
def test_availability_zone_and_volume_type_need_no_quoting(text):
    import shlex
    for key in ("availabilityZone", "volumeType"):
        try:
            _settings({key: text})
        except ConfigError as error:
            assert str(error).startswith(f"config idr:{key} = ") and ". _ : - only" in str(error)
            continue
        assert text == "" or shlex.quote(text) == text
        assert not any(c.isspace() or c in "'\"" for c in text)
