"""What each kind of idr: config value allows: pydantic types (Annotated
aliases) and their validators, used by the model in components/settings.py.

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
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Optional, get_origin

import yaml
from annotated_types import Ge, GroupedMetadata, Le
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo

from . import PROJECT_DIR
from .layout import OMERO_ROLES, READONLY_BASE, ROLES

# Tenant subnets: RFC 1918 only (no link-local, loopback, multicast or public space).
PRIVATE_NETWORKS = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# Playbooks this program must not run: the first formats and mounts volumes
# (the program does that, by volume ID); the second is not idempotent.
REFUSED_PLAYBOOKS = {"idr-00-preinstall.yml": "it formats and mounts volumes, which this program does itself",
                     "idr-03-postinstall.yml": "it is not idempotent and pulumi up re-runs the step"}
_SIZE_RE = re.compile(r"^([1-9][0-9]*)([kmg])$")
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


@dataclass(frozen=True)
class Whole(GroupedMetadata):
    """Annotated marker of a whole number from `lo` to `hi`: pydantic's own
    bounds, and what is allowed when one fails."""
    lo: int
    hi: int
    unit: str = ""

    def __iter__(self) -> Iterator[object]:
        yield Ge(self.lo)
        yield Le(self.hi)
        yield Allowed(f"a whole number from {self.lo} to {self.hi}{self.unit}")


def allowed_of(metadata: Iterable[object]) -> Optional[str]:
    """The Allowed text among a field's metadata (inside a Whole too), if any."""
    for item in metadata:
        if isinstance(item, Allowed):
            return item.text
        if isinstance(item, GroupedMetadata):
            found = allowed_of(item)
            if found is not None:
                return found
    return None


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
        allowed = "an IPv4 address such as 203.0.113.10" + (", or empty" if allow_empty else "")
        raise NotAllowed(allowed, value) from None


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


KIND_ALLOWED = {"string": "a string", "integer": "a whole number", "boolean": "true or false",
                "array": "a list of strings"}


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
    key, raised = str(first["loc"][0]), first.get("ctx", {}).get("error")
    if isinstance(raised, NotAllowed):
        return key, raised.value, raised.allowed
    allowed = allowed_of(fields[key].metadata) or KIND_ALLOWED[kind(fields[key].annotation)]
    return key, first["input"], allowed


@dataclass(frozen=True)
class CacheZone:
    name: str
    size: str

    @property
    def bytes(self) -> int:
        match = _SIZE_RE.match(self.size)
        assert match, self.size  # validated by _zones
        number, unit = match.groups()
        return int(number) * {"k": 1024, "m": 1024**2, "g": 1024**3}[unit]


# --------------------------------------------------------------------------
# What one key allows. A validator raises NotAllowed(allowed, value).

def cloud_name(what: str, allow_empty: bool = False) -> AfterValidator:
    """A name OpenStack looks up (network, image, flavor): not blank, no
    surrounding spaces or control characters (an empty name matches anything)."""
    return check(lambda v: (allow_empty and v == "") or (v.strip() == v != "" and not CONTROL.search(v)),
                 f"{what}: not empty, without leading or trailing spaces or control characters"
                 + (", or empty" if allow_empty else ""))


def _private(value: str) -> str:
    subnet = IPv4Network(value)
    if not any(subnet.subnet_of(n) for n in PRIVATE_NETWORKS):
        what = ("link-local" if subnet.is_link_local else "loopback" if subnet.is_loopback
                else "multicast" if subnet.is_multicast else "not RFC 1918")
        raise NotAllowed("a private network inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918); "
                         f"this one is {what}", value)
    return value


def _public_key(value: str) -> str:
    if not value.strip():
        raise NotAllowed("an OpenSSH public key line '<type> <base64> [comment]' (required: the key installed for "
                         "sshUser on every host)", value)
    ssh_public_key(value)
    return value.strip()


