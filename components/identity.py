"""What a deployed environment is, and the config changes it refuses.

A running environment's name, network, zone, login user, volume type and
read-only flavor cannot change under it without rebuilding servers,
renumbering hosts, detaching data volumes or restarting every read-only server
at once (docs/reference/changes.md). The program learns what
is deployed from the stack's own last outputs, through a StackReference to
itself read before anything else is declared, and refuses such a change with
a ConfigError naming the key, the deployed value and the safe way: a new
stack from this one's volumes, then the swap command.

A stack that was never deployed has no outputs: nothing is compared.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Optional

import pulumi

from . import layout
from .settings import ConfigError, Settings

# The output a deployed stack records itself in (read back on the next run).
OUTPUT = "identity"
# The self-reference's logical name (a read: it creates nothing in the cloud).
REFERENCE_NAME = "idr-deployed-stack"

# idr:<key> -> (what the change would do to a running environment, Settings attribute)
IDENTITY: dict[str, tuple[str, str]] = {
    "environment": ("rename every resource: new servers and new, EMPTY data volumes, the old ones deleted",
                    "environment"),
    "subnetCidr": ("replace the subnet and renumber every host in place", "subnet_cidr"),
    "existingNetwork": ("move every port to another network: every server replaced, its data volume detached",
                        "existing_network"),
    "existingSubnet": ("move every port to another subnet: hosts renumbered, servers replaced", "existing_subnet"),
    "availabilityZone": ("replace every server and data volume (availability_zone is ForceNew)",
                         "availability_zone"),
    "externalNetwork": ("move the router's gateway and the floating IPs' pool under the running site",
                        "external_network"),
    "sshUser": ("log remote commands in as a user cloud-init never created (it creates users at first boot only)",
                "ssh_user"),
    "volumeType": ("retype every attached data volume (a Cinder migration of terabytes under a running server)",
                   "volume_type"),
    "omeroreadonlyFlavor": ("resize every read-only server at once (each reboots): the public site goes down",
                            "_readonly_flavor"),
}


def recorded(s: Settings) -> dict[str, Any]:
    """The values this run deploys, exported as the `identity` output."""
    out = {}
    for key, (_, attr) in IDENTITY.items():
        out[key] = readonly_flavor(s) if attr == "_readonly_flavor" else getattr(s, attr)
    return out


def readonly_flavor(s: Settings) -> str:
    return next((h.flavor for h in layout.hosts_of(s, "omeroreadonly")), "")


def self_reference_name() -> str:
    # The diy (self-managed) backend calls every organization "organization";
    # mocks know none.
    org = pulumi.get_organization() or "organization"
    return f"{org}/{pulumi.get_project()}/{pulumi.get_stack()}"


# The outputs of the last update that the checks below read.
READ_OUTPUTS = (OUTPUT, "environment", "hosts", "dataVolumes")


async def read_deployed() -> dict:
    """Those of the stack's own outputs of its last update that the checks
    read ({} before the first update). The program's async entrypoint
    (components/program.py) awaits this before it declares anything else, so
    a refusal declares nothing. Why this way, and how the engine answers:
    docs/design.md, "A deployed environment knows what it is"."""
    ref = pulumi.StackReference(REFERENCE_NAME, self_reference_name())
    details = await asyncio.gather(*(ref.get_output_details(name) for name in READ_OUTPUTS))
    found = {}
    for name, d in zip(READ_OUTPUTS, details):
        value = d.value if d.value is not None else d.secret_value
        if value is not None:
            found[name] = value
    return found


@dataclasses.dataclass(frozen=True)
class Deployed:
    """What the last update deployed, as far as its outputs tell."""
    identity: dict       # idr:<key> -> value (only keys the outputs record)
    volume_sizes: dict   # role -> GB
    outputs: dict

    @property
    def exists(self) -> bool:
        return bool(self.outputs)

    @property
    def environment(self) -> Optional[str]:
        return self.identity.get("environment")


def deployed_from(outputs: dict) -> Deployed:
    identity = dict(outputs.get(OUTPUT) or {})
    # Stacks deployed before the identity output existed still say their
    # environment and their hosts' addresses.
    if "environment" not in identity and outputs.get("environment"):
        identity["environment"] = outputs["environment"]
    sizes = {role: int(v["size"]) for role, v in (outputs.get("dataVolumes") or {}).items()
             if isinstance(v, dict) and v.get("size") is not None}
    return Deployed(identity, sizes, dict(outputs))


def _safe_way(s: Settings) -> str:
    return (f"a running environment keeps it. The safe way: a new stack whose data volumes are clones of this "
            f"one's (`pulumi stack init <new>`, `pulumi config set idr:cloneFromStack "
            f"{self_reference_name()} -s <new>`, the new value there, a spare idr:floatingIp), `pulumi up -s <new> "
            f"--policy-pack policy`, "
            f"test it, then `python -m operations.swap --from {s.stack} --to <new>`")


def check(s: Settings, deployed: Deployed) -> None:
    """Refuse a change a running environment cannot take (ConfigError)."""
    if not deployed.exists:
        return
    now = recorded(s)
    for key, (harm, _) in IDENTITY.items():
        if key not in deployed.identity or deployed.identity[key] == now[key]:
            continue
        was = deployed.identity[key]
        undo = (f"`pulumi config set idr:{key} {was} -s {s.stack}`" if was != ""
                else f"`pulumi config rm idr:{key} -s {s.stack}`")
        if key == "environment" and s.environment == s.stack:
            undo = f"`pulumi config set idr:environment {was} -s {s.stack}` (the stack was renamed; the name stays)"
        raise ConfigError(key, now[key], f"{was!r}, the value this stack was deployed with: the change would "
                          f"{harm}. To keep the running environment: {undo}. Otherwise {_safe_way(s)}")
    _check_subnet_from_hosts(s, deployed)
    for role, size in deployed.volume_sizes.items():
        spec = next((v for v in layout.volumes(s) if v.role == role), None)
        if spec is not None and spec.size < size:
            raise ConfigError(f"{role}VolumeSize", spec.size,
                              f"at least {size} (GB), the deployed size: a volume never shrinks (Cinder refuses; "
                              f"to make room, restore into a new environment from a snapshot)")


def _check_subnet_from_hosts(s: Settings, deployed: Deployed) -> None:
    """Stacks deployed before the identity output: a host whose address
    changes is a renumbering, whatever the key."""
    if "subnetCidr" in deployed.identity:
        return
    now = {h.name: h.fixed_ip for h in layout.hosts(s)}
    for host in deployed.outputs.get("hosts") or []:
        if host.get("name") in now and host.get("fixedIp") != now[host["name"]]:
            raise ConfigError("subnetCidr", s.subnet_cidr,
                              f"a subnet that keeps {host['name']} at {host['fixedIp']}, its deployed address: the "
                              f"change would renumber every host. Otherwise {_safe_way(s)}")
