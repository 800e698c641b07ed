"""The only module that reads Pulumi config.

`Settings` declares every `idr:` key once, as a field named in snake_case:
its type (what is allowed), default and description. scripts/gen-pulumi-yaml
writes Pulumi.yaml's config block and the README's table from `KEYS`, derived
from those fields (a test fails when they differ). pydantic validates the
fields in declaration order, then `Settings.across` checks keys against each
other. A bad value raises `ConfigError`, a `pulumi.RunError`, so `pulumi up`
prints one line naming the key, the value and what is allowed, without a
Python traceback, before any resource is declared.
"""
import hashlib
import re
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, get_type_hints

import pulumi
import yaml
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, SkipValidation, TypeAdapter, ValidationError,
                      model_validator, with_config)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from .validators import (CONTROL, SSH_KEY_TYPES, NotAllowed, Stripped, check, first_error, from_cli,  # noqa: F401
                         ip_or_dns_name, ipv4, ipv4_network, is_dns_name, is_file_path, kind, matching, name_map,
                         required, ssh_public_key, whole)

NAMESPACE = "idr"
PROJECT_DIR = Path(__file__).resolve().parent.parent
# Roles as the operators' page names them; order is the order hosts are listed.
ROLES = ("proxy", "omeroreadwrite", "database", "omeroreadonly", "dockermanager")
OMERO_ROLES = ("omeroreadwrite", "omeroreadonly")
# Data volumes: which host holds which, and where it is mounted.
DATA_VOLUME_MOUNTS = {"omeroreadwrite": "/data", "database": "/var/lib/pgsql", "proxy": "/var/cache/nginx"}
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
# Tenant subnets: RFC 1918 only (no link-local, loopback, multicast or public space).
PRIVATE_NETWORKS = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# Playbooks this program must not run: the first formats and mounts volumes
# (the program does that, by volume ID); the second is not idempotent.
REFUSED_PLAYBOOKS = {"idr-00-preinstall.yml": "it formats and mounts volumes, which this program does itself",
                     "idr-03-postinstall.yml": "it is not idempotent and pulumi up re-runs the step"}
# Where galaxy roles land in a checkout (IDR/deployment's roles_path): not part of what the playbooks are.
_CHECKOUT_SKIP = {"vendor", "roles", ".git", "__pycache__"}
_SIZE_RE = re.compile(r"^([1-9][0-9]*)([kmg])$")


