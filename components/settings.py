"""The only module that reads Pulumi config.

`Settings` declares every `idr:` key once, as a field named in snake_case:
its type (what is allowed: components/validators.py), default and
description. scripts/gen-pulumi-yaml writes Pulumi.yaml's config block and
the README's table from `KEYS`, derived from those fields (a test fails when
they differ). pydantic validates the fields in declaration order, then
`Settings.across` checks keys against each other. A bad value raises
`ConfigError`, a `pulumi.RunError`, so `pulumi up` prints one line naming
the key, the value and what is allowed, without a Python traceback, before
any resource is declared. The hosts the keys describe: components/layout.py.
"""
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Network
from typing import Any, Callable, Optional, get_type_hints

import pulumi
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator, with_config
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from . import PROJECT
from .layout import (DATA_VOLUME_MOUNTS, JUPYTER_LOCATIONS, MONITORING_LOCATIONS, PROXY_OWN_LOCATIONS, READONLY_BASE,
                     VOLUME_KEYS)
from .validators import (AlertReceiver, AvailabilityZone, Bastion, CacheZones, CertificateChain, Checkout, Cidrs,
                         CookieName, DirectRedirects, DnsName, Duration, Environment, ExternalNetwork, ExtraGroups,
                         FilePath, Flavor, FloatingIp, Generation, GitRef, GitUrl, HostKey, ImageMap, ImageName, Ipv4s,
                         LongReadTimeout, NetworkName, NotAllowed, OpenStackId, PgIdentifier, Playbooks, Port,
                         ProbeAddresses, PublicKey, PublicReadTimeout, ReadonlyCount, RedirectLocations, RedirectMap,
                         Release, Size, Slots, SlackChannel, SourceSize, StackName, StatementTimeout, Subnet,
                         SubnetName, UrlPath, User, VarsFile, VolumeType, WebsiteSource, alert_secret_problem,
                         first_error, from_cli, kind, project_path, secret_vars_problem)

SECRET: JsonDict = {"secret": True}
REQUIRED: JsonDict = {"required": True}

NAMESPACE = PROJECT  # config keys are idr:<key>
DEFAULT_SSH_USER = "rocky"  # the login user of IDR's Rocky Linux images


