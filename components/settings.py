"""The only module that reads Pulumi config.

Every `idr:` key is declared here once (name, type, default, what is allowed)
and in `Pulumi.yaml` for the CLI; a test keeps the two in step. Bad values
raise `ConfigError`, a `pulumi.RunError`, so `pulumi up` prints one line naming
the key, the value and what is allowed, without a Python traceback, before any
resource is declared.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import yaml

NAMESPACE = "idr"

# Roles as the operators' page names them; order is the order hosts are listed.
ROLES = ("proxy", "omeroreadwrite", "database", "omeroreadonly", "dockermanager")
OMERO_ROLES = ("omeroreadwrite", "omeroreadonly")

# Data volumes: which host holds which, and where it is mounted.
DATA_VOLUME_MOUNTS = {
    "omeroreadwrite": "/data",
    "database": "/var/lib/pgsql",
    "proxy": "/var/cache/nginx",
}

# Fixed addresses inside the environment's subnet, so every rendered file
# (nginx upstreams, /etc/hosts) is a pure function of config and a host keeps
# its address for life. omeroreadonly-n gets READONLY_BASE + n.
FIXED_HOST_OFFSETS = {"proxy": 10, "omeroreadwrite": 11, "database": 12, "dockermanager": 13}
READONLY_BASE = 100

# External ports of the proxy (from the page and production).
PROXY_PUBLIC_TCP_PORTS = (80, 443, 4063, 4064)
PROXY_OMERO_PORT_RANGE = (14060, 14079)
RSYNC_PORT = 873
SSH_PORT = 22

_SIZE_RE = re.compile(r"^([1-9][0-9]*)([kmg])$")
_DURATION_RE = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d|w|M|y)$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_STACK_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")
_ZONE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # POSIX login name, as useradd takes it
_CLOUD_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:-]*$")  # availability zones, volume types
_DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_URL_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")  # what http.client puts in a request line
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
# Tenant subnets: RFC 1918 only (no link-local, loopback, multicast or public space).
PRIVATE_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


class ConfigError(pulumi.RunError):
    """A config value is not allowed. Its message is the whole explanation."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key if ":" in key else f"{NAMESPACE}:{key}"
        self.value = value
        self.allowed = allowed
        super().__init__(f"config {self.key} = {value!r} is not allowed: {allowed}")


# --------------------------------------------------------------------------
# Key declarations. `kind` is the Pulumi.yaml type; `check` returns the parsed
# value or raises ConfigError.

@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # string | integer | boolean | array
    default: Any
    description: str
    secret: bool = False
    required: bool = False


KEYS: dict[str, Key] = {}


def _key(name, kind, default, description, secret=False, required=False):
    KEYS[name] = Key(name, kind, default, description, secret, required)


# Environment and network
_key("environment", "string", "", "Environment name used in host names (<env>-<role>); empty means the stack name.")
_key("externalNetwork", "string", "public", "Name of the external (provider) network the router connects to and floating IPs come from.")
_key("existingNetwork", "string", "", "Use this existing network instead of creating one (give existingSubnet too); empty creates network, subnet and router.")
_key("existingSubnet", "string", "", "Subnet of existingNetwork; its CIDR must equal subnetCidr.")
_key("subnetCidr", "string", "192.168.1.0/24", "IPv4 CIDR of the environment's subnet; hosts get fixed addresses in it.")
_key("dnsNameservers", "array", [], "DNS servers handed out on the subnet; empty uses the cloud's default.")
# Hosts
_key("image", "string", "Rocky-9-GenericCloud", "Glance image name for every host (Rocky Linux 9).")
_key("imageOverrides", "array", [], "Per-role image as 'role=image', e.g. 'database=Rocky-9.4'.")
_key("proxyFlavor", "string", "m1.large", "Flavor of <env>-proxy.")
_key("omeroreadwriteFlavor", "string", "m1.xlarge", "Flavor of <env>-omeroreadwrite.")
_key("databaseFlavor", "string", "m1.large", "Flavor of <env>-database.")
_key("omeroreadonlyFlavor", "string", "m1.large", "Flavor of each <env>-omeroreadonly-n.")
_key("dockermanagerFlavor", "string", "m1.large", "Flavor of <env>-dockermanager.")
_key("omeroreadonlyCount", "integer", 4, "Number of read-only OMERO servers (1 to 120, and they must fit the subnet).")
_key("availabilityZone", "string", "", "Availability zone of servers and volumes; empty lets the cloud choose.")
# SSH and access
_key("sshUser", "string", "rocky", "Login user of the image, used by remote commands.")
_key("sshPublicKey", "string", "", "OpenSSH public key installed for sshUser on every host (required).", required=True)
_key("sshPrivateKey", "string", None, "Private key matching sshPublicKey, used by remote commands (secret, required).", secret=True, required=True)
_key("sshBastion", "string", "", "Address remote commands use to reach the proxy on port 22 (an IP or DNS name); empty means floatingIp.")
_key("sshBastionHostKey", "string", "", "The proxy's SSH host public key; when set, the bastion connection is refused if it differs.")
_key("sshAllowedCidrs", "array", ["0.0.0.0/0"], "IPv4 CIDRs allowed to reach SSH (22) on the proxy.")
_key("rsyncEnabled", "boolean", False, "Open rsync (873) on the proxy and serve the public data read-only. Off: production closed it as a security risk.")
_key("floatingIp", "string", "", "Floating IP held by the proxy's port; empty holds none. Moving the public IP is a change of this key.")
# Data volumes
for _role, _size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
    _mount = DATA_VOLUME_MOUNTS[_role]
    _key(f"{_role}VolumeSize", "integer", _size, f"Size in GB of the {_role} data volume ({_mount}). Never shrinks.")
    _key(f"{_role}VolumeFromVolume", "string", "", f"Clone the {_role} data volume from this volume ID.")
    _key(f"{_role}VolumeFromSnapshot", "string", "", f"Create the {_role} data volume from this snapshot ID (restore).")
    _key(f"{_role}VolumeSourceSize", "integer", 0, f"Size in GB of the {_role} clone source when known (0: unknown); the new volume may not be smaller.")
