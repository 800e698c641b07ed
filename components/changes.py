"""What a change of each idr: key does to a running environment.

One row per key: an example change and its effect on a deployed stack.
tests/test_running_changes.py runs every example against the program under
mocks, as an existing stack, and checks the effect, so this table cannot
drift from the program; `markdown()` prints it for docs/reference/changes.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REFUSED = "refused"                 # stops before any resource is declared, naming the safe way
IN_PLACE = "in place"               # updated in place or host steps re-run; no restart, no replacement
ONE_SERVER = "one server restarts"  # that server is resized (a reboot); nothing replaced
ADDS_REMOVES = "adds or removes"    # exactly the added/removed servers or rules; the rest as in place
IGNORED = "new resources only"      # running servers and volumes keep what they have (ignore_changes)
SWAP = "swap command"               # the protected floating-IP association: operations.swap moves it
NOTHING = "nothing"                 # no resource changes

EFFECTS = (REFUSED, IN_PLACE, ONE_SERVER, ADDS_REMOVES, IGNORED, SWAP, NOTHING)

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOWG0Nc7HwAe8C00kfkbDjmcv8IEEyVdEu4YVcB3WPO"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBexample\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEexample\n-----END PRIVATE KEY-----"


@dataclass(frozen=True)
class Change:
    example: dict   # config overrides (without idr:); "{tmp}" is a scratch directory
    effect: str
    why: str
    given: dict = field(default_factory=dict)  # the deployed stack's config, when not prod's own


# Read by cache regeneration only, which exists once a generation is bumped.
_REGENERATING = {"bfcacheGeneration": "1"}
_NEW_STACK = "build a new stack from this one's volumes, then the swap command"

CHANGES: dict[str, Change] = {
    "environment": Change({"environment": "prod2"}, REFUSED, f"every name would change (new empty volumes); "
                                                             f"{_NEW_STACK}"),
    "externalNetwork": Change({"externalNetwork": "ext-net"}, REFUSED,
                              f"router gateway and IP pool move; {_NEW_STACK}"),
    "existingNetwork": Change({"existingNetwork": "shared", "existingSubnet": "shared-subnet"}, REFUSED,
                              f"every port and server replaced; {_NEW_STACK}"),
    "existingSubnet": Change({"existingNetwork": "shared", "existingSubnet": "shared-subnet"}, REFUSED,
                             f"as existingNetwork; {_NEW_STACK}"),
    "subnetCidr": Change({"subnetCidr": "10.20.0.0/24"}, REFUSED, f"subnet replaced, hosts renumbered; {_NEW_STACK}"),
    "dnsNameservers": Change({"dnsNameservers": '["192.0.2.53"]'}, IN_PLACE, "subnet updated; hosts see it at DHCP "
            "renewal"),
    "image": Change({"image": "Rocky-9.5"}, IGNORED,
                    "running servers keep theirs; replace one on purpose (docs/operations/replace-a-server.md)"),
    "imageOverrides": Change({"imageOverrides": '["database=Rocky-9.4"]'}, IGNORED, "as image"),
    "proxyFlavor": Change({"proxyFlavor": "m1.xlarge"}, ONE_SERVER, "resize of the proxy (the site pauses)"),
    "omeroreadwriteFlavor": Change({"omeroreadwriteFlavor": "m1.2xlarge"}, ONE_SERVER, "resize of omeroreadwrite"),
    "databaseFlavor": Change({"databaseFlavor": "m1.xlarge"}, ONE_SERVER, "resize of the database"),
    "omeroreadonlyFlavor": Change({"omeroreadonlyFlavor": "m1.xlarge"}, REFUSED,
                                  f"every read-only server would resize at once; {_NEW_STACK}"),
    "dockermanagerFlavor": Change({"dockermanagerFlavor": "m1.xlarge"}, ONE_SERVER, "resize of the dockermanager"),
    "omeroreadonlyCount": Change({"omeroreadonlyCount": "5"}, ADDS_REMOVES,
                                 "servers added or removed at the end; /etc/hosts and nginx upstreams updated"),
    "availabilityZone": Change({"availabilityZone": "nova2"}, REFUSED, f"servers and volumes ForceNew; {_NEW_STACK}"),
    "sshUser": Change({"sshUser": "almalinux"}, REFUSED, f"cloud-init creates users at first boot only; {_NEW_STACK}"),
    "sshPublicKey": Change({"sshPublicKey": PUBLIC_KEY.replace("AAAAI", "AAAAJ", 1) + " other"}, IGNORED,
                           "first-boot data: put it on running servers with Ansible"),
    "sshPrivateKey": Change({"sshPrivateKey": "another key"}, IN_PLACE, "stored connections updated, nothing re-run"),
    "sshBastion": Change({"sshBastion": "198.51.100.7"}, IN_PLACE, "stored connections updated, nothing re-run"),
    "sshBastionHostKey": Change({"sshBastionHostKey": PUBLIC_KEY}, IN_PLACE, "stored connections updated, nothing "
            "re-run"),
    "sshAllowedCidrs": Change({"sshAllowedCidrs": '["0.0.0.0/0", "198.51.100.0/24"]'}, ADDS_REMOVES,
                              "exactly the rule of that CIDR"),
    "rsyncEnabled": Change({"rsyncEnabled": "true"}, ADDS_REMOVES, "the 873 rule and its forwarding; rsyncd on "
                                                                   "omeroreadwrite set up, or stopped and disabled"),
    "floatingIp": Change({"floatingIp": "203.0.113.99"}, SWAP,
                         "the association is protected: `python -m operations.swap` moves IPs"),
    "omeroreadwriteVolumeSize": Change({"omeroreadwriteVolumeSize": "1600"}, IN_PLACE,
                                       "extended while attached, filesystem grown; a shrink is refused"),
    "omeroreadwriteVolumeFromVolume": Change({"omeroreadwriteVolumeFromVolume": "0f1e2d3c-4b5a-6978"}, IGNORED,
                                             "the volume exists: its source is history"),
    "omeroreadwriteVolumeFromSnapshot": Change({"omeroreadwriteVolumeFromSnapshot": "aaaabbbb-cccc-dddd"}, IGNORED,
                                               "as above; restore into a new environment (docs/operations/restore.md)"),
    "omeroreadwriteVolumeSourceSize": Change({"omeroreadwriteVolumeSourceSize": "1000"}, NOTHING,
            "a check at creation"),
    "databaseVolumeSize": Change({"databaseVolumeSize": "900"}, IN_PLACE, "as omeroreadwriteVolumeSize"),
    "databaseVolumeFromVolume": Change({"databaseVolumeFromVolume": "0f1e2d3c-4b5a-6978"}, IGNORED,
            "source is history"),
    "databaseVolumeFromSnapshot": Change({"databaseVolumeFromSnapshot": "aaaabbbb-cccc-dddd"}, IGNORED,
            "source is history"),
    "databaseVolumeSourceSize": Change({"databaseVolumeSourceSize": "500"}, NOTHING, "a check at creation"),
    "proxyVolumeSize": Change({"proxyVolumeSize": "200"}, IN_PLACE, "as omeroreadwriteVolumeSize"),
    "proxyVolumeFromVolume": Change({"proxyVolumeFromVolume": "0f1e2d3c-4b5a-6978"}, IGNORED, "source is history"),
    "proxyVolumeFromSnapshot": Change({"proxyVolumeFromSnapshot": "aaaabbbb-cccc-dddd"}, IGNORED, "source is history"),
    "proxyVolumeSourceSize": Change({"proxyVolumeSourceSize": "50"}, NOTHING, "a check at creation"),
    "volumeType": Change({"volumeType": "ssd"}, REFUSED, f"would retype attached data volumes; {_NEW_STACK}"),
    "cloneFromStack": Change({"cloneFromStack": "organization/idr/newidr"}, NOTHING,
                             "existing volumes are no clones any more: the source is neither read nor checked"),
    "serverName": Change({"serverName": "idr.example.org"}, IN_PLACE, "nginx config, reload"),
    "nginxCacheZones": Change({"nginxCacheZones": '["thumbnails=5g", "default=1g"]'}, IN_PLACE, "nginx config, reload"),
    "nginxCacheInactive": Change({"nginxCacheInactive": "90d"}, IN_PLACE, "nginx config, reload"),
    "nginxCacheValid": Change({"nginxCacheValid": "2d"}, IN_PLACE, "nginx config, reload"),
    "nginxPublicReadTimeout": Change({"nginxPublicReadTimeout": "120"}, IN_PLACE, "nginx config, reload"),
    "nginxLongReadTimeout": Change({"nginxLongReadTimeout": "1200"}, IN_PLACE, "nginx config, reload"),
    "tlsCertificate": Change({"tlsCertificate": "/etc/pki/tls/certs/other.crt"}, IN_PLACE, "nginx config, reload"),
    "tlsCertificateKey": Change({"tlsCertificateKey": "/etc/pki/tls/private/other.key"}, IN_PLACE,
            "nginx config, reload"),
    "tlsCertificateChain": Change({"tlsCertificateChain": CERT, "tlsPrivateKey": KEY}, IN_PLACE, "files on the proxy, "
            "reload"),
    "tlsPrivateKey": Change({"tlsCertificateChain": CERT, "tlsPrivateKey": KEY}, IN_PLACE,
                            "files on the proxy, reload"),
    "httpsRedirect": Change({"httpsRedirect": "true"}, IN_PLACE, "nginx config, reload"),
    "omeroWebPort": Change({"omeroWebPort": "8080"}, IN_PLACE, "nginx upstreams, reload"),
    "sessionCookieName": Change({"sessionCookieName": "sid"}, IN_PLACE, "nginx config, reload"),
    "maintenance": Change({"maintenance": "true"}, IN_PLACE, "flag file on the proxy"),
    "jupyterEnabled": Change({"jupyterEnabled": "true"}, IN_PLACE, "nginx config, reload"),
    "nginxDirectRedirects": Change({"nginxDirectRedirects": '["= /webclient 302 /webclient/?experimenter=-1"]'},
                                   IN_PLACE,
                                   "nginx config, reload"),
    "nginxRedirectMap": Change({"nginxRedirectMap": '["/mito /webclient/?show=screen-1101"]'}, IN_PLACE,
                               "nginx config, reload"),
    "nginxRedirectLocations": Change({"nginxRedirectLocations": '["= /mito 302"]'}, IN_PLACE, "nginx config, reload"),
    "websiteSource": Change({"websiteSource": "https://github.com/IDR/idr.openmicroscopy.org.git"}, IN_PLACE,
                            "the proxy fetches the site again; the old one is served until the fetch succeeds"),
    "websiteRef": Change({"websiteRef": "2026.01.28"}, IN_PLACE,
                         "the proxy fetches that ref; the old site is served until the fetch succeeds (empty: /about/ "
                         "says there is none)"),
    "cachePurgeGeneration": Change({"cachePurgeGeneration": "1"}, IN_PLACE, "one cache purge"),
    "bfcacheGeneration": Change({"bfcacheGeneration": "1"}, IN_PLACE, "one regeneration run, started detached; back to "
            "0: the coordinator's key revoked on every node and the database"),
    "bfcacheSlots": Change({"bfcacheSlots": '["omeroreadwrite=8", "omeroreadonly=2"]'}, IN_PLACE,
            "node list updated", given=_REGENERATING),
    "omeroBin": Change({"omeroBin": "/opt/omero/bin/omero"}, IN_PLACE, "regeneration scripts", given=_REGENERATING),
    "omeroCliRenderVersion": Change({"omeroCliRenderVersion": "0.9.0"}, IN_PLACE, "installed on the OMERO nodes",
                                    given=_REGENERATING),
    "databaseName": Change({"databaseName": "idr2"}, IN_PLACE, "scripts that query the database", given=_REGENERATING),
    "statementTimeoutMs": Change({"statementTimeoutMs": "90000"}, IN_PLACE,
                                 "ALTER ROLE on the database (the playbooks get it when they run next)"),
    "deploymentEnabled": Change({"deploymentEnabled": "false"}, IN_PLACE, "the playbook step goes; hosts keep what it "
            "installed"),
    "deploymentRepository": Change({"deploymentRepository": "https://example.org/deployment.git"}, IN_PLACE,
                                   "the playbooks run again"),
    "deploymentRef": Change({"deploymentRef": "0123456789abcdef0123456789abcdef01234567"}, IN_PLACE,
            "the playbooks run again"),
    "deploymentPath": Change({"deploymentPath": "{tmp}/deployment"}, IN_PLACE, "the playbooks run again"),
    "deploymentPlaybooks": Change({"deploymentPlaybooks": '["idr-01-install-idr.yml", "site.yml"]'}, IN_PLACE,
                                  "the playbooks run again"),
    "deploymentVarsFile": Change({"deploymentVarsFile": "{tmp}/vars.yml"}, IN_PLACE, "the playbooks run again"),
    "deploymentSecretVars": Change({"deploymentSecretVars": "omero_server_rootpassword: "
                                                            "r\nidr_secret_postgresql_password: x\n"
                                                            "idr_secret_postgresql_password_ro: y\n"}, IN_PLACE,
                                   "the playbooks run again"),
    "deploymentExtraGroups": Change({"deploymentExtraGroups": '["ebi-nfs=omeroreadwrite"]'}, IN_PLACE,
                                    "instance metadata; the playbooks run again"),
    "deploymentGeneration": Change({"deploymentGeneration": "1"}, IN_PLACE, "the playbooks run again"),
    "monitoringEnabled": Change({"monitoringEnabled": "false"}, ADDS_REMOVES,
                                "on adds <env>-management and its volume, and the playbooks run again; off: they are "
                                "protected, pulumi stops until unprotected (docs/operations/monitoring.md)"),
    "managementFlavor": Change({"managementFlavor": "m1.large"}, ONE_SERVER, "resize of the management host"),
    "managementVolumeSize": Change({"managementVolumeSize": "200"}, IN_PLACE, "as omeroreadwriteVolumeSize"),
    "managementVolumeFromSnapshot": Change({"managementVolumeFromSnapshot": "aaaabbbb-cccc-dddd"}, IGNORED,
                                           "source is history"),
    "alertReceiver": Change({"alertReceiver": "webhook", "deploymentSecretVars": (
        "omero_server_rootpassword: r\nidr_secret_postgresql_password: x\nidr_secret_postgresql_password_ro: y\n"
        "idr_secret_alert_webhook_url: https://alerts.example.org/idr\n")}, IN_PLACE, "the playbooks run again"),
    "alertSlackChannel": Change({"alertSlackChannel": "#idr-alerts"}, IN_PLACE, "the playbooks run again"),
    "probeAddresses": Change({"probeAddresses": '["203.0.113.10", "203.0.113.30"]'}, IN_PLACE,
                             "the playbooks run again (Prometheus's probe jobs)"),
    "healthCheckPath": Change({"healthCheckPath": "/"}, NOTHING, "read by the swap command only"),
}


def markdown() -> str:
    rows = ["| key | a change on a running environment | |", "|---|---|---|"]
    rows += [f"| `idr:{key}` | {c.effect} | {c.why}" + (" (once a regeneration is set up)" if c.given else "") + " |"
             for key, c in CHANGES.items()]
    return "\n".join(rows)