def _other_stack(value: str, info) -> str:
    if value and value.split("/")[-1] == info.context["stack"]:
        raise NotAllowed("another stack than this one", value)
    return value


def _zones(items: list[str]) -> tuple[CacheZone, ...]:
    zones: dict[str, CacheZone] = {}
    for item in items:
        name, sep, size = item.partition("=")
        if not sep or not re.fullmatch(r"^[a-z][a-z0-9_]{0,31}$", name) or not _SIZE_RE.fullmatch(size):
            raise NotAllowed("entries 'name=size' with a lower-case name and a size such as 200m or 10g", item)
        if name in zones:
            raise NotAllowed(f"each zone at most once ({name} is repeated)", item)
        zones[name] = CacheZone(name, size)
    if "default" not in zones:
        raise NotAllowed("a zone named 'default' among them (it caches what no other zone does)" if zones
                         else "at least one cache zone", items)
    return tuple(zones.values())


def _chain(value: str) -> str:
    chain = value.strip()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----", chain)
    if chain and (not blocks or "".join(blocks).count("BEGIN") != chain.count("-----BEGIN")):
        raise NotAllowed("PEM certificates only ('-----BEGIN CERTIFICATE-----' blocks, server certificate first); the "
                         "private key goes in the secret idr:tlsPrivateKey",
                         chain[:60] + ("..." if len(chain) > 60 else ""))
    return chain and chain + "\n"


def _cookie(value: str, info) -> str:
    name = value.strip() or f"sessionid_{info.data.get('environment')}"
    if not re.fullmatch(r"^[A-Za-z0-9_.-]{1,64}$", name):
        raise NotAllowed("a cookie name of letters, digits, _ . - (at most 64), or empty for "
                         "sessionid_<environment>", value)
    return name