_key("volumeType", "string", "", "Cinder volume type of the data volumes; empty uses the cloud's default.")
_key("cloneFromStack", "string", "", "Stack whose dataVolumes output is cloned for every data volume without its own source, e.g. 'organization/idr/prod'.")
# Proxy / nginx
_key("serverName", "string", "idr.openmicroscopy.org", "Public host name served by nginx.")
_key("nginxCacheZones", "array", ["thumbnails=10g", "render=40g", "metadata=25g", "api=10g", "static=200m", "default=1g"],
     "nginx cache zones as 'name=size' (k, m or g); their total must fit proxyVolumeSize.")
_key("nginxCacheInactive", "string", "180d", "How long an unused cache entry is kept.")
_key("nginxCacheValid", "string", "1d", "How long a cached 200 answer is fresh.")
_key("nginxPublicReadTimeout", "integer", 60, "Read timeout in seconds of the public servers towards the read-only backends.")
_key("nginxLongReadTimeout", "integer", 900, "Read timeout in seconds of the cache-buster (9000) and long-request (8009) servers towards omeroreadwrite.")
_key("tlsCertificate", "string", "/etc/pki/tls/certs/idr.crt", "Path on the proxy of the TLS certificate chain.")
_key("tlsCertificateKey", "string", "/etc/pki/tls/private/idr.key", "Path on the proxy of the TLS private key.")
_key("tlsCertificateChain", "string", "", "PEM certificate chain (server certificate first) written to tlsCertificate; empty: a self-signed placeholder, and the stack output tlsSelfSigned says so.")
_key("tlsPrivateKey", "string", None, "PEM private key of tlsCertificateChain, written to tlsCertificateKey with mode 0600 (secret; required with tlsCertificateChain).", secret=True)
_key("httpsRedirect", "boolean", False, "Redirect plain HTTP on port 80 to HTTPS (never on 9000 and 8009).")
_key("omeroWebPort", "integer", 80, "Port of OMERO.web on the OMERO hosts (their own nginx, as IDR's deployment playbooks install it).")
_key("sessionCookieName", "string", "", "OMERO.web's session cookie; a request carrying it is never cached. Empty means sessionid_<environment>, as IDR's playbooks set it.")
_key("maintenance", "boolean", False, "Serve 503 and a maintenance page on the public ports.")
_key("jupyterEnabled", "boolean", False, "Route /jupyter on the proxy to JupyterHub on the dockermanager.")
_key("cachePurgeGeneration", "integer", 0, "Bump to empty /var/cache/nginx on the proxy once and reload nginx.")
# Bio-Formats cache regeneration
_key("bfcacheGeneration", "integer", 0, "Bump to start one Bio-Formats cache regeneration run; 0 never runs.")
_key("bfcacheSlots", "array", ["omeroreadwrite=10", "omeroreadonly=1"], "Parallel jobs per node as 'role=N' for omeroreadwrite and omeroreadonly.")
_key("omeroBin", "string", "/opt/omero/server/OMERO.server/bin/omero", "Path of the omero executable on the OMERO servers.")
_key("omeroCliRenderVersion", "string", "0.8.1", "Version of omero-cli-render installed on every OMERO node for cache regeneration (production's).")
# Database
_key("databaseName", "string", "idr", "OMERO database name.")
_key("statementTimeoutMs", "integer", 60000, "statement_timeout of the omeroreadonly database role, in milliseconds.")
# Deployment playbooks (IDR/deployment), run on the operator's machine
_key("deploymentEnabled", "boolean", True, "Run IDR's deployment playbooks (PostgreSQL, OMERO.server, OMERO.web) as a step of pulumi up; off: install them by other means.")
_key("deploymentRepository", "string", "https://github.com/IDR/deployment.git", "Git URL of IDR/deployment, checked out at deploymentRef by the step (unless deploymentPath is set).")
_key("deploymentRef", "string", "", "Commit (or tag) of deploymentRepository the step checks out; a full commit hash pins it.")
_key("deploymentPath", "string", "", "A local checkout of IDR/deployment (absolute or relative to the project); used instead of deploymentRepository and deploymentRef.")
_key("deploymentPlaybooks", "array", ["idr-01-install-idr.yml"], "Playbooks run in order from the checkout's ansible/ directory.")
_key("deploymentVarsFile", "string", "", "YAML file of extra vars for the playbooks (absolute or relative to the project); empty: none.")
_key("deploymentSecretVars", "string", None, "YAML mapping of secret vars for the playbooks (e.g. idr_secret_postgresql_password); written to a 0600 temporary file, never printed (secret).", secret=True)
_key("deploymentGeneration", "integer", 0, "Bump to run the deployment playbooks again (and the steps that follow them).")
# Releases
_key("healthCheckPath", "string", "/webclient/?experimenter=-1", "Path that must answer HTTP 200 on an environment's floating IP before it takes the public IP.")


