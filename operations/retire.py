"""Retire an environment: destroy everything but its protected data volumes.

    python -m operations.retire --stack oldidr [--yes]

Refuses while the stack holds a floating IP (the public one must move first,
with operations.swap; the association is protected, so a plain
`pulumi destroy` refuses too). Then runs `pulumi destroy --exclude-protected`
(through the Automation API, message "retire <stack>: ...", output streamed)
and lists what stays: the data volumes, which are released only on purpose,
and what Pulumi keeps with them - a protected resource keeps its parents,
its provider and its dependencies (pulumi's `destroy --exclude-protected`,
separateProtected), here the environment component, the OpenStack provider
and the stack resource, none of them a cloud object. It ends with the
commands that release the volumes and remove the stack (`pulumi stack rm`
refuses a stack that still has resources). Run it again once the volumes
are released and it removes the rest itself.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional

from components.floatingip import pin_bastion_command

from .common import ASSOCIATION_TYPE, VOLUME_TYPE, OperationError, Pulumi, association_urn, confirm, stack_environment

# Protected by the program so that no update detaches a data volume from a
# running server (components/server.py, network.py); retiring is the explicit
# step that lets them go. Volumes and the floating-IP association stay protected.
HOLDER_TYPES = ("openstack:compute/instance:Instance", "openstack:compute/volumeAttach:VolumeAttach",
                "openstack:networking/port:Port", "openstack:networking/network:Network",
                "openstack:networking/subnet:Subnet")


def held_ip(pulumi: Pulumi, stack: str) -> tuple[str, str]:
    """(IP, association URN) the stack holds, by its config and state: its
    outputs are those of its last update, which a swap's targeted updates
    may not have rewritten, so they only help to name the association."""
    config = pulumi.config(stack)
    association = [r for r in pulumi.resources(stack) if r.get("type") == ASSOCIATION_TYPE]
    ip = config.get("idr:floatingIp", "")
    if association and not ip:
        ip = (association[0].get("inputs") or {}).get("floatingIp", "") or "(an IP)"
    urn = association[0]["urn"] if association else ""
    if ip and not urn:
        urn = pulumi.outputs(stack).get("floatingIpUrn") or ""
    return ip, urn or association_urn(stack, stack_environment(stack, config))


def main(argv=None, pulumi: Optional[Pulumi] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.retire", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    args = parser.parse_args(argv)
    s = args.stack
    pulumi = pulumi or Pulumi(say=print)
    try:
        ip, urn = held_ip(pulumi, s)
        if ip:
            q = shlex.quote
            print(f"error: refusing to retire {s}: it holds floating IP {ip}.\n"
                  f"If {ip} is the public IP, move it to the environment that goes on first:\n"
                  f"  python -m operations.swap --from {s} --to <next stack>\n"
                  f"If it is a spare, release it:\n"
                  f"  pulumi state unprotect -s {s} {q(urn)}\n"
                  f"  {pin_bastion_command(s, ip)}"
                  f"   # required once idr:floatingIp is empty\n"
                  f"  pulumi config rm idr:floatingIp -s {s}\n"
                  f"  pulumi up -s {s} --policy-pack policy --target {q(urn)}\n"
                  f"then run `python -m operations.retire --stack {s}` again.", file=sys.stderr)
            return 2
        if not confirm(f"Destroy every server, port and network of {s} (data volumes are detached)? "
                       f"Its protected data volumes stay.", args.yes):
            print("nothing destroyed")
            return 1
        for r in pulumi.resources(s):
            if r.get("protect") and r.get("type") in HOLDER_TYPES:
                pulumi.unprotect(s, r["urn"])
        pulumi.destroy_unprotected(s, f"retire {s}: destroy all but the protected data volumes")
        remaining = pulumi.resources(s)
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not remaining:
        print(f"{s} is empty: remove the stack with `pulumi stack rm {s}`")
        return 0
    protected = [r for r in remaining if r.get("protect")]
    kept = [r for r in remaining if not r.get("protect")]
    q = shlex.quote
    print(f"Still in {s}: {len(protected)} protected, and {len(kept)} that Pulumi keeps because they hold them "
          f"(parents, provider, the stack resource; none is a cloud object):")
    for r in protected:
        print(f"  {r['urn']}  [protected]")
    for r in kept:
        print(f"  {r['urn']}")
    print("The protected ones hold data (snapshot them first: "
          f"`python -m operations.backup snapshot --stack {s} --include-cache`). To release them deliberately, "
          f"one by one, then remove the stack:")
    for r in protected:
        print(f"  pulumi state unprotect -s {s} {q(r['urn'])}")
        print(f"  pulumi destroy -s {s} --target {q(r['urn'])}")
        if r.get("type") == VOLUME_TYPE:
            # Data volumes are retained on delete: the destroy above only
            # forgets the volume; deleting it in OpenStack is a separate act.
            print(f"  openstack volume delete {q(r.get('id') or '<volume id>')}"
                  "   # the volume stays in OpenStack until this")
    print(f"  pulumi destroy -s {s} --message {q(f'retire {s}: remove what held the data volumes')}"
          f"   # the component, provider and stack resource kept for them")
    print(f"  pulumi stack rm {s}")
    print(f"(or, once the volumes are released, `python -m operations.retire --stack {s}` again, which removes the "
          f"rest, then `pulumi stack rm {s}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