class ConfigError(pulumi.RunError):
    """A config value is not allowed. Its message is the whole explanation."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key if ":" in key else f"{NAMESPACE}:{key}"
        self.value = value
        self.allowed = allowed
        super().__init__(f"config {self.key} = {value!r} is not allowed: {allowed}")


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
    environment: Environment = Field("", description="Environment name used in host names (<env>-<role>); empty means "
                                                     "the stack name.")
    external_network: ExternalNetwork = Field("public", description="Name of the external (provider) network the "
                                                                    "router connects to and floating IPs come from.")
    existing_network: NetworkName = Field("", description="Use this existing network instead of creating one (give "
                                                          "existingSubnet too); empty creates network, subnet and "
                                                          "router.")
    existing_subnet: SubnetName = Field("", description="Subnet of existingNetwork; its CIDR must equal subnetCidr.")
    subnet_cidr: Subnet = Field("192.168.1.0/24", description="IPv4 CIDR of the environment's subnet; hosts get fixed "
                                                              "addresses in it.")
    dns_nameservers: Ipv4s = Field([], validate_default=True, description="DNS servers handed out on the subnet; empty "
            "uses the cloud's default.")
    # Hosts
    image: ImageName = Field("Rocky-9-GenericCloud", description="Glance image name for every host (Rocky Linux 9).")
    image_overrides: ImageMap = Field([], validate_default=True, description="Per-role image as 'role=image', e.g. "
            "'database=Rocky-9.4'.")
    proxy_flavor: Flavor = Field("m1.large", description="Flavor of <env>-proxy.")
    omeroreadwrite_flavor: Flavor = Field("m1.xlarge", description="Flavor of <env>-omeroreadwrite.")
    database_flavor: Flavor = Field("m1.large", description="Flavor of <env>-database.")
    omeroreadonly_flavor: Flavor = Field("m1.large", description="Flavor of each <env>-omeroreadonly-n.")
    dockermanager_flavor: Flavor = Field("m1.large", description="Flavor of <env>-dockermanager.")
    omeroreadonly_count: ReadonlyCount = Field(4, description="Number of read-only OMERO servers (1 to 120, and they "
                                                              "must fit the subnet).")
    availability_zone: AvailabilityZone = Field("", description="Availability zone of servers and volumes; empty lets "
                                                                "the cloud choose.")
    # SSH and access
    ssh_user: User = Field(DEFAULT_SSH_USER, description="Login user of the image, used by remote commands.")
    ssh_public_key: PublicKey = Field("", description="OpenSSH public key installed for sshUser on every host "
                                                      "(required).", json_schema_extra=REQUIRED)
    ssh_private_key: Any = Field(None, description="Private key matching sshPublicKey, used by remote commands "
                                                   "(secret, required).", json_schema_extra=SECRET | REQUIRED)
    ssh_bastion: Bastion = Field("", description="Address remote commands use to reach the proxy on port 22 (an IP or "
                                                 "DNS name); empty means floatingIp.")
    ssh_bastion_host_key: HostKey = Field("", description="The proxy's SSH host public key; when set, the bastion "
                                                          "connection is refused if it differs.")
    ssh_allowed_cidrs: Cidrs = Field(["0.0.0.0/0"], validate_default=True, description="IPv4 CIDRs allowed to reach "
            "SSH (22) on the proxy.")
    rsync_enabled: bool = Field(False, description="Open rsync (873) on the proxy and serve the public data read-only. "
                                                   "Off: production closed it as a security risk.")
    floating_ip: FloatingIp = Field("", description="Floating IP held by the proxy's port; empty holds none. Moving "
                                                    "the public IP is a change of this key.")
    # Data volumes
    omeroreadwrite_volume_size: Size = Field(1500, description="Size in GB of the omeroreadwrite data volume (/data). "
                                                               "Never shrinks.")
    omeroreadwrite_volume_from_volume: OpenStackId = Field("", description="Clone the omeroreadwrite data volume from "
            "this volume ID.")
    omeroreadwrite_volume_from_snapshot: OpenStackId = Field("", description="Create the omeroreadwrite data volume "
            "from this snapshot ID (restore).")
    omeroreadwrite_volume_source_size: SourceSize = Field(0, description="Size in GB of the omeroreadwrite clone "
            "source when known (0: unknown); the new volume may not be smaller.")
    database_volume_size: Size = Field(800, description="Size in GB of the database data volume (/var/lib/pgsql). "
                                                        "Never shrinks.")
    database_volume_from_volume: OpenStackId = Field("", description="Clone the database data volume from this volume "
                                                                     "ID.")
    database_volume_from_snapshot: OpenStackId = Field("", description="Create the database data volume from this "
            "snapshot ID (restore).")
    database_volume_source_size: SourceSize = Field(0, description="Size in GB of the database clone source when known "
                                                                   "(0: unknown); the new volume may not be smaller.")
    proxy_volume_size: Size = Field(100, description="Size in GB of the proxy data volume (/var/cache/nginx). Never "
                                                     "shrinks.")
    proxy_volume_from_volume: OpenStackId = Field("", description="Clone the proxy data volume from this volume ID.")
    proxy_volume_from_snapshot: OpenStackId = Field("", description="Create the proxy data volume from this snapshot "
                                                                    "ID (restore).")
    proxy_volume_source_size: SourceSize = Field(0, description="Size in GB of the proxy clone source when known (0: "
                                                                "unknown); the new volume may not be smaller.")
    volume_type: VolumeType = Field("", description="Cinder volume type of the data volumes; empty uses the cloud's "
                                                    "default.")
    clone_from_stack: StackName = Field("", description="Stack whose dataVolumes output is cloned for every data "
                                                        "volume without its own source, e.g. 'organization/idr/prod'.")
    # Proxy / nginx
    server_name: DnsName = Field("idr.openmicroscopy.org", description="Public host name served by nginx.")
    nginx_cache_zones: CacheZones = Field(
        ["thumbnails=10g", "render=40g", "metadata=25g", "api=10g", "static=200m", "default=1g"],
        validate_default=True, description="nginx cache zones as 'name=size' (k, m or g); their total must fit "
                                           "proxyVolumeSize.")
    nginx_cache_inactive: Duration = Field("180d", description="How long an unused cache entry is kept.")
    nginx_cache_valid: Duration = Field("1d", description="How long a cached 200 answer is fresh.")
    nginx_public_read_timeout: PublicReadTimeout = Field(60, description="Read timeout in seconds of the public "
            "servers towards the read-only backends.")
    nginx_long_read_timeout: LongReadTimeout = Field(900, description="Read timeout in seconds of the cache-buster "
            "(9000) and long-request (8009) servers towards omeroreadwrite.")
    tls_certificate: FilePath = Field("/etc/pki/tls/certs/idr.crt", description="Path on the proxy of the TLS "
            "certificate chain.")
    tls_certificate_key: FilePath = Field("/etc/pki/tls/private/idr.key", description="Path on the proxy of the TLS "
            "private key.")
    tls_certificate_chain: CertificateChain = Field("", description="PEM certificate chain (server certificate first) "
                                                                    "written to tlsCertificate; empty: a self-signed "
                                                                    "placeholder, and the stack output tlsSelfSigned "
                                                                    "says so.")
    tls_private_key: Any = Field(None, description="PEM private key of tlsCertificateChain, written to "
                                                   "tlsCertificateKey with mode 0600 (secret; required with "
                                                   "tlsCertificateChain).", json_schema_extra=SECRET)
    https_redirect: bool = Field(False, description="Redirect plain HTTP on port 80 to HTTPS (never on 9000 and 8009).")
    omero_web_port: Port = Field(80, description="Port of OMERO.web on the OMERO hosts (their own nginx, as IDR's "
                                                 "deployment playbooks install it).")
    session_cookie_name: CookieName = Field("", description="OMERO.web's session cookie; a request carrying it is "
                                                            "never cached. Empty means sessionid_<environment>, as "
                                                            "IDR's playbooks set it.")
    maintenance: bool = Field(False, description="Serve 503 and a maintenance page on the public ports.")
    jupyter_enabled: bool = Field(False, description="Route /jupyter on the proxy to JupyterHub on the dockermanager.")
    nginx_direct_redirects: DirectRedirects = Field(
        ["= /webclient 302 /webclient/?experimenter=-1", "^~ /webclient/login 302 /webclient/?experimenter=-1",
         "^~ /mineotaur 302 /about/mineotaur.html", "^~ /jupyter 302 /about/analysis-environments.html",
         "= /curation-workflow 302 /about/curation-workflow.html",
         "= /submitter-survey 302 https://forms.gle/beR4vqLrgLgRzgSX9"],
        validate_default=True, description="Redirects on the public ports as '<= or ^~> <path> <code> <destination>' "
                                           "(IDR's "
                    "nginx_proxy_direct_locations); with jupyterEnabled, /jupyter and /jupyter/ go to JupyterHub "
                    "instead.")
    nginx_redirect_map: RedirectMap = Field(
        ["/mito/webclient/?show=screen-1 /webclient/?show=screen-1101",
         "/mito/webclient/?show=screen-701 /webclient/?show=screen-1302",
         "/mito/webclient/?show=well-324 /webclient/?show=well-771034",
         "/tara/webclient/?show=screen-151 /webclient/?show=screen-1201",
         "/tara/webclient/?show=plate-362 /webclient/?show=plate-4751",
         "/pgpc/webclient/?show=screen-101 /webclient/?show=screen-1151",
         "/pgpc/webclient/?show=run-2 /webclient/?show=plate-4101",
         "~/mito /webclient/?show=screen-1101", "~/tara /webclient/?show=screen-1201",
         "~/pgpc /webclient/?show=screen-1151",
         "/study/idr0083/figure/4i "
         "/webclient/img_detail/9822151/?dataset=10201&x=34105&y=84808&zm=25&c=1|318:9927$808080&m=g",
         "/study/idr0083/figure/4r "
         "/webclient/img_detail/9822152/?dataset=10201&x=80560&y=77440&zm=66&c=1|495:9204$808080&m=g"],
        validate_default=True, description="Study short URLs as '<request URI or ~regex> <destination>', first match "
                                           "wins, anything else goes "
                    "to / (IDR's nginx_proxy_redirect_map); consulted only by nginxRedirectLocations.")
    nginx_redirect_locations: RedirectLocations = Field(
        ["= /study/idr0083/figure/4i 301", "= /study/idr0083/figure/4r 301", "~ ^/(mito|tara|pgpc)($|/) 302"],
        validate_default=True, description="Locations answered from nginxRedirectMap as '<modifier> <path or regex> "
                                           "<code>' (IDR's "
                    "nginx_proxy_redirect_map_locations).")
    website_source: WebsiteSource = Field(
        "https://github.com/IDR/idr.openmicroscopy.org/releases/download/{ref}/idr.openmicroscopy.org.tar.gz",
        description="IDR's website, served at /about/: a tarball URL or a git repository of the built site; '{ref}' "
                    "is replaced by websiteRef.")
    website_ref: GitRef = Field("2026.07.02", description="Release tag (or commit) of websiteSource the proxy fetches, "
                                "hourly, keeping the site it has when a fetch fails; empty: no website, /about/ says "
                                "so.")
    cache_purge_generation: Generation = Field(0, description="Bump to empty /var/cache/nginx on the proxy once and "
                                                              "reload nginx.")
    # Bio-Formats cache regeneration
    bfcache_generation: Generation = Field(0, description="Bump to start one Bio-Formats cache regeneration run; 0 "
                                                          "never runs.")
    bfcache_slots: Slots = Field(["omeroreadwrite=10", "omeroreadonly=1"], validate_default=True, description=
            "Parallel jobs per node as 'role=N' for omeroreadwrite and omeroreadonly.")
    omero_bin: FilePath = Field("/opt/omero/server/OMERO.server/bin/omero", description="Path of the omero executable "
            "on the OMERO servers.")
    omero_cli_render_version: Release = Field("0.8.1", description="Version of omero-cli-render installed on every "
                                                                   "OMERO node for cache regeneration (production's).")
    # Database
    database_name: PgIdentifier = Field("idr", description="OMERO database name.")
    statement_timeout_ms: StatementTimeout = Field(60000, description="statement_timeout of the omeroreadonly database "
            "role, in milliseconds.")
    # Deployment playbooks (IDR/deployment), run on the operator's machine
    deployment_enabled: bool = Field(True, description="Run IDR's deployment playbooks (PostgreSQL, OMERO.server, "
                                                       "OMERO.web) as a step of pulumi up; off: install them by other "
                                                       "means.")
    deployment_repository: GitUrl = Field("https://github.com/IDR/deployment.git", description="Git URL of "
            "IDR/deployment, checked out at deploymentRef by the step (unless deploymentPath is set).")
    deployment_ref: GitRef = Field("", description="Commit (or tag) of deploymentRepository the step checks out; a "
                                                   "full commit hash pins it.")
    deployment_path: Checkout = Field("", description="A local checkout of IDR/deployment (absolute or relative to the "
                                                      "project); used instead of deploymentRepository and "
                                                      "deploymentRef.")
    deployment_playbooks: Playbooks = Field(["idr-01-install-idr.yml"], validate_default=True, description=
            "Playbooks run in order from the checkout's ansible/ directory.")
    deployment_extra_groups: ExtraGroups = Field([], validate_default=True, description="More inventory groups as "
            "'group=role': 'ebi-nfs=omeroreadwrite' puts <env>-omeroreadwrite in <env>-ebi-nfs (IDR's image-data "
            "mounts: idr-ebi-nfs.yml, idr-dundee-nfs.yml's <env>-uod-nfs).")
    deployment_vars_file: VarsFile = Field("", description="YAML file of extra vars for the playbooks (absolute or "
                                                           "relative to the project); empty: none.")
    deployment_secret_vars: Any = Field(None, description="YAML mapping of secret vars for the playbooks, required "
                                                          "with deploymentEnabled: omero_server_rootpassword, "
                                                          "idr_secret_postgresql_password, "
                                                          "idr_secret_postgresql_password_ro (never the roles' default "
                                                          "'omero'), optionally idr_secret_public_password; written to "
                                                          "a 0600 temporary file, never printed (secret).",
                                                      json_schema_extra=SECRET)
    deployment_generation: Generation = Field(0, description="Bump to run the deployment playbooks again (and the "
                                                             "steps that follow them).")
    # Monitoring (IDR's <env>-management host: Prometheus, Alertmanager, Grafana)
    monitoring_enabled: bool = Field(False, description="Add <env>-management (internal only) with Prometheus, "
                                                        "Alertmanager, a blackbox exporter and Grafana, exporters on "
                                                        "every host, /grafana/ and /prometheus/federate on the proxy "
                                                        "(docs/operations/monitoring.md).")
    management_flavor: Flavor = Field("m1.medium", description="Flavor of <env>-management (with monitoringEnabled).")
    management_volume_size: Size = Field(100, description="Size in GB of the management data volume (/data: metrics, "
                                                          "alerts, dashboards). Never shrinks; never cloned from "
                                                          "another stack.")
    management_volume_from_snapshot: OpenStackId = Field("", description="Create the management data volume from this "
            "snapshot ID of its own (a release starts empty otherwise).")
    alert_receiver: AlertReceiver = Field("", description="Where Alertmanager sends alerts: slack "
                                                          "(idr_secret_management_slack_webhook in "
                                                          "deploymentSecretVars), webhook "
                                                          "(idr_secret_alert_webhook_url in deploymentSecretVars), or "
                                                          "empty: logged only.")
    alert_slack_channel: SlackChannel = Field("#idr-notify", description="Slack channel of the alerts with "
            "alertReceiver slack.")
    probe_addresses: ProbeAddresses = Field([], validate_default=True, description="The public and the spare "
            "floating IPs, the same list in every stack: each environment's blackbox exporter probes each one for "
            "which environment answers there (a swap changes no rendered file). Should hold floatingIp (a warning "
            "says when it does not).")
    # Releases
    health_check_path: UrlPath = Field("/webclient/?experimenter=-1", description="Path that must answer HTTP 200 on "
            "an environment's floating IP before it takes the public IP.")

    @model_validator(mode="after")
    def across(self) -> "Settings":
        """Checks of keys against each other, once each is valid."""
        if bool(self.existing_network) != bool(self.existing_subnet):
            raise ConfigError("existingSubnet" if self.existing_network else "existingNetwork",
                              self.existing_subnet or self.existing_network, "existingNetwork and existingSubnet set "
                                      "together, or neither")
        subnet = IPv4Network(self.subnet_cidr)
        if READONLY_BASE + self.omeroreadonly_count >= subnet.num_addresses - 1:
            raise ConfigError("omeroreadonlyCount", self.omeroreadonly_count, f"at most "
                    f"{subnet.num_addresses - READONLY_BASE - 2} "
                              f"in subnet {subnet} (read-only hosts use .{READONLY_BASE + 1} upwards)")
        if self.ssh_private_key is None:
            raise ConfigError("sshPrivateKey", None, "a secret: set it with `pulumi config set --secret "
                                                     "idr:sshPrivateKey < key-file`")
        if not (self.ssh_bastion.strip() or self.floating_ip):
            raise ConfigError("sshBastion", self.ssh_bastion, "an address of the proxy for SSH; required when "
                                                              "floatingIp is empty")
        for role in DATA_VOLUME_MOUNTS:
            size, from_volume, from_snapshot, source = (getattr(self, f"{role}_volume_{k}") for k in VOLUME_KEYS)
            if from_volume and from_snapshot:
                raise ConfigError(f"{role}VolumeFromSnapshot", from_snapshot,
                                  f"one source only: {role}VolumeFromVolume is set too ({from_volume}); clear one of "
                                  f"them")
            if source and size < source:
                raise ConfigError(f"{role}VolumeSize", size, f"at least the size of its source ({source} GB): a volume "
                                                             f"cannot "
                                  "be smaller than what it is cloned from")
        cache_bytes = sum(z.bytes for z in self.nginx_cache_zones)
        if cache_bytes > self.proxy_volume_size * 1024**3 * 0.9:
            raise ConfigError("nginxCacheZones", [f"{z.name}={z.size}" for z in self.nginx_cache_zones],
                              f"zones totalling at most 90% of proxyVolumeSize ({self.proxy_volume_size} GB); these "
                              f"total "
                              f"{cache_bytes / 1024**3:.1f} GB")
        if self.nginx_long_read_timeout < self.nginx_public_read_timeout:
            raise ConfigError("nginxLongReadTimeout", self.nginx_long_read_timeout, "at least nginxPublicReadTimeout "
                              f"({self.nginx_public_read_timeout}): 9000 and 8009 exist for slow requests")
        own = {loc: "the proxy's own" for loc in PROXY_OWN_LOCATIONS}
        if self.jupyter_enabled:
            own |= {loc: "JupyterHub's (jupyterEnabled)" for loc in JUPYTER_LOCATIONS}
        if self.monitoring_enabled:
            own |= {loc: "monitoring's (monitoringEnabled)" for loc in MONITORING_LOCATIONS}
        for key, entries in (("nginxDirectRedirects", self.nginx_direct_redirects),
                             ("nginxRedirectLocations", self.nginx_redirect_locations)):
            for entry in entries:
                if entry.location in own:
                    raise ConfigError(key, entry.location, f"a location nginx does not have already: {entry.location} "
                                      f"is {own[entry.location]}")
                own[entry.location] = f"in {key} already"
        if self.tls_certificate_chain and self.tls_private_key is None:
            raise ConfigError("tlsPrivateKey", None, "a secret, required with tlsCertificateChain: "
                              "`pulumi config set --secret idr:tlsPrivateKey < key.pem`")
        if self.deployment_path:
            ansible = project_path(self.deployment_path) / "ansible"
            for name in self.deployment_playbooks:
                if not (ansible / name).is_file():
                    raise ConfigError("deploymentPlaybooks", name, f"playbooks that exist in {ansible}")
        elif self.deployment_enabled and not self.deployment_ref:
            raise ConfigError("deploymentRef", "", "a commit of deploymentRepository to check out (a full hash pins "
                                                   "it), "
                              "or set deploymentPath to a local checkout, or deploymentEnabled to false")
        return self


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


def _key(name: str, f: FieldInfo) -> Key:
    flags = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    return Key(name, kind(f.annotation), f.default, f.description or "",
               secret=bool(flags.get("secret")), required=bool(flags.get("required")))


KEYS: dict[str, Key] = {name: _key(name, f) for name, f in FIELDS.items()}
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
    if s.deployment_enabled:
        # The secret's text is read only to check it: it is never in a message.
        problem = secret_vars_problem(raw("deploymentSecretVars"))
        if problem:
            raise ConfigError("deploymentSecretVars", "(secret)", f"{problem}: `pulumi config set --secret "
                              "idr:deploymentSecretVars < secret-vars.yml` (docs/operations/deployment-playbooks.md), "
                              "or deploymentEnabled false")
        problem = alert_secret_problem(s.alert_receiver, raw("deploymentSecretVars")) if s.monitoring_enabled else None
        if problem:
            raise ConfigError("deploymentSecretVars", "(secret)", f"{problem}: docs/operations/monitoring.md, Alerts")
    return replace(s, ssh_bastion=s.ssh_bastion.strip() or s.floating_ip,
                   tls_private_key=s.tls_private_key if s.tls_certificate_chain else None)


def load() -> Settings:
    """Read the current stack's `idr:` config through Pulumi."""
    config = pulumi.Config(NAMESPACE)
    return build_settings(pulumi.get_stack(), config.get, config.get_secret)