# --------------------------------------------------------------------------
# Typed settings


@dataclass(frozen=True)
class VolumeSpec:
    role: str
    mount: str
    size: int
    from_volume: str = ""
    from_snapshot: str = ""
    source_size: int = 0
    from_stack: bool = False  # source comes from cloneFromStack's outputs


@dataclass(frozen=True)
class Host:
    name: str        # <env>-<role>[-n]
    role: str
    alias: str       # <role>[-n]
    fixed_ip: str
    flavor: str
    image: str
    index: int = 0   # n for omeroreadonly, else 0
    volume: Optional[VolumeSpec] = None


@dataclass(frozen=True)
class CacheZone:
    name: str
    size: str

    @property
    def bytes(self) -> int:
        number, unit = _SIZE_RE.match(self.size).groups()
        return int(number) * {"k": 1024, "m": 1024**2, "g": 1024**3}[unit]


@dataclass(frozen=True)
class Deployment:
    """IDR's deployment playbooks as a step: where they come from and with what."""
    enabled: bool
    repository: str
    ref: str
    path: str                 # a local checkout as configured (relative: to the project), or ""
    playbooks: tuple[str, ...]
    vars_file: str            # as configured (relative: to the project), or ""
    secret_vars: Any          # secret YAML text (Output under Pulumi) or None
    generation: int
    source_digest: str        # what the playbooks are: ref, or a digest of the local checkout's ansible/
    vars_digest: str          # digest of the vars file's content ("" when none)


@dataclass(frozen=True)
class Settings:
    stack: str
    environment: str
    external_network: str
    existing_network: str
    existing_subnet: str
    subnet_cidr: str
    dns_nameservers: tuple[str, ...]
    hosts: tuple[Host, ...]
    availability_zone: str
    ssh_user: str
    ssh_public_key: str
    ssh_private_key: Any  # pulumi.Output[str] (secret) or str offline
    ssh_bastion: str
    ssh_bastion_host_key: str
    ssh_allowed_cidrs: tuple[str, ...]
    rsync_enabled: bool
    floating_ip: str
    volume_type: str
    clone_from_stack: str
    server_name: str
    nginx_cache_zones: tuple[CacheZone, ...]
    nginx_cache_inactive: str
    nginx_cache_valid: str
    nginx_public_read_timeout: int
    nginx_long_read_timeout: int
    tls_certificate: str
    tls_certificate_key: str
    tls_certificate_chain: str     # PEM; empty: self-signed placeholder
    tls_private_key: Any           # secret PEM (Output under Pulumi) or None
    https_redirect: bool
    omero_web_port: int
    session_cookie_name: str
    maintenance: bool
    jupyter_enabled: bool
    cache_purge_generation: int
    bfcache_generation: int
    bfcache_slots: dict
    omero_bin: str
    omero_cli_render_version: str
    database_name: str
    statement_timeout_ms: int
    health_check_path: str
    deployment: "Deployment"

    def hosts_of(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == role)

    def host(self, role: str) -> Host:
        (only,) = self.hosts_of(role)
        return only

    @property
    def volumes(self) -> tuple[VolumeSpec, ...]:
        return tuple(h.volume for h in self.hosts if h.volume)