def _playbooks(names: list[str]) -> tuple[str, ...]:
    for name in names:
        if not re.fullmatch(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml$", name):
            raise NotAllowed("file names of playbooks in the checkout's ansible/ directory, ending in .yml or .yaml, "
                             "without '/'", name)
        if name in REFUSED_PLAYBOOKS:
            raise NotAllowed(f"not {name}: {REFUSED_PLAYBOOKS[name]}", name)
    if len(set(names)) != len(names):
        raise NotAllowed("each playbook once", names)
    return tuple(names)


# Groups the inventory already has (without the <env>- prefix): an extra group may not be one of them.
_OWN_GROUPS = {"hosts", "omero-hosts", "bastion-hosts", "docker-hosts", *(f"{r}-hosts" for r in ROLES)}


def _extra_groups(items: list[str]) -> tuple[tuple[str, str], ...]:
    """Entries 'group=role' -> (group, role) pairs, each pair once."""
    out: list[tuple[str, str]] = []
    for item in items:
        group, sep, role = item.partition("=")
        if not sep or not re.fullmatch(r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$", group):
            raise NotAllowed("entries 'group=role' with a group name of lower-case letters, digits and dashes "
                             "(without the <env>- prefix), e.g. 'ebi-nfs=omeroreadwrite'", item)
        if role not in ROLES:
            raise NotAllowed(f"a known role after '=': one of {', '.join(ROLES)}", item)
        if group in _OWN_GROUPS:
            own = ", ".join(sorted(_OWN_GROUPS))
            raise NotAllowed(f"a group the inventory does not already have (not {own})", item)
        if (group, role) in out:
            raise NotAllowed("each 'group=role' once", item)
        out.append((group, role))
    return tuple(out)


# What the deployment step's secret vars must hold, and why: the playbooks fall
# back on the roles' defaults (the password 'omero') for whatever is missing.
REQUIRED_SECRET_VARS = {
    "omero_server_rootpassword": "OMERO's root password (ome.omero_server; the post-install step logs in with it)",
    "idr_secret_postgresql_password": "the PostgreSQL password of the omero role",
    "idr_secret_postgresql_password_ro": "the PostgreSQL password of the omeroreadonly role",
}
ROLE_DEFAULT_PASSWORDS = {"omero"}


def secret_vars_problem(text: Optional[str]) -> Optional[str]:
    """Why the deployment step's secret vars (YAML text) are not enough, or
    None. Never quotes a value."""
    if text is None or not text.strip():
        return "set (the deployment step is on)"
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return "a YAML mapping (this one does not parse)"
    if not isinstance(loaded, dict):
        return "a YAML mapping of variable names to values"
    missing = [name for name in REQUIRED_SECRET_VARS if not str(loaded.get(name) or "").strip()]
    if missing:
        return "a mapping that holds " + "; ".join(f"{n} ({REQUIRED_SECRET_VARS[n]})" for n in missing)
    defaults = [name for name in REQUIRED_SECRET_VARS if str(loaded[name]) in ROLE_DEFAULT_PASSWORDS]
    if defaults:
        return f"passwords other than the roles' default 'omero' (in {', '.join(defaults)})"
    public = loaded.get("idr_secret_public_password")
    if public is not None and not str(public).strip() or CONTROL.search(str(public or "")):
        return ("a non-empty idr_secret_public_password without control characters, "
                "or none (OMERO.web's default 'public')")
    return None


def project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def _checkout(value: str) -> str:
    if value and not (project_path(value) / "ansible").is_dir():
        raise NotAllowed(f"a checkout of IDR/deployment: a directory with an ansible/ directory in it "
                         f"({project_path(value) / 'ansible'} is not a directory)", value)
    return value


def _vars_file(value: str) -> str:
    if not value.strip():
        return ""
    try:
        loaded = yaml.safe_load(project_path(value.strip()).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise NotAllowed(f"a readable YAML file ({error.strerror if isinstance(error, OSError) else 'not text'})",
                         value) from None
    except yaml.YAMLError:
        raise NotAllowed("a YAML file of variables (this one does not parse)", value) from None
    if not isinstance(loaded, dict):
        raise NotAllowed("a YAML mapping of variable names to values", value)
    return value.strip()


# The value types the model's fields name.
Environment = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"),
                        Allowed("2 to 32 lower-case letters, digits and dashes, starting with a letter (it prefixes "
                                "host names); empty means the stack name"),
                        BeforeValidator(lambda v, info: v or info.context["stack"])]
Subnet = Annotated[str, AfterValidator(ipv4_network), AfterValidator(_private), check(
    lambda v: IPv4Network(v).num_addresses >= READONLY_BASE + 3,
    f"a /25 or larger network: read-only hosts take fixed addresses from .{READONLY_BASE + 1} up")]
ImageMap = Annotated[dict[str, str], name_map(ROLES, lambda s: s.strip() or None, "image")]
Flavor = Annotated[str, cloud_name("a flavor name")]
ExternalNetwork = Annotated[str, cloud_name("the name of the external network")]
NetworkName = Annotated[str, cloud_name("a network name", True)]
SubnetName = Annotated[str, cloud_name("a subnet name", True)]
ImageName = Annotated[str, cloud_name("a Glance image name")]
ReadonlyCount = Annotated[int, Whole(1, 120)]
Port = Annotated[int, Whole(1, 65535)]
PublicReadTimeout = Annotated[int, Whole(1, 3600, " seconds")]
LongReadTimeout = Annotated[int, Whole(1, 86400, " seconds")]
StatementTimeout = Annotated[int, Whole(1000, 3_600_000, " ms")]
CloudToken = r"^[A-Za-z0-9._:-]*$"  # availability zones, volume types
User = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$"),
                 Allowed("a POSIX login name such as rocky: 1 to 32 lower-case letters, digits, _ and -, "
                         "starting with a letter or _")]
# Empty: floatingIp (build_settings), and kept as given to name it if that is empty too.
Bastion = Annotated[str, AfterValidator(
    lambda v: ip_or_dns_name(v.strip(), "an IP address or DNS host name of the proxy") if v.strip() else v)]
# pulumi-command parses host_key with Go's ssh.ParseAuthorizedKey: hand it
# exactly '<type> <base64>' whatever form (keyscan line, comment) was given.
HostKey = Annotated[str, AfterValidator(lambda v: ssh_public_key(v, host_prefix=True) if v.strip() else "")]
Cidrs = Annotated[tuple[Annotated[str, AfterValidator(ipv4_network)], ...],
                  required("at least one CIDR (SSH to the bastion is how the program configures hosts)")]
OpenStackId = Annotated[str, Field(pattern=r"^$|^[0-9a-fA-F-]{8,64}$"),
                        Allowed("an OpenStack ID (hex digits and dashes)"), Stripped]
Size = Annotated[int, Whole(1, 65536, " (GB)")]
SourceSize = Annotated[int, Whole(0, 65536, " (GB, 0 when unknown)")]
Generation = Annotated[int, Whole(0, 10**9)]
StackName = Annotated[str, Field(pattern=r"^$|^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$"),
                      Allowed("a stack name such as 'prod' or 'organization/idr/prod'"), Stripped,
                      AfterValidator(_other_stack)]
DnsName = Annotated[str, check(is_dns_name, "a DNS host name such as idr.openmicroscopy.org: dot-separated labels of "
                               "letters, digits and dashes, no label empty or starting or ending with a dash")]
Duration = Annotated[str, Field(pattern=r"^[1-9][0-9]*(ms|s|m|h|d|w|M|y)$"),
                     Allowed("an nginx time such as 1d, 12h or 180d")]
FilePath = Annotated[str, check(is_file_path, "an absolute path of a file without spaces, quotes, '..', control or "
                                "shell characters")]
Slots = Annotated[dict[str, int],
                  name_map(OMERO_ROLES, lambda s: int(s) if s.isdecimal() and 1 <= int(s) <= 64 else None,
                           "N', N from 1 to 64"),
                  AfterValidator(lambda m: m | {r: 1 for r in OMERO_ROLES if r not in m})]
GitUrl = Annotated[str, Field(pattern=r"^(https://|ssh://|git@|file://|/)[\x21-\x7e]+$"),
                   Allowed("a git URL (https://, ssh://, git@host:path, file:// or an absolute path)"), Stripped]
_GIT_REF = r"^(?![-/.])(?!.*\.\.)[A-Za-z0-9_./-]{1,200}(?<![/.])$"
GitRef = Annotated[str, Stripped, check(lambda v: not v or re.fullmatch(_GIT_REF, v),
                                        "a commit hash or tag name (letters, digits, . _ / -)")]
UrlPath = Annotated[str, Field(pattern=r"^/[\x21-\x7e]*$"),
                    Allowed("a URL path starting with / of printable ASCII, without spaces or control characters "
                            "(percent-encode them)")]
Ipv4s = tuple[Annotated[str, AfterValidator(ipv4)], ...]
ProbeAddresses = Annotated[Ipv4s, check(lambda v: len(set(v)) == len(v), "IPv4 addresses, each once")]
FloatingIp = Annotated[str, AfterValidator(lambda v: ipv4(v.strip(), allow_empty=True))]
AvailabilityZone = Annotated[str, Field(pattern=CloudToken),
                             Allowed("an availability zone name of letters, digits and . _ : - only, or empty for the "
                                     "cloud's default")]
VolumeType = Annotated[str, Field(pattern=CloudToken),
                       Allowed("a volume type name of letters, digits and . _ : - only, or empty for the cloud's "
                               "default")]
PublicKey = Annotated[str, AfterValidator(_public_key)]
CacheZones = Annotated[tuple[CacheZone, ...], BeforeValidator(_zones)]
CertificateChain = Annotated[str, AfterValidator(_chain)]
CookieName = Annotated[str, AfterValidator(_cookie)]
Release = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+){1,3}$"), Allowed("a release number such as 0.8.1")]
PgIdentifier = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$"),
                         Allowed("a PostgreSQL identifier in lower case")]
