"""Offline render: `python -m components.render <stack> <outdir>`.

Runs the real program under mocks (components.offline) and writes every file
a host would receive as <outdir>/<hostname>/<absolute path>, the script each
remote command feeds to its host under <outdir>/<hostname>/.commands/, what a
local command runs on the operator's machine under <outdir>/local/.commands/
(with the deployment step's <name>.program-vars.yml, the vars it passes), plus
<outdir>/resources.txt (one line per resource), <outdir>/outputs.json and
<outdir>/inventory.yaml. cloud-init's user data lands where cloud-init keeps it.
No cloud credentials, no Pulumi CLI, no secret is needed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pulumi

from ..hostfiles import TYPE as HOSTFILES_TYPE
from ..offline import Recording, run_stack

# Inputs worth a reviewer's eye, per resource, in resources.txt.
KEY_PROPERTIES = ("name", "size", "flavorName", "imageName", "sourceVolId", "snapshotId", "volumeType",
                  "cidr", "fixedIps", "securityGroupIds", "direction", "protocol", "portRangeMin",
                  "portRangeMax", "remoteIpPrefix", "remoteGroupId", "floatingIp", "portId", "instanceId",
                  "volumeId", "triggers", "host")


def _describe(resource) -> str:
    props = {k: resource.inputs[k] for k in KEY_PROPERTIES if resource.inputs.get(k) not in (None, "", [])}
    opts = resource.options
    flags = [name for name, on in (("protect", opts.protect), ("delete_before_replace", opts.delete_before_replace),
                                   ("retain_on_delete", opts.retain_on_delete)) if on]
    if opts.ignore_changes:
        flags.append("ignore_changes=" + ",".join(opts.ignore_changes))
    return f"{resource.type}\t{resource.name}\t{json.dumps(props, sort_keys=True)}\t{' '.join(flags)}".rstrip()


def _command_host(recording: Recording, res) -> str:
    """The host a remote command runs its script on: its HostFiles
    component's host, else the host whose fixed address it connects to
    (through the proxy), else the proxy itself, reached without a jump."""
    parent = recording.by_urn(res.options.parent) if res.options.parent else None
    if parent is not None and parent.type == HOSTFILES_TYPE:
        return parent.inputs["host"]
    connection = res.inputs.get("connection") or {}
    hosts = recording.outputs.get("hosts") or []
    by_address = {h["fixedIp"]: h["name"] for h in hosts}
    if connection.get("host") in by_address:
        return by_address[connection["host"]]
    proxies = [h["name"] for h in hosts if h["role"] == "proxy"]
    if not connection.get("proxy") and len(proxies) == 1:
        return proxies[0]
    raise SystemExit(f"cannot tell which host remote command {res.name} runs on "
                     f"(connection to {connection.get('host')!r})")


def write_tree(recording: Recording, outdir: Path) -> list[Path]:
    """Write the recording's host files; returns the paths written."""
    written = []
    for res in recording.of_type(HOSTFILES_TYPE):
        host = res.inputs["host"]
        for f in res.inputs["files"]:
            target = outdir / host / f["path"].lstrip("/")
            if target.exists() and target.read_text() != f["content"]:
                raise SystemExit(f"two different versions of {host}:{f['path']} ({res.name})")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f["content"])
            target.chmod(int(f["mode"], 8))
            written.append(target)
    for res in recording.of_type("command:remote:Command"):
        if res.secret_inputs & {"stdin", "create"}:
            continue   # a secret's step (the TLS key): never written out, even as a placeholder
        target = outdir / _command_host(recording, res) / ".commands" / f"{res.name}.sh"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(res.inputs.get("stdin") or res.inputs.get("create") or "")
        written.append(target)
    # What runs on the operator's machine (the deployment playbooks).
    for res in recording.of_type("command:local:Command"):
        target = outdir / "local" / ".commands" / f"{res.name}.sh"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(res.inputs["create"])
        target.chmod(0o755)
        written.append(target)
        # The vars the program passes to the playbooks (not secret).
        program_vars = res.inputs.get("environment", {}).get("IDR_DEPLOYMENT_PROGRAM_VARS")
        if program_vars:
            vars_file = target.with_name(f"{res.name}.program-vars.yml")
            vars_file.write_text(program_vars)
            written.append(vars_file)
    # cloud-init keeps the user data it booted with at this path.
    for res in recording.of_type("openstack:compute/instance:Instance"):
        target = outdir / res.inputs["name"] / "var/lib/cloud/instance/user-data.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(res.inputs["userData"])
        written.append(target)
    if recording.outputs.get("inventory"):
        (outdir / "inventory.yaml").write_text(recording.outputs["inventory"])
    # Sorted: resources register concurrently, and a diff of two renders must show changes only.
    (outdir / "resources.txt").write_text("".join(sorted(_describe(r) + "\n" for r in recording.resources)))
    (outdir / "outputs.json").write_text(json.dumps(recording.outputs, indent=2, sort_keys=True) + "\n")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.render", description=__doc__.splitlines()[0])
    parser.add_argument("stack", help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="override one idr: key for this render only, e.g. --config bfcacheGeneration=2")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--config takes KEY=VALUE, got {item!r}")
        overrides[key] = value
    try:
        recording = run_stack(args.stack, overrides)
    except (pulumi.RunError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = write_tree(recording, args.outdir)
    print(f"{args.stack}: {len(recording.resources)} resources, {len(written)} files under {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
