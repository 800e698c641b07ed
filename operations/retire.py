"""Retire an environment: destroy everything but its protected data volumes.

    python -m operations.retire --stack oldidr [--yes]

Refuses while the stack holds a floating IP (the public one must move first,
with operations.swap; the association is protected, so a plain
`pulumi destroy` refuses too). Then runs `pulumi destroy --exclude-protected`
(through the Automation API, message "retire <stack>: ...", output streamed)
and lists what stays: the data volumes, which are released only on purpose.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional

from .common import ASSOCIATION_TYPE, VOLUME_TYPE, OperationError, Pulumi, association_urn, confirm, stack_environment

ROOT_TYPES = ("pulumi:pulumi:Stack", "pulumi:providers:")
# Protected by the program so that no update detaches a data volume from a
# running server (components/server.py, network.py); retiring is the explicit
# step that lets them go. Volumes and the floating-IP association stay protected.
HOLDER_TYPES = ("openstack:compute/instance:Instance", "openstack:compute/volumeAttach:VolumeAttach",
                "openstack:networking/port:Port", "openstack:networking/network:Network",
                "openstack:networking/subnet:Subnet")


def held_ip(pulumi: Pulumi, stack: str) -> tuple[str, str]:
    """(IP, association URN) the stack holds, by its outputs, config and state."""
    outputs = pulumi.outputs(stack)
    config = pulumi.config(stack)
    ip = outputs.get("floatingIp") or config.get("idr:floatingIp", "")
    association = [r for r in pulumi.resources(stack) if r.get("type") == ASSOCIATION_TYPE]
    urn = association[0]["urn"] if association else (outputs.get("floatingIpUrn") or "")
    if association and not ip:
        ip = (association[0].get("inputs") or {}).get("floatingIp", "") or "(an IP)"
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
                  f"  pulumi config set idr:sshBastion {ip} -s {s}   # if unset: it defaulted to the IP\n"
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
        remaining = [r for r in pulumi.resources(s) if not r.get("type", "").startswith(ROOT_TYPES)]
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    protected = [r for r in remaining if r.get("protect")]
    if not remaining:
        print(f"{s} is empty: remove the stack with `pulumi stack rm {s}`")
        return 0
    print(f"Still in {s} ({len(protected)} protected):")
    for r in remaining:
        print(f"  {r['urn']}" + ("  [protected]" if r.get("protect") else ""))
    print("These hold data (snapshot them first: "
          f"`python -m operations.backup snapshot --stack {s} --include-cache`). To release one deliberately:")
    for r in protected:
        print(f"  pulumi state unprotect -s {s} {shlex.quote(r['urn'])}")
        print(f"  pulumi destroy -s {s} --target {shlex.quote(r['urn'])}")
        if r.get("type") == VOLUME_TYPE:
            # Data volumes are retained on delete: the destroy above only
            # forgets the volume; deleting it in OpenStack is a separate act.
            print(f"  openstack volume delete {shlex.quote(r.get('id') or '<volume id>')}"
                  "   # the volume stays in OpenStack until this")
    print(f"then `pulumi stack rm {s}` once nothing is left.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