class ConfigError(pulumi.RunError):
    """A config value is not allowed. Its message is the whole explanation."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key if ":" in key else f"{NAMESPACE}:{key}"
        self.value = value
        self.allowed = allowed
        super().__init__(f"config {self.key} = {value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class CacheZone:
    name: str
    size: str

    @property
    def bytes(self) -> int:
        number, unit = _SIZE_RE.match(self.size).groups()
        return int(number) * {"k": 1024, "m": 1024**2, "g": 1024**3}[unit]


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


# --------------------------------------------------------------------------
# What one key allows. A validator raises NotAllowed(allowed, value).

def cloud_name(what: str, allow_empty: bool = False) -> Any:
    """A name OpenStack looks up (network, image, flavor): not blank, no
    surrounding spaces or control characters (an empty name matches anything)."""
    return Annotated[str, check(lambda v: (allow_empty and v == "") or (v.strip() == v != "" and not CONTROL.search(v)),
                                f"{what}: not empty, without leading or trailing spaces or control characters"
                                + (", or empty" if allow_empty else ""))]


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
                         "private key goes in the secret idr:tlsPrivateKey", chain[:60] + ("..." if len(chain) > 60 else ""))
    return chain and chain + "\n"


def _cookie(value: str, info) -> str:
    name = value.strip() or f"sessionid_{info.data.get('environment')}"
    if not re.fullmatch(r"^[A-Za-z0-9_.-]{1,64}$", name):
        raise NotAllowed("a cookie name of letters, digits, _ . - (at most 64), or empty for sessionid_<environment>", value)
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


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def _checkout(value: str) -> str:
    if value and not (_project_path(value) / "ansible").is_dir():
        raise NotAllowed(f"a checkout of IDR/deployment: a directory with an ansible/ directory in it "
                         f"({_project_path(value) / 'ansible'} is not a directory)", value)
    return value


def _vars_file(value: str) -> str:
    if not value.strip():
        return ""
    try:
        loaded = yaml.safe_load(_project_path(value.strip()).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise NotAllowed(f"a readable YAML file ({error.strerror if isinstance(error, OSError) else 'not text'})",
                         value) from None
    except yaml.YAMLError:
        raise NotAllowed("a YAML file of variables (this one does not parse)", value) from None
    if not isinstance(loaded, dict):
        raise NotAllowed("a YAML mapping of variable names to values", value)
    return value.strip()


Environment = Annotated[matching(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$", "2 to 32 lower-case letters, digits and dashes, starting "
                                 "with a letter (it prefixes host names); empty means the stack name"),
                        BeforeValidator(lambda v, info: v or info.context["stack"])]
Subnet = Annotated[str, AfterValidator(ipv4_network), AfterValidator(_private), check(
    lambda v: IPv4Network(v).num_addresses >= READONLY_BASE + 3,
    f"a /25 or larger network: read-only hosts take fixed addresses from .{READONLY_BASE + 1} up")]
ImageMap = Annotated[dict[str, str], name_map(ROLES, lambda s: s.strip() or None, "image")]
Flavor = cloud_name("a flavor name")
CloudToken = r"^[A-Za-z0-9._:-]*$"  # availability zones, volume types
User = matching(r"^[a-z_][a-z0-9_-]{0,31}$", "a POSIX login name such as rocky: 1 to 32 lower-case letters, digits, _ and -, "
                "starting with a letter or _")
# Empty: floatingIp (build_settings), and kept as given to name it if that is empty too.
Bastion = Annotated[str, AfterValidator(
    lambda v: ip_or_dns_name(v.strip(), "an IP address or DNS host name of the proxy") if v.strip() else v)]
# pulumi-command parses host_key with Go's ssh.ParseAuthorizedKey: hand it
# exactly '<type> <base64>' whatever form (keyscan line, comment) was given.
HostKey = Annotated[str, AfterValidator(lambda v: ssh_public_key(v, host_prefix=True) if v.strip() else "")]
Cidrs = Annotated[tuple[Annotated[str, AfterValidator(ipv4_network)], ...],
                  required("at least one CIDR (SSH to the bastion is how the program configures hosts)")]
OpenStackId = Annotated[matching(r"^$|^[0-9a-fA-F-]{8,64}$", "an OpenStack ID (hex digits and dashes)"), Stripped]
Size, SourceSize, Generation = whole(1, 65536, " (GB)"), whole(0, 65536, " (GB, 0 when unknown)"), whole(0, 10**9)
StackName = Annotated[matching(r"^$|^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$", "a stack name such as 'prod' or "
                               "'organization/idr/prod'"), Stripped, AfterValidator(_other_stack)]
DnsName = Annotated[str, check(is_dns_name, "a DNS host name such as idr.openmicroscopy.org: dot-separated labels of "
                               "letters, digits and dashes, no label empty or starting or ending with a dash")]
Duration = matching(r"^[1-9][0-9]*(ms|s|m|h|d|w|M|y)$", "an nginx time such as 1d, 12h or 180d")
FilePath = Annotated[str, check(is_file_path, "an absolute path of a file without spaces, quotes, '..', control or shell "
                                "characters")]
Slots = Annotated[dict[str, int], name_map(OMERO_ROLES, lambda s: int(s) if s.isdecimal() and 1 <= int(s) <= 64 else None,
                                           "N', N from 1 to 64"), AfterValidator(lambda m: m | {r: 1 for r in OMERO_ROLES if r not in m})]
GitUrl = Annotated[matching(r"^(https://|ssh://|git@|file://|/)[\x21-\x7e]+$", "a git URL (https://, ssh://, git@host:path, "
                            "file:// or an absolute path)"), Stripped]
GitRef = Annotated[str, Stripped, check(lambda v: not v or re.fullmatch(r"^(?![-/.])(?!.*\.\.)[A-Za-z0-9_./-]{1,200}(?<![/.])$", v),
                                        "a commit hash or tag name (letters, digits, . _ / -)")]
UrlPath = matching(r"^/[\x21-\x7e]*$", "a URL path starting with / of printable ASCII, without spaces or control characters "
                   "(percent-encode them)")
SECRET, REQUIRED = {"secret": True}, {"required": True}


# --------------------------------------------------------------------------
# The model: every idr: key in Pulumi.yaml's order, then what is derived.

@with_config(ConfigDict(alias_generator=to_camel, validate_default=True))
@dataclass(frozen=True)
class Settings:
    """Every idr: key as a field: `<snake_case of the key>: <what is allowed> =
    Field(<default>, description=...)`, in Pulumi.yaml's order; a field's
    value is the key's, validated (some normalised, e.g. stripped)."""
    stack: str  # the Pulumi stack, not a key
    # Environment and network
    environment: Environment = Field("", description="Environment name used in host names (<env>-<role>); empty means the stack name.")
    external_network: cloud_name("the name of the external network") = Field("public", description="Name of the external (provider) network the router connects to and floating IPs come from.")
    existing_network: cloud_name("a network name", True) = Field("", description="Use this existing network instead of creating one (give existingSubnet too); empty creates network, subnet and router.")
    existing_subnet: cloud_name("a subnet name", True) = Field("", description="Subnet of existingNetwork; its CIDR must equal subnetCidr.")
    subnet_cidr: Subnet = Field("192.168.1.0/24", description="IPv4 CIDR of the environment's subnet; hosts get fixed addresses in it.")
    dns_nameservers: tuple[Annotated[str, AfterValidator(ipv4)], ...] = Field([], description="DNS servers handed out on the subnet; empty uses the cloud's default.")
    # Hosts
    image: cloud_name("a Glance image name") = Field("Rocky-9-GenericCloud", description="Glance image name for every host (Rocky Linux 9).")
    image_overrides: ImageMap = Field([], description="Per-role image as 'role=image', e.g. 'database=Rocky-9.4'.")
    proxy_flavor: Flavor = Field("m1.large", description="Flavor of <env>-proxy.")
    omeroreadwrite_flavor: Flavor = Field("m1.xlarge", description="Flavor of <env>-omeroreadwrite.")
    database_flavor: Flavor = Field("m1.large", description="Flavor of <env>-database.")
    omeroreadonly_flavor: Flavor = Field("m1.large", description="Flavor of each <env>-omeroreadonly-n.")
    dockermanager_flavor: Flavor = Field("m1.large", description="Flavor of <env>-dockermanager.")
    omeroreadonly_count: whole(1, 120) = Field(4, description="Number of read-only OMERO servers (1 to 120, and they must fit the subnet).")
    availability_zone: matching(CloudToken, "an availability zone name of letters, digits and . _ : - only, or empty for the cloud's default") = Field(
        "", description="Availability zone of servers and volumes; empty lets the cloud choose.")
    # SSH and access
    ssh_user: User = Field("rocky", description="Login user of the image, used by remote commands.")
    ssh_public_key: Annotated[str, AfterValidator(_public_key)] = Field("", description="OpenSSH public key installed for sshUser on every host (required).", json_schema_extra=REQUIRED)
    ssh_private_key: Any = Field(None, description="Private key matching sshPublicKey, used by remote commands (secret, required).", json_schema_extra=SECRET | REQUIRED)
    ssh_bastion: Bastion = Field("", description="Address remote commands use to reach the proxy on port 22 (an IP or DNS name); empty means floatingIp.")
    ssh_bastion_host_key: HostKey = Field("", description="The proxy's SSH host public key; when set, the bastion connection is refused if it differs.")
    ssh_allowed_cidrs: Cidrs = Field(["0.0.0.0/0"], description="IPv4 CIDRs allowed to reach SSH (22) on the proxy.")
    rsync_enabled: bool = Field(False, description="Open rsync (873) on the proxy and serve the public data read-only. Off: production closed it as a security risk.")
    floating_ip: Annotated[str, AfterValidator(lambda v: ipv4(v.strip(), allow_empty=True))] = Field("", description="Floating IP held by the proxy's port; empty holds none. Moving the public IP is a change of this key.")
    # Data volumes
    omeroreadwrite_volume_size: Size = Field(1500, description="Size in GB of the omeroreadwrite data volume (/data). Never shrinks.")
    omeroreadwrite_volume_from_volume: OpenStackId = Field("", description="Clone the omeroreadwrite data volume from this volume ID.")
    omeroreadwrite_volume_from_snapshot: OpenStackId = Field("", description="Create the omeroreadwrite data volume from this snapshot ID (restore).")
    omeroreadwrite_volume_source_size: SourceSize = Field(0, description="Size in GB of the omeroreadwrite clone source when known (0: unknown); the new volume may not be smaller.")
    database_volume_size: Size = Field(800, description="Size in GB of the database data volume (/var/lib/pgsql). Never shrinks.")
    database_volume_from_volume: OpenStackId = Field("", description="Clone the database data volume from this volume ID.")
    database_volume_from_snapshot: OpenStackId = Field("", description="Create the database data volume from this snapshot ID (restore).")
    database_volume_source_size: SourceSize = Field(0, description="Size in GB of the database clone source when known (0: unknown); the new volume may not be smaller.")
    proxy_volume_size: Size = Field(100, description="Size in GB of the proxy data volume (/var/cache/nginx). Never shrinks.")
    proxy_volume_from_volume: OpenStackId = Field("", description="Clone the proxy data volume from this volume ID.")
    proxy_volume_from_snapshot: OpenStackId = Field("", description="Create the proxy data volume from this snapshot ID (restore).")
    proxy_volume_source_size: SourceSize = Field(0, description="Size in GB of the proxy clone source when known (0: unknown); the new volume may not be smaller.")
    volume_type: matching(CloudToken, "a volume type name of letters, digits and . _ : - only, or empty for the cloud's default") = Field(
        "", description="Cinder volume type of the data volumes; empty uses the cloud's default.")
    clone_from_stack: StackName = Field("", description="Stack whose dataVolumes output is cloned for every data volume without its own source, e.g. 'organization/idr/prod'.")
    # Proxy / nginx
    server_name: DnsName = Field("idr.openmicroscopy.org", description="Public host name served by nginx.")
    nginx_cache_zones: Annotated[tuple[CacheZone, ...], BeforeValidator(_zones)] = Field(
        ["thumbnails=10g", "render=40g", "metadata=25g", "api=10g", "static=200m", "default=1g"],
        description="nginx cache zones as 'name=size' (k, m or g); their total must fit proxyVolumeSize.")
    nginx_cache_inactive: Duration = Field("180d", description="How long an unused cache entry is kept.")
    nginx_cache_valid: Duration = Field("1d", description="How long a cached 200 answer is fresh.")
    nginx_public_read_timeout: whole(1, 3600, " seconds") = Field(60, description="Read timeout in seconds of the public servers towards the read-only backends.")
    nginx_long_read_timeout: whole(1, 86400, " seconds") = Field(900, description="Read timeout in seconds of the cache-buster (9000) and long-request (8009) servers towards omeroreadwrite.")
    tls_certificate: FilePath = Field("/etc/pki/tls/certs/idr.crt", description="Path on the proxy of the TLS certificate chain.")
    tls_certificate_key: FilePath = Field("/etc/pki/tls/private/idr.key", description="Path on the proxy of the TLS private key.")
    tls_certificate_chain: Annotated[str, AfterValidator(_chain)] = Field("", description="PEM certificate chain (server certificate first) written to tlsCertificate; empty: a self-signed placeholder, and the stack output tlsSelfSigned says so.")
    tls_private_key: Any = Field(None, description="PEM private key of tlsCertificateChain, written to tlsCertificateKey with mode 0600 (secret; required with tlsCertificateChain).", json_schema_extra=SECRET)
    https_redirect: bool = Field(False, description="Redirect plain HTTP on port 80 to HTTPS (never on 9000 and 8009).")
    omero_web_port: whole(1, 65535) = Field(80, description="Port of OMERO.web on the OMERO hosts (their own nginx, as IDR's deployment playbooks install it).")
    session_cookie_name: Annotated[str, AfterValidator(_cookie)] = Field("", description="OMERO.web's session cookie; a request carrying it is never cached. Empty means sessionid_<environment>, as IDR's playbooks set it.")
    maintenance: bool = Field(False, description="Serve 503 and a maintenance page on the public ports.")
    jupyter_enabled: bool = Field(False, description="Route /jupyter on the proxy to JupyterHub on the dockermanager.")
    cache_purge_generation: Generation = Field(0, description="Bump to empty /var/cache/nginx on the proxy once and reload nginx.")
    # Bio-Formats cache regeneration
    bfcache_generation: Generation = Field(0, description="Bump to start one Bio-Formats cache regeneration run; 0 never runs.")
    bfcache_slots: Slots = Field(["omeroreadwrite=10", "omeroreadonly=1"], description="Parallel jobs per node as 'role=N' for omeroreadwrite and omeroreadonly.")
    omero_bin: FilePath = Field("/opt/omero/server/OMERO.server/bin/omero", description="Path of the omero executable on the OMERO servers.")
    omero_cli_render_version: matching(r"^[0-9]+(\.[0-9]+){1,3}$", "a release number such as 0.8.1") = Field(
        "0.8.1", description="Version of omero-cli-render installed on every OMERO node for cache regeneration (production's).")
    # Database
    database_name: matching(r"^[a-z_][a-z0-9_]{0,62}$", "a PostgreSQL identifier in lower case") = Field("idr", description="OMERO database name.")
    statement_timeout_ms: whole(1000, 3_600_000, " ms") = Field(60000, description="statement_timeout of the omeroreadonly database role, in milliseconds.")
    # Deployment playbooks (IDR/deployment), run on the operator's machine
    deployment_enabled: bool = Field(True, description="Run IDR's deployment playbooks (PostgreSQL, OMERO.server, OMERO.web) as a step of pulumi up; off: install them by other means.")
    deployment_repository: GitUrl = Field("https://github.com/IDR/deployment.git", description="Git URL of IDR/deployment, checked out at deploymentRef by the step (unless deploymentPath is set).")
    deployment_ref: GitRef = Field("", description="Commit (or tag) of deploymentRepository the step checks out; a full commit hash pins it.")
    deployment_path: Annotated[str, Stripped, AfterValidator(_checkout)] = Field("", description="A local checkout of IDR/deployment (absolute or relative to the project); used instead of deploymentRepository and deploymentRef.")
    deployment_playbooks: Annotated[tuple[str, ...], BeforeValidator(_playbooks), required('at least one playbook, e.g. ["idr-01-install-idr.yml"]')] = Field(
        ["idr-01-install-idr.yml"], description="Playbooks run in order from the checkout's ansible/ directory.")
    deployment_vars_file: Annotated[str, AfterValidator(_vars_file)] = Field("", description="YAML file of extra vars for the playbooks (absolute or relative to the project); empty: none.")
    deployment_secret_vars: Any = Field(None, description="YAML mapping of secret vars for the playbooks (e.g. idr_secret_postgresql_password); written to a 0600 temporary file, never printed (secret).", json_schema_extra=SECRET)
    deployment_generation: Generation = Field(0, description="Bump to run the deployment playbooks again (and the steps that follow them).")
    # Releases
    health_check_path: UrlPath = Field("/webclient/?experimenter=-1", description="Path that must answer HTTP 200 on an environment's floating IP before it takes the public IP.")
    # Derived from the keys above by build_settings.
    hosts: SkipValidation[tuple[Host, ...]] = ()
    deployment: SkipValidation[Deployment] = None

    @model_validator(mode="after")
    def across(self) -> "Settings":
        """Checks of keys against each other, once each is valid."""
        if bool(self.existing_network) != bool(self.existing_subnet):
            raise ConfigError("existingSubnet" if self.existing_network else "existingNetwork",
                              self.existing_subnet or self.existing_network, "existingNetwork and existingSubnet set together, or neither")
        subnet = IPv4Network(self.subnet_cidr)
        if READONLY_BASE + self.omeroreadonly_count >= subnet.num_addresses - 1:
            raise ConfigError("omeroreadonlyCount", self.omeroreadonly_count, f"at most {subnet.num_addresses - READONLY_BASE - 2} "
                              f"in subnet {subnet} (read-only hosts use .{READONLY_BASE + 1} upwards)")
        if self.ssh_private_key is None:
            raise ConfigError("sshPrivateKey", None, "a secret: set it with `pulumi config set --secret idr:sshPrivateKey < key-file`")
        if not (self.ssh_bastion.strip() or self.floating_ip):
            raise ConfigError("sshBastion", self.ssh_bastion, "an address of the proxy for SSH; required when floatingIp is empty")
        for role in DATA_VOLUME_MOUNTS:
            size, from_volume, from_snapshot, source = (getattr(self, f"{role}_volume_{k}") for k in _VOLUME_KEYS)
            if from_volume and from_snapshot:
                raise ConfigError(f"{role}VolumeFromSnapshot", from_snapshot,
                                  f"one source only: {role}VolumeFromVolume is set too ({from_volume}); clear one of them")
            if source and size < source:
                raise ConfigError(f"{role}VolumeSize", size, f"at least the size of its source ({source} GB): a volume cannot "
                                  "be smaller than what it is cloned from")
        cache_bytes = sum(z.bytes for z in self.nginx_cache_zones)
        if cache_bytes > self.proxy_volume_size * 1024**3 * 0.9:
            raise ConfigError("nginxCacheZones", [f"{z.name}={z.size}" for z in self.nginx_cache_zones],
                              f"zones totalling at most 90% of proxyVolumeSize ({self.proxy_volume_size} GB); these total "
                              f"{cache_bytes / 1024**3:.1f} GB")
        if self.nginx_long_read_timeout < self.nginx_public_read_timeout:
            raise ConfigError("nginxLongReadTimeout", self.nginx_long_read_timeout, "at least nginxPublicReadTimeout "
                              f"({self.nginx_public_read_timeout}): 9000 and 8009 exist for slow requests")
        if self.tls_certificate_chain and self.tls_private_key is None:
            raise ConfigError("tlsPrivateKey", None, "a secret, required with tlsCertificateChain: "
                              "`pulumi config set --secret idr:tlsPrivateKey < key.pem`")
        if self.deployment_path:
            ansible = _project_path(self.deployment_path) / "ansible"
            for name in self.deployment_playbooks:
                if not (ansible / name).is_file():
                    raise ConfigError("deploymentPlaybooks", name, f"playbooks that exist in {ansible}")
        elif self.deployment_enabled and not self.deployment_ref:
            raise ConfigError("deploymentRef", "", "a commit of deploymentRepository to check out (a full hash pins it), "
                              "or set deploymentPath to a local checkout, or deploymentEnabled to false")
        return self

    def hosts_of(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == role)

    def host(self, role: str) -> Host:
        (only,) = self.hosts_of(role)
        return only

    @property
    def volumes(self) -> tuple[VolumeSpec, ...]:
        return tuple(h.volume for h in self.hosts if h.volume)


