"""A stand-in `pulumi` executable for the operator-command tests.

The operator commands drive Pulumi through pulumi.automation, whose
LocalWorkspace and Stack run the `pulumi` CLI found on PATH and read its
JSON. This stand-in sits at exactly that seam: the real Automation API code
builds the command lines (`up --yes --skip-preview --message ... --target ...
--policy-pack policy ...`), reads the JSON it prints, streams its output
through the API's reader threads and classifies its errors (a locked stack
becomes ConcurrentUpdateError). It also accepts an operator's command lines
(`pulumi config set K V -s S`), which the commands print as advice.

`install(tmp_path)` writes an executable named `pulumi` and returns a `World`
whose files are the stand-in's whole state: each stack's config, resources
and update history, and a fake Neutron (floating IP -> name of the port
holding it). The stand-in records every call but the API's `pulumi version`
probe, and fails on demand: `world.fail_at(n)` makes call number n exit 1
before doing anything, `world.fail_at(n, after=True)` after doing its work
(as an update that changed the cloud and then lost its connection).
`world.lock(stack)` makes updates, destroys and state edits of the stack
refuse as a locked stack does; `world.handshake()` makes every update and
destroy wait, after its first line of output, until the test has seen that
line (`world.ack()`), which only streamed output allows.

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
import json, os, sys, time
from pathlib import Path

HOME = Path(os.environ["FAKE_PULUMI_HOME"])
ASSOC = @ASSOC@
VOLUME = @VOLUME@

def load(p, default):
    return json.loads(p.read_text()) if p.exists() else default

def save(p, data):
    p.write_text(json.dumps(data, indent=1, sort_keys=True))

def die(msg):
    sys.exit(print(f"error: {msg}", file=sys.stderr) or 1)

argv = sys.argv[1:]
if argv == ["version"]:  # the Automation API's probe when it makes a workspace; not numbered
    if (HOME / "no-version").exists():
        die("injected failure of `pulumi version`")
    sys.exit(print("v3.272.0") or 0)
with open(HOME / "calls.jsonl", "a") as f:
    f.write(json.dumps(argv) + "\n")
number = sum(1 for _ in open(HOME / "calls.jsonl"))
fail = (HOME / "fail").read_text().strip() if (HOME / "fail").exists() else ""
fail_n, _, fail_when = fail.partition(":")
fail_now = fail_n.isdigit() and int(fail_n) == number
if fail_now and fail_when != "after":
    die(f"injected failure of call {number}")

# The Automation API's forms (`config set K --plaintext --stack S -- V`,
# `state unprotect --yes --stack S -- URN`) and an operator's (`config set K V -s S`).
VALUED = @VALUED@  # flags that take a value (tests/pulumi_standin.py VALUED)
args, flags, values = [], set(), {}
i, rest = 0, False
while i < len(argv):
    a = argv[i]
    if rest:
        args.append(a)
    elif a == "--":
        rest = True
    elif a in VALUED:
        values.setdefault(VALUED[a], []).append(argv[i + 1]); i += 1
    elif a.startswith("-"):
        flags.add(a)
    else:
        args.append(a)
    i += 1
for unwanted in ("event-log", "client"):  # the operations neither inline programs nor take engine events
    if unwanted in values:
        die(f"the stand-in does not serve --{unwanted}")
if "stack" not in values:
    die("no stack selected")
stack = values["stack"][-1].split("/")[-1]
spath = HOME / "stacks" / f"{stack}.json"
if not spath.exists():
    die(f"no stack named '{stack}' found")
st = load(spath, None)
neutron_path = HOME / "neutron.json"
neutron = load(neutron_path, {})
cfg = st["config"]
env = cfg.get("idr:environment") or stack
urn = (f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${ASSOC}::{env}-proxy-floating-ip")
assoc = next((r for r in st["resources"] if r["type"] == ASSOC), None)
out = ""

def say(line):  # the engine's output, line by line, as it happens
    print(line, flush=True)

def take_lock():
    # A DIY backend (the S3 bucket) refuses with its lock file; Pulumi Cloud with 409.
    kind = (HOME / "locks" / stack).read_text().strip() if (HOME / "locks" / stack).exists() else ""
    if kind == "cloud":
        die("[409] Conflict: Another update is currently in progress.")
    if kind:
        die("the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
            "delete the lock file with `pulumi cancel`.\n"
            f"  s3://idr-pulumi-state/.pulumi/locks/organization/idr/{stack}/0b1c2d.json: created by "
            "ops@bastion (pid 4242) at 2024-05-17T09:00:00Z")

def handshake():
    # Streaming proof: wait until the operator has seen the line above.
    if not (HOME / "handshake").exists():
        return
    ack = HOME / "handshake-ack"
    deadline = time.monotonic() + float((HOME / "handshake").read_text())
    while time.monotonic() < deadline:
        if ack.exists():
            ack.unlink()
            return
        time.sleep(0.02)
    die("nobody saw the engine's output while it ran (not streamed)")

def remember(kind):
    st.setdefault("history", []).append({"kind": kind, "message": values.get("message", [""])[-1],
                                         "flags": sorted(flags), "result": "succeeded"})

if args == ["config"]:
    out = json.dumps({k: {"value": v, "secret": False} for k, v in cfg.items()}
                     | {k: {"value": v if "--show-secrets" in flags else "[secret]", "secret": True}
                        for k, v in st.get("secrets", {}).items()})
elif args[:2] == ["config", "set"] and len(args) == 4:
    cfg[args[2]] = args[3]
elif args[:2] == ["config", "rm"] and len(args) == 3:
    cfg.pop(args[2], None)
elif args == ["stack", "select"]:
    pass
elif args == ["stack", "output"]:
    vols = {r["role"]: {"id": r["id"], "name": r["name"], "size": r["size"], "mount": r["mount"]}
            for r in st["resources"] if r["type"] == VOLUME}
    out = json.dumps({"environment": env, "floatingIp": cfg.get("idr:floatingIp", ""),
                      "floatingIpUrn": assoc["urn"] if assoc else "", "dataVolumes": vols})
elif args == ["stack", "export"]:
    out = json.dumps({"version": 3, "deployment": {"resources": st["resources"]}})
elif args == ["stack", "history"]:
    entries = []
    for n, h in enumerate(reversed(st.get("history", []))):
        entries.append({"kind": h["kind"], "message": h["message"], "result": h["result"], "environment": {},
                        "config": {}, "version": len(st["history"]) - n,
                        "startTime": "2024-05-17T09:00:00.000000Z", "endTime": "2024-05-17T09:01:00.000000Z"})
    out = json.dumps(entries[: int(values.get("page-size", ["0"])[-1]) or None])
elif args[:2] == ["state", "unprotect"] and len(args) == 3:
    take_lock()
    found = [r for r in st["resources"] if r["urn"] == args[2]]
    if not found:
        die(f"No such resource {args[2]!r} exists in the current state")
    found[0]["protect"] = False
elif args == ["up"]:
    take_lock()
    # The operator commands never update without the policy pack.
    if values.get("policy-pack") != ["policy"]:
        die("the stand-in refuses `pulumi up` without --policy-pack policy")
    targets = set(values.get("target", []))
    if targets != {urn}:
        die(f"unexpected targets {sorted(targets)} (the association is {urn})")
    say(f"Updating ({stack}):")
    handshake()
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
        say(f" - {urn} deleted")
    if want and have != want:
        neutron[want] = f"{env}-proxy"
        st["resources"].append({"urn": urn, "type": ASSOC, "protect": True, "inputs": {"floatingIp": want}})
        say(f" + {urn} created")
    remember("update")
    out = "Resources: updated"
elif args == ["destroy"]:
    take_lock()
    say(f"Destroying ({stack}):")
    handshake()
    if "--exclude-protected" not in flags and any(r["protect"] for r in st["resources"]):
        die("resource(s) are protected; use --exclude-protected")
    kept = [r for r in st["resources"] if r["protect"]]
    for r in st["resources"]:
        if not r["protect"]:
            say(f" - {r['urn']} deleted")
    remember("destroy")
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


VALUED = {"-s": "stack", "--stack": "stack", "--target": "target", "--policy-pack": "policy-pack",
          "-m": "message", "--message": "message", "--exec-kind": "exec-kind", "--page-size": "page-size",
          "--page": "page", "--color": "color", "--event-log": "event-log", "--client": "client"}
MUTATING = (("config", "set"), ("config", "rm"), ("state", "unprotect"), ("up",), ("destroy",))


@dataclass(frozen=True)
class Call:
    """One recorded command line, parsed as the stand-in parses it."""
    argv: tuple
    args: tuple          # positional words, including those after `--`
    flags: frozenset     # valueless flags
    values: dict         # flag name -> list of values ("stack", "target", "message", "policy-pack", ...)

    @property
    def stack(self) -> str:
        return self.values["stack"][-1]

    @property
    def mutating(self) -> bool:
        return any(self.args[:len(m)] == m for m in MUTATING)

    def short(self) -> tuple:
        """('up', urn, stack), ('config', 'set', key, value, stack), ...: the order tests' form."""
        if self.args == ("up",):
            return ("up", *self.values.get("target", []), self.stack)
        return (*self.args, self.stack)