# --------------------------------------------------------------------------
# Parsing raw config strings (as Pulumi hands them) into typed values.


def _parse(key: Key, raw: Optional[str]) -> Any:
    if raw is None:
        return key.default
    if key.kind == "string":
        return raw
    if key.kind == "integer":
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(key.name, raw, "a whole number") from None
    if key.kind == "boolean":
        text = str(raw).strip().lower()
        if text in ("true", "false"):
            return text == "true"
        raise ConfigError(key.name, raw, "true or false")
    if key.kind == "array":
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            raise ConfigError(key.name, raw, "a list of strings, e.g. [\"a\", \"b\"]") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key.name, raw, "a list of strings")
        return value
    raise AssertionError(key.kind)


def _int_range(name, value, lo, hi, unit=""):
    if not lo <= value <= hi:
        raise ConfigError(name, value, f"a whole number from {lo} to {hi}{unit}")
    return value


def _ipv4(name, value, allow_empty=True):
    if allow_empty and value == "":
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(name, value, "an IPv4 address such as 203.0.113.10" + (", or empty" if allow_empty else "")) from None


def _cidr(name, value):
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError:
        raise ConfigError(name, value, "an IPv4 network in CIDR form with no host bits set, such as 192.168.1.0/24") from None


def _private_subnet(name, subnet: ipaddress.IPv4Network):
    if not any(subnet.subnet_of(n) for n in PRIVATE_NETWORKS):
        kind = ("link-local" if subnet.is_link_local else "loopback" if subnet.is_loopback
                else "multicast" if subnet.is_multicast else "not RFC 1918")
        raise ConfigError(name, str(subnet),
                          f"a private network inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918); "
                          f"this one is {kind}")
    return subnet


def _cloud_name(name, value, what, allow_empty=False):
    """A name OpenStack looks up (network, image, flavor): not blank, no
    surrounding spaces or control characters (an empty name matches anything)."""
    if allow_empty and value == "":
        return value
    if not value.strip() or value != value.strip() or _CONTROL_RE.search(value):
        raise ConfigError(name, value, f"{what}: not empty, without leading or trailing spaces or control characters"
                          + (", or empty" if allow_empty else ""))
    return value


def _cloud_token(name, value, what):
    if not _CLOUD_TOKEN_RE.fullmatch(value):
        raise ConfigError(name, value, f"{what} of letters, digits and . _ : - only, or empty for the cloud's default")
    return value


def _is_dns_name(value):
    return (0 < len(value) <= 253 and not value.endswith(".")
            and all(_DNS_LABEL_RE.fullmatch(label) for label in value.split(".")))


def _dns_name(name, value):
    if not _is_dns_name(value):
        raise ConfigError(name, value, "a DNS host name such as idr.openmicroscopy.org: dot-separated labels of "
                          "letters, digits and dashes, no label empty or starting or ending with a dash")
    return value


def _ssh_key(name, value, host_prefix=False):
    """An OpenSSH public key line '<type> <base64> [comment]'. Returns
    '<type> <base64>'. With host_prefix, a leading host field as ssh-keyscan
    and known_hosts print it ('host <type> <base64>') is accepted too."""
    allowed = ("one OpenSSH public key line '<type> <base64> [comment]'"
               + (" or an ssh-keyscan line '<host> <type> <base64>'" if host_prefix else "")
               + f", type one of {', '.join(SSH_KEY_TYPES)}, base64 that decodes to a key of that type")
    text = value.strip()
    fields = text.split()
    if (host_prefix and len(fields) >= 3 and fields[0] not in SSH_KEY_TYPES and fields[1] in SSH_KEY_TYPES
            and not fields[0].startswith(("@", "#"))):
        fields = fields[1:]
    if _CONTROL_RE.search(text.replace("\t", " ")) or len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
        raise ConfigError(name, value, allowed)
    kind, body = fields[0], fields[1]
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(name, value, allowed) from None
    # The decoded key starts with its own type as an SSH string (uint32 length, name).
    if blob[:4 + len(kind)] != len(kind).to_bytes(4, "big") + kind.encode() or len(blob) <= 4 + len(kind):
        raise ConfigError(name, value, allowed)
    return f"{kind} {body}"


def _bastion(name, value):
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _is_dns_name(value):
        raise ConfigError(name, value, "an IP address or DNS host name of the proxy")
    return value


