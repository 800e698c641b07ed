"""A stand-in `pulumi` executable for the operator-command tests.

`install(tmp_path)` writes an executable named `pulumi` and returns a `World`
whose files are the stand-in's whole state: each stack's config and
resources, and a fake Neutron (floating IP -> name of the port holding it).
The stand-in records every call, and fails on demand: `world.fail_at(n)`
makes call number n exit 1 before doing anything, `world.fail_at(n,
after=True)` after doing its work (as an update that changed the cloud and
then lost its connection).

Its `up --target <association>` does what the program and Neutron would:
the program's guard refuses an IP another environment's proxy holds, a
protected association refuses to be replaced or deleted, a replacement
deletes first, and a delete unbinds the IP wherever it is by then.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from operations.common import ASSOCIATION_TYPE as ASSOC_TYPE, VOLUME_TYPE

SCRIPT = r'''
import json, os, sys
from pathlib import Path

HOME = Path(os.environ["FAKE_PULUMI_HOME"])
ASSOC = @ASSOC@
VOLUME = @VOLUME@

def load(p, default):
    return json.loads(p.read_text()) if p.exists() else default

def save(p, data):
    p.write_text(json.dumps(data, indent=1, sort_keys=True))

argv = sys.argv[1:]
with open(HOME / "calls.jsonl", "a") as f:
    f.write(json.dumps(argv) + "\n")
number = sum(1 for _ in open(HOME / "calls.jsonl"))
fail = (HOME / "fail").read_text().strip() if (HOME / "fail").exists() else ""
fail_n, _, fail_when = fail.partition(":")
fail_now = fail_n.isdigit() and int(fail_n) == number
if fail_now and fail_when != "after":
    sys.exit(print(f"error: injected failure of call {number}", file=sys.stderr) or 1)

args, flags, stack = [], set(), None
i = 0
while i < len(argv):
    a = argv[i]
    if a in ("-s", "--stack"):
        stack = argv[i + 1]; i += 2; continue
    if a == "--target":
        flags.add(("target", argv[i + 1])); i += 2; continue
    if a == "--policy-pack":
        flags.add(("policy-pack", argv[i + 1])); i += 2; continue
    if a.startswith("-"):
        flags.add(a)
    else:
        args.append(a)
    i += 1
if stack is None:
    sys.exit(print("error: no stack selected", file=sys.stderr) or 1)
stack = stack.split("/")[-1]
spath = HOME / "stacks" / f"{stack}.json"
if not spath.exists():
    sys.exit(print(f"error: no stack named '{stack}' found", file=sys.stderr) or 1)
st = load(spath, None)
neutron_path = HOME / "neutron.json"
neutron = load(neutron_path, {})
cfg = st["config"]
env = cfg.get("idr:environment") or stack
urn = (f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${ASSOC}::{env}-proxy-floating-ip")
assoc = next((r for r in st["resources"] if r["type"] == ASSOC), None)
out = ""

def die(msg):
    sys.exit(print(f"error: {msg}", file=sys.stderr) or 1)

if args[:1] == ["config"] and len(args) == 1:
    out = json.dumps({k: {"value": v, "secret": False} for k, v in cfg.items()})
elif args[:2] == ["config", "set"]:
    cfg[args[2]] = args[3]
elif args[:2] == ["config", "rm"]:
    cfg.pop(args[2], None)
elif args[:2] == ["stack", "output"]:
    vols = {r["role"]: {"id": r["id"], "name": r["name"], "size": r["size"], "mount": r["mount"]}
            for r in st["resources"] if r["type"] == VOLUME}
    out = json.dumps({"environment": env, "floatingIp": cfg.get("idr:floatingIp", ""),
                      "floatingIpUrn": assoc["urn"] if assoc else "", "dataVolumes": vols})
elif args[:2] == ["stack", "export"]:
    out = json.dumps({"version": 3, "deployment": {"resources": st["resources"]}})
elif args[:2] == ["state", "unprotect"]:
    found = [r for r in st["resources"] if r["urn"] == args[2]]
    if not found:
        die(f"No such resource {args[2]!r} exists in the current state")
    found[0]["protect"] = False
elif args[:1] == ["up"]:
    # The operator commands never update without the policy pack.
    if ("policy-pack", "policy") not in flags:
        die("the stand-in refuses `pulumi up` without --policy-pack policy")
    targets = {f[1] for f in flags if isinstance(f, tuple) and f[0] == "target"}
    if targets != {urn}:
        die(f"unexpected targets {sorted(targets)} (the association is {urn})")
    want = cfg.get("idr:floatingIp", "")
    if not (cfg.get("idr:sshBastion") or want):
        die("config idr:sshBastion = '' is not allowed: required when floatingIp is empty")
    holder = neutron.get(want) if want else None
    if holder and holder != f"{env}-proxy":
        die(f"config idr:floatingIp = {want!r} is held by port {holder}")
    have = assoc["inputs"]["floatingIp"] if assoc else ""
    if assoc and have != want and assoc["protect"]:
        die(f"unable to {'replace' if want else 'delete'} resource {urn} as it is currently marked for protection")
    if assoc and have != want:
        neutron.pop(have, None)  # the association's delete unbinds the IP wherever it is
        st["resources"].remove(assoc)
    if want and have != want:
        neutron[want] = f"{env}-proxy"
        st["resources"].append({"urn": urn, "type": ASSOC, "protect": True, "inputs": {"floatingIp": want}})
    out = "Resources: updated"
elif args[:1] == ["destroy"]:
    if "--exclude-protected" not in flags and any(r["protect"] for r in st["resources"]):
        die("resource(s) are protected; use --exclude-protected")
    kept = [r for r in st["resources"] if r["protect"]]
    out = f"Resources: {len(st['resources']) - len(kept)} deleted"
    st["resources"] = kept
else:
    die(f"the stand-in does not know `pulumi {' '.join(argv)}`")

save(spath, st)
save(neutron_path, neutron)
if out:
    print(out)
if fail_now:
    sys.exit(print(f"error: injected failure of call {number} (after its work)", file=sys.stderr) or 1)
'''


def stack_state(stack: str, config: dict, floating_ip: str = "", env: str = "") -> dict:
    env = env or stack
    resources = [{"urn": f"urn:pulumi:{stack}::idr::pulumi:pulumi:Stack::idr-{stack}", "type": "pulumi:pulumi:Stack",
                  "protect": False},
                 {"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment::{env}",
                  "type": "idr:environment:IdrEnvironment", "protect": False},
                 {"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment$openstack:networking/port:Port"
                         f"::{env}-omeroreadonly-1", "type": "openstack:networking/port:Port", "protect": False}]
    # What a data volume hangs on is protected by the program (components/server.py, network.py).
    for rtype, name in (("openstack:networking/network:Network", f"{env}-network"),
                        ("openstack:networking/subnet:Subnet", f"{env}-subnet"),
                        ("openstack:networking/port:Port", f"{env}-proxy"),
                        ("openstack:compute/instance:Instance", f"{env}-database"),
                        ("openstack:compute/volumeAttach:VolumeAttach", f"{env}-database-data")):
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${rtype}::{name}",
                          "type": rtype, "protect": True})
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
        name = f"{env}-{role}-data"
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${VOLUME_TYPE}::{name}",
                          "type": VOLUME_TYPE, "protect": True, "role": role, "name": name, "size": size,
                          "id": f"vol-{env}-{role}", "mount": {"omeroreadwrite": "/data", "database": "/var/lib/pgsql",
                                                               "proxy": "/var/cache/nginx"}[role]})
    if floating_ip:
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${ASSOC_TYPE}"
                                 f"::{env}-proxy-floating-ip",
                          "type": ASSOC_TYPE, "protect": True, "inputs": {"floatingIp": floating_ip}})
    return {"config": dict(config, **({"idr:floatingIp": floating_ip} if floating_ip else {})),
            "resources": resources}


@dataclass
class World:
    home: Path
    bin: Path

    def add_stack(self, stack: str, floating_ip: str = "", config: dict | None = None) -> None:
        (self.home / "stacks" / f"{stack}.json").write_text(
            json.dumps(stack_state(stack, config or {}, floating_ip), indent=1))
        if floating_ip:
            self.set_neutron(floating_ip, f"{stack}-proxy")

    def stack(self, stack: str) -> dict:
        return json.loads((self.home / "stacks" / f"{stack}.json").read_text())

    def config(self, stack: str) -> dict:
        return self.stack(stack)["config"]

    def association(self, stack: str) -> dict | None:
        return next((r for r in self.stack(stack)["resources"] if r["type"] == ASSOC_TYPE), None)

    @property
    def neutron(self) -> dict:
        path = self.home / "neutron.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_neutron(self, ip: str, port_name: str | None) -> None:
        data = self.neutron
        if port_name:
            data[ip] = port_name
        else:
            data.pop(ip, None)
        (self.home / "neutron.json").write_text(json.dumps(data))

    @property
    def calls(self) -> list[list[str]]:
        path = self.home / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def clear_calls(self) -> None:
        (self.home / "calls.jsonl").write_text("")

    def fail_at(self, n: int | None, after: bool = False) -> None:
        path = self.home / "fail"
        if n is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{n}:after" if after else str(n))

    def snapshot(self) -> dict:
        """Everything the stand-in knows, for comparisons."""
        return {"stacks": {p.stem: json.loads(p.read_text()) for p in sorted((self.home / "stacks").glob("*.json"))},
                "neutron": self.neutron}


def install(tmp_path: Path, monkeypatch) -> World:
    """Write the stand-in, put it first on PATH, and point it at a fresh state."""
    home = tmp_path / "pulumi-home"
    (home / "stacks").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "pulumi"
    # -I -S: no site packages or environment, so each call starts fast.
    # The stand-in runs isolated (-IS): it gets the type tokens as literals.
    script = SCRIPT.replace("@ASSOC@", repr(ASSOC_TYPE)).replace("@VOLUME@", repr(VOLUME_TYPE))
    exe.write_text(f"#!{sys.executable} -IS\n{script}")
    exe.chmod(0o755)
    (home / "calls.jsonl").write_text("")
    monkeypatch.setenv("FAKE_PULUMI_HOME", str(home))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return World(home, bindir)