Checkout = Annotated[str, Stripped, AfterValidator(_checkout)]
Playbooks = Annotated[tuple[str, ...], BeforeValidator(_playbooks),
                      required('at least one playbook, e.g. ["idr-01-install-idr.yml"]')]
VarsFile = Annotated[str, AfterValidator(_vars_file)]
ExtraGroups = Annotated[tuple[tuple[str, str], ...], BeforeValidator(_extra_groups)]
AlertReceiver = Annotated[str, Field(pattern=r"^(|slack|webhook)$"),
                          Allowed("slack, webhook, or empty (alerts are only logged by Alertmanager)")]
SlackChannel = Annotated[str, Field(pattern=r"^[#@][a-z0-9_.-]{1,80}$"),
                         Allowed("a Slack channel such as #idr-notify (or @user)")]
# Where an alert receiver's secret travels: idr:deploymentSecretVars, the one
# secret the playbooks get (IDR's own name for the Slack one), never config text.
ALERT_RECEIVER_SECRETS = {
    "slack": ("idr_secret_management_slack_webhook", "the Slack webhook's path after https://hooks.slack.com/services/",
              r"^[A-Za-z0-9/_-]{8,}$"),
    "webhook": ("idr_secret_alert_webhook_url", "the URL Alertmanager posts alerts to (http:// or https://)",
                r"^https?://[\x21-\x7e]+$"),
}