_VOLUME_KEYS = ("size", "from_volume", "from_snapshot", "source_size")


def _hosts(s: Settings) -> tuple[Host, ...]:
    subnet, hosts = IPv4Network(s.subnet_cidr), []
    for role in ROLES:
        image, flavor = s.image_overrides.get(role, s.image), getattr(s, f"{role}_flavor")
        if role == "omeroreadonly":
            hosts += [Host(f"{s.environment}-{role}-{n}", role, f"{role}-{n}", str(subnet.network_address + READONLY_BASE + n),
                           flavor, image, n) for n in range(1, s.omeroreadonly_count + 1)]
            continue
        volume = None
        if role in DATA_VOLUME_MOUNTS:
            size, from_volume, from_snapshot, source = (getattr(s, f"{role}_volume_{k}") for k in _VOLUME_KEYS)
            volume = VolumeSpec(role, DATA_VOLUME_MOUNTS[role], size, from_volume, from_snapshot, source,
                                from_stack=bool(s.clone_from_stack) and not (from_volume or from_snapshot))
        hosts.append(Host(f"{s.environment}-{role}", role, role, str(subnet.network_address + FIXED_HOST_OFFSETS[role]),
                          flavor, image, volume=volume))
    return tuple(hosts)


def _tree_digest(root: Path) -> str:
    """sha256 of every file's relative path and content under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not _CHECKOUT_SKIP & set(rel.parts) and path.is_file():
            digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _deployment(s: Settings) -> Deployment:
    # The path as configured, not resolved: the step must look the same from
    # every operator's machine (its text is a trigger).
    source = (_tree_digest(_project_path(s.deployment_path) / "ansible") if s.deployment_path
              else f"{s.deployment_repository}@{s.deployment_ref}")
    vars_digest = (hashlib.sha256(_project_path(s.deployment_vars_file).read_text().encode()).hexdigest()
                   if s.deployment_vars_file else "")
    return Deployment(s.deployment_enabled, s.deployment_repository, s.deployment_ref, s.deployment_path, s.deployment_playbooks,
                      s.deployment_vars_file, s.deployment_secret_vars, s.deployment_generation, source, vars_digest)


# --------------------------------------------------------------------------
# The keys as Pulumi.yaml and the README list them, and reading them.

@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # string | integer | boolean | array
    default: Any
    description: str
    secret: bool = False
    required: bool = False


_HINTS = get_type_hints(Settings, include_extras=True)
FIELDS: dict[str, FieldInfo] = {to_camel(f.name): FieldInfo.from_annotated_attribute(_HINTS[f.name], f.default)
                                for f in fields(Settings) if isinstance(f.default, FieldInfo)}
KEYS: dict[str, Key] = {name: Key(name, kind(f.annotation), f.default, f.description, **(f.json_schema_extra or {}))
                        for name, f in FIELDS.items()}
_VALIDATOR = TypeAdapter(Settings)


def build_settings(stack: str, raw: Callable[[str], Optional[str]], secret: Callable[[str], Any]) -> Settings:
    """Parse and validate config. `raw(name)` returns the plain string or None;
    `secret(name)` returns the secret value (an Output under Pulumi) or None."""
    given = {"stack": stack}
    for name, key in KEYS.items():
        value = secret(name) if key.secret else raw(name)
        try:
            if value is not None:
                given[name] = from_cli(key.kind, value)
        except NotAllowed as no:
            raise ConfigError(name, no.value, no.allowed) from None
    try:
        s = _VALIDATOR.validate_python(given, context={"stack": stack})
    except ValidationError as error:
        raise ConfigError(*first_error(error, FIELDS)) from None
    return replace(s, ssh_bastion=s.ssh_bastion.strip() or s.floating_ip, hosts=_hosts(s), deployment=_deployment(s),
                   tls_private_key=s.tls_private_key if s.tls_certificate_chain else None)


def load() -> Settings:
    """Read the current stack's `idr:` config through Pulumi."""
    config = pulumi.Config(NAMESPACE)
    return build_settings(pulumi.get_stack(), config.get, config.get_secret)