def _role_map(name, items, allowed_roles, parse_value, value_text):
    out = {}
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(name, item, f"entries 'role={value_text}'")
        if role not in allowed_roles:
            raise ConfigError(name, item, f"a known role: one of {', '.join(allowed_roles)}")
        if role in out:
            raise ConfigError(name, item, f"each role at most once ({role} is repeated)")
        parsed = parse_value(value)
        if parsed is None:
            raise ConfigError(name, item, f"entries 'role={value_text}'")
        out[role] = parsed
    return out


def _path(name, value):
    if (not value.startswith("/") or any(c in value for c in " \n\t'\"$`;\\") or "/../" in value + "/"
            or _CONTROL_RE.search(value) or value.endswith("/")):
        raise ConfigError(name, value, "an absolute path of a file without spaces, quotes, '..', control or shell characters")
    return value


def _zones(name, items):
    zones = []
    for item in items:
        zone, sep, size = item.partition("=")
        if not sep or not _ZONE_RE.fullmatch(zone) or not _SIZE_RE.fullmatch(size):
            raise ConfigError(name, item, "entries 'name=size' with a lower-case name and a size such as 200m or 10g")
        if zone in {z.name for z in zones}:
            raise ConfigError(name, item, f"each zone at most once ({zone} is repeated)")
        zones.append(CacheZone(zone, size))
    if not zones:
        raise ConfigError(name, items, "at least one cache zone")
    if "default" not in {z.name for z in zones}:
        raise ConfigError(name, items, "a zone named 'default' among them (it caches what no other zone does)")
    return tuple(zones)


PROJECT_DIR = Path(__file__).resolve().parent.parent
# Playbooks this program must not run: the first formats and mounts volumes
# (the program does that, by volume ID); the second is not idempotent.
REFUSED_PLAYBOOKS = {"idr-00-preinstall.yml": "it formats and mounts volumes, which this program does itself",
                     "idr-03-postinstall.yml": "it is not idempotent and pulumi up re-runs the step"}