def parse_call(argv: list[str]) -> Call:
    args, flags, values = [], set(), {}
    i, rest = 0, False
    while i < len(argv):
        a = argv[i]
        if rest:
            args.append(a)
        elif a == "--":
            rest = True
        elif a in VALUED:
            values.setdefault(VALUED[a], []).append(argv[i + 1])
            i += 1
        elif a.startswith("-"):
            flags.add(a)
        else:
            args.append(a)
        i += 1
    return Call(tuple(argv), tuple(args), frozenset(flags), values)


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
        """Every command line the stand-in ran, as given (the API's `version` probe aside)."""
        path = self.home / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def parsed(self) -> list[Call]:
        return [parse_call(c) for c in self.calls]

    def mutating(self) -> list[tuple]:
        """The changes made, in order, in Call.short() form."""
        return [c.short() for c in self.parsed if c.mutating]

    def clear_calls(self) -> None:
        (self.home / "calls.jsonl").write_text("")

    def history(self, stack: str) -> list[dict]:
        """The stack's updates and destroys, oldest first (kind, message, flags)."""
        return self.stack(stack).get("history", [])

    def lock(self, stack: str, kind: str = "diy") -> None:
        """'diy': the S3 backend's lock file message; 'cloud': Pulumi Cloud's 409."""
        (self.home / "locks").mkdir(exist_ok=True)
        (self.home / "locks" / stack).write_text(kind)

    def unlock(self, stack: str) -> None:
        (self.home / "locks" / stack).unlink(missing_ok=True)

    def handshake(self, seconds: float = 20.0) -> None:
        (self.home / "handshake").write_text(str(seconds))

    def ack(self) -> None:
        (self.home / "handshake-ack").write_text("")

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
    script = (SCRIPT.replace("@ASSOC@", repr(ASSOC_TYPE)).replace("@VOLUME@", repr(VOLUME_TYPE))
              .replace("@VALUED@", repr(VALUED)))
    exe.write_text(f"#!{sys.executable} -IS\n{script}")
    exe.chmod(0o755)
    (home / "calls.jsonl").write_text("")
    monkeypatch.setenv("FAKE_PULUMI_HOME", str(home))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return World(home, bindir)
