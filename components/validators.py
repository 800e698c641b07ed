"""Typed validators for pydantic models of config as the Pulumi CLI passes it.

A validator raises `NotAllowed(allowed, value)`: what is allowed, and the
value the message names. A pydantic constraint of its own
(`Field(ge=, le=, pattern=)`) says what is allowed with an `Allowed` marker
beside it. `first_error` turns a ValidationError into the first failing key,
its value and what is allowed, so pydantic's own wording never reaches a user.
"""
import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, get_origin

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_WHOLE = re.compile(r"^[+-]?[0-9]+$")
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


class NotAllowed(ValueError):
    """A value is not allowed: `allowed` says what is, `value` is what to name."""

    def __init__(self, allowed: str, value: Any):
        super().__init__(allowed)
        self.allowed, self.value = allowed, value


@dataclass(frozen=True)
class Allowed:
    """Annotated marker: what is allowed, when pydantic's own constraint fails."""
    text: str


def check(ok: Callable[[Any], Any], allowed: str) -> AfterValidator:
    def validate(value):
        if not ok(value):
            raise NotAllowed(allowed, value)
        return value
    return AfterValidator(validate)


def whole(lo: int, hi: int, unit: str = "") -> Any:
    return Annotated[int, Field(ge=lo, le=hi), Allowed(f"a whole number from {lo} to {hi}{unit}")]


def matching(pattern: str, allowed: str) -> Any:
    """A string matching `pattern` in full (pydantic's regex: `$` is the very end)."""
    return Annotated[str, Field(pattern=pattern), Allowed(allowed)]


Stripped = BeforeValidator(str.strip)


def required(allowed: str) -> BeforeValidator:
    """Refuses an empty value, naming it as given."""
    def validate(value):
        if not value:
            raise NotAllowed(allowed, value)
        return value
    return BeforeValidator(validate)


def ipv4(value: str, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise NotAllowed("an IPv4 address such as 203.0.113.10" + (", or empty" if allow_empty else ""), value) from None


def ipv4_network(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError:
        raise NotAllowed("an IPv4 network in CIDR form with no host bits set, such as 192.168.1.0/24", value) from None


def is_dns_name(value: str) -> bool:
    return (0 < len(value) <= 253 and not value.endswith(".")
            and all(_DNS_LABEL.fullmatch(label) for label in value.split(".")))


def ip_or_dns_name(value: str, allowed: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not is_dns_name(value):
            raise NotAllowed(allowed, value) from None
        return value


def ssh_public_key(value: str, host_prefix: bool = False) -> str:
    """One OpenSSH public key line '<type> <base64> [comment]' -> '<type> <base64>'.
    With host_prefix, a leading host field as ssh-keyscan and known_hosts
    print it ('host <type> <base64>') is accepted too."""
    allowed = ("one OpenSSH public key line '<type> <base64> [comment]'"
               + (" or an ssh-keyscan line '<host> <type> <base64>'" if host_prefix else "")
               + f", type one of {', '.join(SSH_KEY_TYPES)}, base64 that decodes to a key of that type")
    text = value.strip()
    fields = text.split()
    if (host_prefix and len(fields) >= 3 and fields[0] not in SSH_KEY_TYPES and fields[1] in SSH_KEY_TYPES
            and not fields[0].startswith(("@", "#"))):
        fields = fields[1:]
    if CONTROL.search(text.replace("\t", " ")) or len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
        raise NotAllowed(allowed, value)
    key_type, body = fields[0], fields[1]
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise NotAllowed(allowed, value) from None
    # The decoded key starts with its own type as an SSH string (uint32 length, name).
    prefix = len(key_type).to_bytes(4, "big") + key_type.encode()
    if not blob.startswith(prefix) or len(blob) <= len(prefix):
        raise NotAllowed(allowed, value)
    return f"{key_type} {body}"


def is_file_path(value: str) -> bool:
    return (value.startswith("/") and not any(c in value for c in " \n\t'\"$`;\\") and "/../" not in value + "/"
            and not CONTROL.search(value) and not value.endswith("/"))


def name_map(names: tuple[str, ...], parse: Callable[[str], Optional[Any]], what: str) -> BeforeValidator:
    """Entries 'role=<what>' -> {role: parse(value)}, each of `names` at most once."""
    def validate(items):
        out = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise NotAllowed(f"entries 'role={what}'", item)
            if name not in names:
                raise NotAllowed(f"a known role: one of {', '.join(names)}", item)
            if name in out:
                raise NotAllowed(f"each role at most once ({name} is repeated)", item)
            out[name] = parse(value)
            if out[name] is None:
                raise NotAllowed(f"entries 'role={what}'", item)
        return out
    return BeforeValidator(validate)


KIND_ALLOWED = {"string": "a string", "integer": "a whole number", "boolean": "true or false", "array": "a list of strings"}


def kind(annotation: Any) -> str:
    """The Pulumi.yaml type of a field; arrays arrive as JSON lists of strings."""
    return {str: "string", int: "integer", bool: "boolean"}.get(annotation) or (
        "array" if get_origin(annotation) in (tuple, list, dict) else "string")


def from_cli(kind: str, raw: Any) -> Any:
    """A value as the CLI passes it (JSON for arrays, 'true'/'false') -> Python."""
    if kind == "integer":
        if not _WHOLE.fullmatch(str(raw).strip()):
            raise NotAllowed(KIND_ALLOWED[kind], raw)
        return int(str(raw).strip())
    if kind == "boolean":
        if str(raw).strip().lower() not in ("true", "false"):
            raise NotAllowed(KIND_ALLOWED[kind], raw)
        return str(raw).strip().lower() == "true"
    if kind == "array":
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            raise NotAllowed(KIND_ALLOWED[kind] + ', e.g. ["a", "b"]', raw) from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise NotAllowed(KIND_ALLOWED[kind], raw)
        return value
    return raw


def first_error(error: ValidationError, fields: dict[str, FieldInfo]) -> tuple[str, Any, str]:
    """(key, value, allowed) of the first failing field (`fields` by key, in declaration order)."""
    first = error.errors()[0]
    key, raised = first["loc"][0], first.get("ctx", {}).get("error")
    if isinstance(raised, NotAllowed):
        return key, raised.value, raised.allowed
    allowed = next((m.text for m in fields[key].metadata if isinstance(m, Allowed)),
                   KIND_ALLOWED[kind(fields[key].annotation)])
    return key, first["input"], allowed
