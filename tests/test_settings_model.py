"""The settings model: KEYS are its fields, pydantic's own wording never
reaches an operator, and the first failing key in declaration order is named."""
from __future__ import annotations

import dataclasses

import pytest
from annotated_types import GroupedMetadata
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from components import layout
from components.settings import FIELDS, KEYS, ConfigError, Settings
from components.validators import allowed_of
from tests.support.settings import settings_for


def settings(secret=lambda name: "secret", **overrides):
    return settings_for("prod", overrides, secret=secret)


def test_keys_are_the_models_fields_in_declaration_order():
    declared = [to_camel(f.name) for f in dataclasses.fields(Settings) if isinstance(f.default, FieldInfo)]
    assert list(KEYS) == list(FIELDS) == declared and len(KEYS) == 81
    assert all(key.description and key.kind in ("string", "integer", "boolean", "array") for key in KEYS.values())
    assert [k for k, key in KEYS.items() if key.secret] == ["sshPrivateKey", "tlsPrivateKey", "deploymentSecretVars"]


def _flat(metadata):
    """A field's metadata with grouped markers (validators.Whole) expanded."""
    for m in metadata:
        if isinstance(m, GroupedMetadata):
            yield from _flat(m)
        else:
            yield m


def test_every_pydantic_constraint_carries_what_is_allowed():
    constrained = [name for name, field in FIELDS.items() if any(
        type(m).__name__ in ("Ge", "Le") or getattr(m, "pattern", None) for m in _flat(field.metadata))]
    assert "omeroreadonlyCount" in constrained and "sshUser" in constrained
    for name in constrained:
        assert allowed_of(FIELDS[name].metadata), name


@pytest.mark.parametrize("key,value,allowed", [
    ("omeroreadonlyCount", "0", "a whole number from 1 to 120"),
    ("proxyVolumeSize", "70000", "a whole number from 1 to 65536 (GB)"),
    ("sshUser", "Rocky", "a POSIX login name"),
    ("nginxCacheValid", "1 day", "an nginx time"),
    ("databaseVolumeFromVolume", "not-an-id!", "an OpenStack ID"),
    ("deploymentRepository", "-oProxyCommand=x", "a git URL"),
])
def test_constraint_errors_are_one_line_in_our_words(key, value, allowed):
    with pytest.raises(ConfigError) as error:
        settings(**{key: value})
    message = str(error.value)
    assert message.startswith(f"config idr:{key} = ") and message.endswith(error.value.allowed) and "\n" not in message
    assert allowed in message and not any(w in message for w in ("should", "Input", "pydantic", "type="))


def test_the_first_bad_key_in_declaration_order_is_named():
    with pytest.raises(ConfigError, match="^config idr:sshUser "):
        settings(healthCheckPath="x", sshUser="Rocky", environment="prod")
    # A value the CLI could not have passed (not a number) is named before any other check.
    with pytest.raises(ConfigError, match="^config idr:omeroreadonlyCount = 'x' "):
        settings(sshUser="Rocky", omeroreadonlyCount="x")
    # Checks across keys run once every key is valid on its own.
    with pytest.raises(ConfigError, match="^config idr:nginxLongReadTimeout = 30 "):
        settings(nginxLongReadTimeout="30")
    with pytest.raises(ConfigError, match="^config idr:sshUser "):
        settings(nginxLongReadTimeout="30", sshUser="Rocky")


@pytest.mark.parametrize("text", ["1_0", "4.0", "1e1", "0x4", "٣"])
def test_whole_numbers_are_decimal_digits_only(text):
    with pytest.raises(ConfigError, match="a whole number$"):
        settings(omeroreadonlyCount=text)


def test_settings_hold_config_only():
    """Every field but the stack is an idr: key; the hosts are computed from
    them (components/layout.py), never stored beside them."""
    assert [f.name for f in dataclasses.fields(Settings) if not isinstance(f.default, FieldInfo)] == ["stack"]
    s = settings(omeroreadonlyCount="2")
    assert [h.name for h in layout.hosts(s)] == ["prod-proxy", "prod-omeroreadwrite", "prod-database",
                                                 "prod-omeroreadonly-1", "prod-omeroreadonly-2", "prod-dockermanager",
                                                 "prod-management"]
    assert layout.host(s, "database").fixed_ip == "192.168.1.12"
    assert [v.role for v in layout.volumes(s)] == ["proxy", "omeroreadwrite", "database", "management"]


def test_clones_to_create_leave_out_the_volumes_that_exist():
    s = settings(cloneFromStack="organization/idr/other", databaseVolumeFromSnapshot="0123abcd-ef")
    assert layout.clones_to_create(s, {}) == {"proxy", "omeroreadwrite"}
    assert layout.clones_to_create(s, {"proxy": 100}) == {"omeroreadwrite"}
    assert layout.clones_to_create(settings(), {}) == frozenset()


def test_secrets_are_passed_through_untouched():
    opaque = object()  # as a pulumi.Output would be
    s = settings(secret=lambda name: opaque)
    assert s.ssh_private_key is opaque and s.deployment_secret_vars is opaque
    assert s.tls_private_key is None  # no certificate chain: the key is not used