def alert_secret_problem(receiver: str, text: Optional[str]) -> Optional[str]:
    """Why idr:deploymentSecretVars lacks the receiver's secret, or None.
    Never quotes a value."""
    if receiver not in ALERT_RECEIVER_SECRETS:
        return None
    name, what, pattern = ALERT_RECEIVER_SECRETS[receiver]
    try:
        loaded = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return "a YAML mapping (this one does not parse)"
    value = str(loaded.get(name) or "") if isinstance(loaded, dict) else ""
    if not re.fullmatch(pattern, value):
        return f"a mapping that holds {name} ({what}), needed by idr:alertReceiver {receiver}"
    return None


# --------------------------------------------------------------------------
# The proxy's own locations: IDR's direct redirects and study short URLs.
# Every part lands in nginx's config, so each allows only what nginx reads
# as one token (no whitespace, quotes, backslashes, braces or ';').

REDIRECT_CODES = ("301", "302", "303", "307", "308")
_NGINX_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_UNSAFE = set("\"'\\{};")


def _token(value: str) -> bool:
    return bool(_NGINX_TOKEN.fullmatch(value)) and not (_UNSAFE & set(value))


def _uri_path(value: str) -> bool:
    return value.startswith("/") and _token(value) and "#" not in value


def _destination(value: str) -> bool:
    """A path on this site or an https:// URL. '$' is allowed (IDR's links
    have it): the renderer writes it so nginx never reads a variable."""
    return (value.startswith("/") or value.startswith("https://")) and _NGINX_TOKEN.fullmatch(value) is not None \
        and not (set("\"'\\") & set(value))


def _regex(value: str) -> bool:
    if not _token(value):
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


@dataclass(frozen=True)
class DirectRedirect:
    """`location <modifier> <path> { return <code> <destination>; }`"""
    modifier: str
    path: str
    code: int
    destination: str

    @property
    def location(self) -> str:
        return f"{self.modifier} {self.path}"


@dataclass(frozen=True)
class RedirectMapEntry:
    """`map $request_uri` entry: an exact request URI (path and query) or
    '~regex', and where it redirects to."""
    match: str
    destination: str