_PLAYBOOK_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml$")
_GIT_REF_RE = re.compile(r"^(?![-/.])(?!.*\.\.)[A-Za-z0-9_./-]{1,200}(?<![/.])$")
_GIT_URL_RE = re.compile(r"^(https://|ssh://|git@|file://|/)[\x21-\x7e]+$")
# Where galaxy roles land in a checkout (IDR/deployment's roles_path): not
# part of what the playbooks are.
_CHECKOUT_SKIP = {"vendor", "roles", ".git", "__pycache__"}


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def _tree_digest(root: Path) -> str:
    """sha256 of every file's relative path and content under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if _CHECKOUT_SKIP & set(rel.parts) or not path.is_file():
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _deployment(v: dict, secret: Callable[[str], Any]) -> Deployment:
    enabled = v["deploymentEnabled"]
    playbooks = tuple(v["deploymentPlaybooks"])
    if not playbooks:
        raise ConfigError("deploymentPlaybooks", [], "at least one playbook, e.g. [\"idr-01-install-idr.yml\"]")
    for name in playbooks:
        if not _PLAYBOOK_RE.fullmatch(name):
            raise ConfigError("deploymentPlaybooks", name, "file names of playbooks in the checkout's ansible/ "
                              "directory, ending in .yml or .yaml, without '/'")
        if name in REFUSED_PLAYBOOKS:
            raise ConfigError("deploymentPlaybooks", name, f"not {name}: {REFUSED_PLAYBOOKS[name]}")
    if len(set(playbooks)) != len(playbooks):
        raise ConfigError("deploymentPlaybooks", list(playbooks), "each playbook once")

    repository, ref, path_value = v["deploymentRepository"].strip(), v["deploymentRef"].strip(), v["deploymentPath"].strip()
    if not _GIT_URL_RE.fullmatch(repository):
        raise ConfigError("deploymentRepository", repository,
                          "a git URL (https://, ssh://, git@host:path, file:// or an absolute path)")
    if ref and not _GIT_REF_RE.fullmatch(ref):
        raise ConfigError("deploymentRef", ref, "a commit hash or tag name (letters, digits, . _ / -)")
    path, source = "", f"{repository}@{ref}"
    if path_value:
        checkout = _project_path(path_value)
        if not (checkout / "ansible").is_dir():
            raise ConfigError("deploymentPath", path_value, f"a checkout of IDR/deployment: a directory with an "
                              f"ansible/ directory in it ({checkout / 'ansible'} is not a directory)")
        for name in playbooks:
            if not (checkout / "ansible" / name).is_file():
                raise ConfigError("deploymentPlaybooks", name, f"playbooks that exist in {checkout / 'ansible'}")
        # As configured, not resolved: the step must look the same from every
        # operator's machine (its text is a trigger).
        path, source = path_value, _tree_digest(checkout / "ansible")
    elif enabled and not ref:
        raise ConfigError("deploymentRef", ref, "a commit of deploymentRepository to check out (a full hash pins "
                          "it), or set deploymentPath to a local checkout, or deploymentEnabled to false")

    vars_file, vars_digest = "", ""
    if v["deploymentVarsFile"].strip():
        candidate = _project_path(v["deploymentVarsFile"].strip())
        try:
            text = candidate.read_text()
            loaded = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError("deploymentVarsFile", v["deploymentVarsFile"],
                              f"a readable YAML file ({error.strerror if isinstance(error, OSError) else 'not text'})") from None
        except yaml.YAMLError:
            raise ConfigError("deploymentVarsFile", v["deploymentVarsFile"], "a YAML file of variables (this one does not parse)") from None
        if not isinstance(loaded, dict):
            raise ConfigError("deploymentVarsFile", v["deploymentVarsFile"], "a YAML mapping of variable names to values")
        vars_file, vars_digest = v["deploymentVarsFile"].strip(), hashlib.sha256(text.encode()).hexdigest()

    return Deployment(enabled, repository, ref, path, playbooks, vars_file, secret("deploymentSecretVars"),
                      _int_range("deploymentGeneration", v["deploymentGeneration"], 0, 10**9), source, vars_digest)


def _tls(v: dict, secret: Callable[[str], Any]) -> tuple[str, Any]:
    chain = v["tlsCertificateChain"].strip()
    if not chain:
        return "", None
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----", chain)
    if not blocks or "".join(blocks).count("BEGIN") != chain.count("-----BEGIN"):
        raise ConfigError("tlsCertificateChain", chain[:60] + ("..." if len(chain) > 60 else ""),
                          "PEM certificates only ('-----BEGIN CERTIFICATE-----' blocks, server certificate first); "
                          "the private key goes in the secret idr:tlsPrivateKey")
    key = secret("tlsPrivateKey")
    if key is None:
        raise ConfigError("tlsPrivateKey", None, "a secret, required with tlsCertificateChain: "
                          "`pulumi config set --secret idr:tlsPrivateKey < key.pem`")
    return chain + "\n", key


def build_settings(stack: str, raw: Callable[[str], Optional[str]], secret: Callable[[str], Any]) -> Settings:
    """Parse and validate config. `raw(name)` returns the plain string or None;
    `secret(name)` returns the secret value (an Output under Pulumi) or None."""
    v = {name: _parse(key, raw(name)) for name, key in KEYS.items() if not key.secret}

    environment = v["environment"] or stack
    if not _NAME_RE.fullmatch(environment):
        raise ConfigError("environment", environment,
                          "2 to 32 lower-case letters, digits and dashes, starting with a letter (it prefixes host names); empty means the stack name")

    if bool(v["existingNetwork"]) != bool(v["existingSubnet"]):
        raise ConfigError("existingSubnet" if v["existingNetwork"] else "existingNetwork",
                          v["existingSubnet"] or v["existingNetwork"],
                          "existingNetwork and existingSubnet set together, or neither")
    subnet = _private_subnet("subnetCidr", ipaddress.IPv4Network(_cidr("subnetCidr", v["subnetCidr"])))
    _cloud_name("externalNetwork", v["externalNetwork"], "the name of the external network")
    _cloud_name("existingNetwork", v["existingNetwork"], "a network name", allow_empty=True)
    _cloud_name("existingSubnet", v["existingSubnet"], "a subnet name", allow_empty=True)
    _cloud_name("image", v["image"], "a Glance image name")
    _cloud_token("availabilityZone", v["availabilityZone"], "an availability zone name")
    _cloud_token("volumeType", v["volumeType"], "a volume type name")
    if not _USER_RE.fullmatch(v["sshUser"]):
        raise ConfigError("sshUser", v["sshUser"],
                          "a POSIX login name such as rocky: 1 to 32 lower-case letters, digits, _ and -, "
                          "starting with a letter or _")
    dns = tuple(_ipv4("dnsNameservers", d, allow_empty=False) for d in v["dnsNameservers"])

    count = _int_range("omeroreadonlyCount", v["omeroreadonlyCount"], 1, 120)
    if subnet.num_addresses < READONLY_BASE + 3:
        raise ConfigError("subnetCidr", str(subnet),
                          f"a /25 or larger network: read-only hosts take fixed addresses from .{READONLY_BASE + 1} up")
    if READONLY_BASE + count >= subnet.num_addresses - 1:
        raise ConfigError("omeroreadonlyCount", count,
                          f"at most {subnet.num_addresses - READONLY_BASE - 2} in subnet {subnet} (read-only hosts use .{READONLY_BASE + 1} upwards)")

    images = _role_map("imageOverrides", v["imageOverrides"], ROLES, lambda s: s.strip() or None, "image")
    for role in ROLES:
        _cloud_name(f"{role}Flavor", v[f"{role}Flavor"], "a flavor name")

    floating_ip = _ipv4("floatingIp", v["floatingIp"].strip())
    cidrs = tuple(_cidr("sshAllowedCidrs", c) for c in v["sshAllowedCidrs"])
    if not cidrs:
        raise ConfigError("sshAllowedCidrs", [], "at least one CIDR (SSH to the bastion is how the program configures hosts)")

    if not v["sshPublicKey"].strip():
        raise ConfigError("sshPublicKey", v["sshPublicKey"], "an OpenSSH public key line '<type> <base64> [comment]' "
                          "(required: the key installed for sshUser on every host)")
    _ssh_key("sshPublicKey", v["sshPublicKey"])
    # pulumi-command parses host_key with Go's ssh.ParseAuthorizedKey; hand it
    # exactly '<type> <base64>' whatever form (keyscan line, comment) was given.
    bastion_host_key = v["sshBastionHostKey"].strip()
    if bastion_host_key:
        bastion_host_key = _ssh_key("sshBastionHostKey", v["sshBastionHostKey"], host_prefix=True)
    private_key = secret("sshPrivateKey")
    if private_key is None:
        raise ConfigError("sshPrivateKey", None,
                          "a secret: set it with `pulumi config set --secret idr:sshPrivateKey < key-file`")
    bastion = v["sshBastion"].strip() or floating_ip
    if not bastion:
        raise ConfigError("sshBastion", v["sshBastion"], "an address of the proxy for SSH; required when floatingIp is empty")
    bastion = _bastion("sshBastion", bastion)

    clone_from = v["cloneFromStack"].strip()
    if clone_from and not _STACK_RE.fullmatch(clone_from):
        raise ConfigError("cloneFromStack", clone_from, "a stack name such as 'prod' or 'organization/idr/prod'")
    if clone_from and clone_from.split("/")[-1] == stack:
        raise ConfigError("cloneFromStack", clone_from, "another stack than this one")

    volumes = {}
    for role, mount in DATA_VOLUME_MOUNTS.items():
        size = _int_range(f"{role}VolumeSize", v[f"{role}VolumeSize"], 1, 65536, " (GB)")
        from_volume = v[f"{role}VolumeFromVolume"].strip()
        from_snapshot = v[f"{role}VolumeFromSnapshot"].strip()
        source_size = _int_range(f"{role}VolumeSourceSize", v[f"{role}VolumeSourceSize"], 0, 65536, " (GB, 0 when unknown)")
        if from_volume and from_snapshot:
            raise ConfigError(f"{role}VolumeFromSnapshot", from_snapshot,
                              f"one source only: {role}VolumeFromVolume is set too ({from_volume}); clear one of them")
        for k, ident in ((f"{role}VolumeFromVolume", from_volume), (f"{role}VolumeFromSnapshot", from_snapshot)):
            if ident and not re.fullmatch(r"^[0-9a-fA-F-]{8,64}$", ident):
                raise ConfigError(k, ident, "an OpenStack ID (hex digits and dashes)")
        if source_size and size < source_size:
            raise ConfigError(f"{role}VolumeSize", size,
                              f"at least the size of its source ({source_size} GB): a volume cannot be smaller than what it is cloned from")
        volumes[role] = VolumeSpec(role, mount, size, from_volume, from_snapshot, source_size,
                                   from_stack=bool(clone_from) and not (from_volume or from_snapshot))

    zones = _zones("nginxCacheZones", v["nginxCacheZones"])
    cache_bytes = sum(z.bytes for z in zones)
    volume_bytes = volumes["proxy"].size * 1024**3
    if cache_bytes > volume_bytes * 0.9:
        raise ConfigError("nginxCacheZones", v["nginxCacheZones"],
                          f"zones totalling at most 90% of proxyVolumeSize ({volumes['proxy'].size} GB); these total "
                          f"{cache_bytes / 1024**3:.1f} GB")
    for name in ("nginxCacheInactive", "nginxCacheValid"):
        if not _DURATION_RE.fullmatch(v[name]):
            raise ConfigError(name, v[name], "an nginx time such as 1d, 12h or 180d")
    public_timeout = _int_range("nginxPublicReadTimeout", v["nginxPublicReadTimeout"], 1, 3600, " seconds")
    long_timeout = _int_range("nginxLongReadTimeout", v["nginxLongReadTimeout"], 1, 86400, " seconds")
    if long_timeout < public_timeout:
        raise ConfigError("nginxLongReadTimeout", long_timeout,
                          f"at least nginxPublicReadTimeout ({public_timeout}): 9000 and 8009 exist for slow requests")
    _dns_name("serverName", v["serverName"])

    tls_chain, tls_key = _tls(v, secret)
    session_cookie = v["sessionCookieName"].strip() or f"sessionid_{environment}"
    if not re.fullmatch(r"^[A-Za-z0-9_.-]{1,64}$", session_cookie):
        raise ConfigError("sessionCookieName", v["sessionCookieName"],
                          "a cookie name of letters, digits, _ . - (at most 64), or empty for sessionid_<environment>")

    slots = _role_map("bfcacheSlots", v["bfcacheSlots"], OMERO_ROLES,
                      lambda s: int(s) if s.isdigit() and 1 <= int(s) <= 64 else None, "N', N from 1 to 64")
    for role in OMERO_ROLES:
        slots.setdefault(role, 1)

    hosts = []
    for role in ROLES:
        image = images.get(role, v["image"])
        flavor = v[f"{role}Flavor"]
        if role == "omeroreadonly":
            for n in range(1, count + 1):
                hosts.append(Host(f"{environment}-{role}-{n}", role, f"{role}-{n}",
                                  str(subnet.network_address + READONLY_BASE + n), flavor, image, n))
        else:
            hosts.append(Host(f"{environment}-{role}", role, role,
                              str(subnet.network_address + FIXED_HOST_OFFSETS[role]), flavor, image,
                              volume=volumes.get(role)))

    return Settings(
        stack=stack,
        environment=environment,
        external_network=v["externalNetwork"],
        existing_network=v["existingNetwork"],
        existing_subnet=v["existingSubnet"],
        subnet_cidr=str(subnet),
        dns_nameservers=dns,
        hosts=tuple(hosts),
        availability_zone=v["availabilityZone"],
        ssh_user=v["sshUser"],
        ssh_public_key=v["sshPublicKey"].strip(),
        ssh_private_key=private_key,
        ssh_bastion=bastion,
        ssh_bastion_host_key=bastion_host_key,
        ssh_allowed_cidrs=cidrs,
        rsync_enabled=v["rsyncEnabled"],
        floating_ip=floating_ip,
        volume_type=v["volumeType"],
        clone_from_stack=clone_from,
        server_name=v["serverName"],
        nginx_cache_zones=zones,
        nginx_cache_inactive=v["nginxCacheInactive"],
        nginx_cache_valid=v["nginxCacheValid"],
        nginx_public_read_timeout=public_timeout,
        nginx_long_read_timeout=long_timeout,
        tls_certificate=_path("tlsCertificate", v["tlsCertificate"]),
        tls_certificate_key=_path("tlsCertificateKey", v["tlsCertificateKey"]),
        tls_certificate_chain=tls_chain,
        tls_private_key=tls_key,
        https_redirect=v["httpsRedirect"],
        omero_web_port=_int_range("omeroWebPort", v["omeroWebPort"], 1, 65535),
        session_cookie_name=session_cookie,
        maintenance=v["maintenance"],
        jupyter_enabled=v["jupyterEnabled"],
        cache_purge_generation=_int_range("cachePurgeGeneration", v["cachePurgeGeneration"], 0, 10**9),
        bfcache_generation=_int_range("bfcacheGeneration", v["bfcacheGeneration"], 0, 10**9),
        bfcache_slots=slots,
        omero_bin=_path("omeroBin", v["omeroBin"]),
        omero_cli_render_version=v["omeroCliRenderVersion"] if re.fullmatch(r"^[0-9]+(\.[0-9]+){1,3}$", v["omeroCliRenderVersion"])
        else _raise(ConfigError("omeroCliRenderVersion", v["omeroCliRenderVersion"], "a release number such as 0.8.1")),
        database_name=v["databaseName"] if re.fullmatch(r"^[a-z_][a-z0-9_]{0,62}$", v["databaseName"])
        else _raise(ConfigError("databaseName", v["databaseName"], "a PostgreSQL identifier in lower case")),
        statement_timeout_ms=_int_range("statementTimeoutMs", v["statementTimeoutMs"], 1000, 3_600_000, " ms"),
        health_check_path=v["healthCheckPath"] if _URL_PATH_RE.fullmatch(v["healthCheckPath"])
        else _raise(ConfigError("healthCheckPath", v["healthCheckPath"],
                                "a URL path starting with / of printable ASCII, without spaces or control characters "
                                "(percent-encode them)")),
        deployment=_deployment(v, secret),
    )


def _raise(error: Exception):
    raise error


def load() -> Settings:
    """Read the current stack's `idr:` config through Pulumi."""
    config = pulumi.Config(NAMESPACE)
    return build_settings(pulumi.get_stack(), config.get, config.get_secret)