@dataclass(frozen=True)
class RedirectLocation:
    """`location <modifier> <path> { return <code> <the map's destination>; }`"""
    modifier: str
    path: str
    code: int

    @property
    def location(self) -> str:
        return f"{self.modifier} {self.path}"


def _direct_redirects(items: list[str]) -> tuple[DirectRedirect, ...]:
    allowed = ("entries '<= or ^~> <path> <code> <destination>', e.g. '= /webclient 302 /webclient/?experimenter=-1': "
               f"a path starting with /, a code of {', '.join(REDIRECT_CODES)}, a destination path or https:// URL, "
               "without spaces, quotes, backslashes, braces or ';'")
    out = []
    for item in items:
        parts = item.split()
        if len(parts) != 4 or parts[0] not in ("=", "^~") or not _uri_path(parts[1]) \
                or parts[2] not in REDIRECT_CODES or not _destination(parts[3]):
            raise NotAllowed(allowed, item)
        out.append(DirectRedirect(parts[0], parts[1], int(parts[2]), parts[3]))
    return tuple(out)


def _redirect_map(items: list[str]) -> tuple[RedirectMapEntry, ...]:
    allowed = ("entries '<request URI or ~regex> <destination>', e.g. '/mito/webclient/?show=screen-1 "
               "/webclient/?show=screen-1101' or '~/mito /webclient/?show=screen-1101': a request URI starting with "
               "/ or a regex, a destination path or https:// URL, without spaces, quotes, backslashes, braces or ';'")
    out, seen = [], set()
    for item in items:
        parts = item.split()
        if len(parts) != 2 or not _destination(parts[1]):
            raise NotAllowed(allowed, item)
        match = parts[0]
        if not (_uri_path(match) or (match.startswith("~") and _regex(match[1:]))):
            raise NotAllowed(allowed, item)
        if match in seen:
            raise NotAllowed(f"each request URI or regex once ({match} is repeated)", item)
        seen.add(match)
        out.append(RedirectMapEntry(match, parts[1]))
    return tuple(out)


def _redirect_locations(items: list[str]) -> tuple[RedirectLocation, ...]:
    allowed = ("entries '<modifier> <path or regex> <code>', e.g. '= /study/idr0083/figure/4i 301' or "
               f"'~ ^/(mito|tara|pgpc)($|/) 302': modifier =, ^~, ~ or ~*, a code of {', '.join(REDIRECT_CODES)}, "
               "without spaces, quotes, backslashes, braces or ';'")
    out = []
    for item in items:
        parts = item.split()
        if len(parts) != 3 or parts[2] not in REDIRECT_CODES:
            raise NotAllowed(allowed, item)
        modifier, path = parts[0], parts[1]
        if not ((modifier in ("=", "^~") and _uri_path(path)) or (modifier in ("~", "~*") and _regex(path))):
            raise NotAllowed(allowed, item)
        out.append(RedirectLocation(modifier, path, int(parts[2])))
    return tuple(out)


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")


def website_kind(source: str) -> str:
    """'archive' for a tarball URL, else 'git' (a repository)."""
    return "archive" if source.split("?", 1)[0].endswith(ARCHIVE_SUFFIXES) else "git"


DirectRedirects = Annotated[tuple[DirectRedirect, ...], BeforeValidator(_direct_redirects)]
RedirectMap = Annotated[tuple[RedirectMapEntry, ...], BeforeValidator(_redirect_map)]
RedirectLocations = Annotated[tuple[RedirectLocation, ...], BeforeValidator(_redirect_locations)]
WebsiteSource = Annotated[str, Field(pattern=r"^(https://|file:///|ssh://|git@|/)[\x21-\x7e]+$"),
                          Allowed("a git repository (https://, ssh://, git@host:path, file:// or an absolute path) "
                                  f"or a tarball URL ending in {', '.join(ARCHIVE_SUFFIXES)} (https:// or file://); "
                                  "'{ref}' in it is replaced by websiteRef"), Stripped]
