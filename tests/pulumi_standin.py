"""A stand-in `pulumi` executable, and a stand-in Neutron, for the operator-command tests.

The operator commands drive Pulumi through pulumi.automation, whose
LocalWorkspace and Stack run the `pulumi` CLI found on PATH and read its
JSON. This stand-in sits at exactly that seam: the real Automation API code
builds the command lines (`up --yes --skip-preview --message ... --target ...
--policy-pack policy ...`), reads the JSON it prints, streams its output
through the API's reader threads and classifies its errors (a locked stack
becomes ConcurrentUpdateError). It also accepts an operator's command lines
(`pulumi config set K V -s S`), which the commands print as advice, and
behaves as the real CLI does where that matters here:
- non-interactive (no terminal): `up` and `destroy` refuse without --yes or
  --skip-preview, state edits and `stack rm` without --yes, each with the
  CLI's words;
- `config set` stores the value as the string given (the CLI writes every
  top-level value as a string); `World.stack_file` writes Pulumi.<stack>.yaml
  from that, values from the repository's file keeping their type;
- `stack output` answers from the last update, not from config: the
  outputs of the stack resource (none when the state has none);
- `destroy --exclude-protected` keeps the protected resources and what they
  hang on, transitively: parents (the environment component), providers,
  dependencies (pulumi's separateProtected); a plain `destroy` refuses while
  anything is protected and empties the state otherwise; `destroy --target`
  deletes that resource alone; `stack rm` refuses a stack with resources.

`install(tmp_path)` writes an executable named `pulumi` and returns a `World`
whose files are the stand-in's whole state: each stack's config, resources,
outputs and update history, and the fake Neutron (floating IP -> name of the
port holding it) with its event log. The stand-in records every call but the
API's `pulumi version` probe, and fails on demand: `world.fail_at(n)` makes
call number n exit 1 before doing anything, `world.fail_at(n, after=True)`
after doing its work (as an update that changed the cloud and then lost its
connection). `world.lock(stack)` makes updates, destroys and state edits of
the stack refuse as a locked stack does; `world.handshake()` makes every
update and destroy wait, after its first line of output, until the test has
seen that line (`world.ack()`), which only streamed output allows.

The project is the repository's Pulumi.yaml and stack files (`install`
converts them to JSON). `stack init` starts from the stack's file, `config
set --secret` stores a secret (read from stdin when no value is given), and,
as the CLI does, `pulumi config` and `config get` apply the project's
defaults and name the keys that are missing (config.go ApplyProjectConfig).
Every `up` first applies the CLI's config validation (project_config_error,
stack_config_error below, each rule cited to Pulumi's source), then the
engine's targeting rules (target_plan: an untargeted resource keeps its old
state and the old resources it depends on; an untargeted delete is refused;
--target-dependents is refused, nothing uses it). A stack made by
`World.add_deployed` holds every resource the project's program declares
(run offline), remote commands with their dependencies included; `up`
without --target writes what the program declares.

Its `up` does to the association what the program, the provider and
Neutron would:
- the program (components/floatingip.py): refuses an IP another
  environment's proxy holds, unless this stack's swap record (config
  `idrswap:state`, in progress, direct order) moves that IP here from that
  environment; declares the association retain-on-delete while the record
  hands this stack's IP over; refuses an empty idr:floatingIp without
  idr:sshBastion;
- the engine: a protected association refuses to be replaced or deleted, a
  replacement deletes first, a "same" step writes the goal's options
  (protect, retainOnDelete) to the state, a retained resource leaves the
  state without its Delete, each step's line is printed when it starts and
  when it ends (`creating (0s)`, `created (0s)`), and the stack's outputs are
  those of this update;
- the provider: Create is one update of the floating IP with the port; Delete
  unbinds the IP wherever it is by then;
- Neutron (neutron/db/l3_db.py): one floating IP per fixed IP (a port already
  holding one refuses another: FloatingIPPortAlreadyAssociated, 409); an
  associated IP moves to another port in one update, during which it
  answers nothing for `move_seconds` (the dataplane switching; 0 by
  default); `world.refuse_moves()` makes it refuse such a move instead, as a
  cloud that does not re-associate would.
Every bind and unbind is appended to the event log with its time
(`World.unbound_spans`). `program_seconds` is how long an update runs before
it reaches the association (the program and the engine's start).
"""
from __future__ import annotations

import base64
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from operations.common import ASSOCIATION_TYPE as ASSOC_TYPE, VOLUME_TYPE

SCRIPT = r'''
import json, os, re, sys, time
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
settings = load(HOME / "settings.json", {})

# The Automation API's forms (`config set K --plaintext --stack S -- V`,
# `state unprotect --yes --stack S -- URN`) and an operator's (`config set K V -s S`).
VALUED = @VALUED@  # flags that take a value (tests/pulumi_standin.py VALUED)
@PARSE_ARGV@
# The CLI's config rules and the engine's --target rules (tests/pulumi_standin.py, cited there).
@RULES@
args, flags, values = parse_argv(argv, VALUED)
for unwanted in ("event-log", "client"):  # the operations neither inline programs nor take engine events
    if unwanted in values:
        die(f"the stand-in does not serve --{unwanted}")
if "--target-dependents" in flags:
    die("the stand-in does not serve --target-dependents (nothing here uses it)")
# Pulumi.yaml (name and config block) and the repository's stack files, as JSON.
PROJECT = load(HOME / "project.json", {"name": "idr", "config": {}, "stack_files": {}})
if args[:1] == ["login"]:
    sys.exit(print("Logged in to the stand-in backend") or 0)
if "stack" not in values:
    die("no stack selected")
stack = values["stack"][-1].split("/")[-1]
spath = HOME / "stacks" / f"{stack}.json"
if args[:2] == ["stack", "init"]:
    if spath.exists():
        die(f"stack '{stack}' already exists")
    # A stack file that exists already (this repository's) keeps its config.
    save(spath, {"config": dict(PROJECT["stack_files"].get(stack, {})), "secrets": {}, "resources": []})
    sys.exit(print(f"Created stack '{stack}'") or 0)
if not spath.exists():
    die(f"no stack named '{stack}' found")
st = load(spath, None)
cfg = st["config"]
secrets = st.setdefault("secrets", {})

def with_defaults():
    """`pulumi config` and `config get` apply the project's defaults (config.go ApplyProjectConfig)."""
    try:
        return apply_project_config(stack, PROJECT, {**cfg, **secrets})
    except CliRefusal as refusal:
        die(str(refusal))
env = cfg.get("idr:environment") or stack
urn = (f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${ASSOC}::{env}-proxy-floating-ip")
assoc = next((r for r in st["resources"] if r["type"] == ASSOC), None)
out = ""
yes = bool({"--yes", "-y"} & flags) or os.environ.get("PULUMI_SKIP_CONFIRMATIONS", "").lower() in ("1", "true")
skip_preview = "--skip-preview" in flags

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

def remember(kind, result="succeeded"):
    st.setdefault("history", []).append({"kind": kind, "message": values.get("message", [""])[-1],
                                         "flags": sorted(flags), "result": result})

def display(value):
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

# ------------------------------------------------------------------ Neutron
NEUTRON = HOME / "neutron.json"
EVENTS = HOME / "neutron-events.jsonl"

def neutron():
    return load(NEUTRON, {})

def neutron_set(ip, port, why):
    data = neutron()
    if port:
        data[ip] = port
    else:
        data.pop(ip, None)
    NEUTRON.write_text(json.dumps(data))
    with open(EVENTS, "a") as f:
        f.write(json.dumps({"t": time.time(), "ip": ip, "port": port, "why": why}) + "\n")

def load_events():
    return [json.loads(x) for x in EVENTS.read_text().splitlines()] if EVENTS.exists() else []

def fip_id(ip):
    return "fip-" + ip.replace(".", "-")

def provider_error(op, ip, port, status, kind, message):
    # terraform-provider-openstack's words around gophercloud's for a refused PUT.
    st["history"] = st.get("history", [])
    remember("update", "failed")
    save(spath, st)
    body = json.dumps({"NeutronError": {"type": kind, "message": message, "detail": ""}})
    die(f"{op} {urn}: 1 error occurred:\n\t* Error associating openstack_networking_floatingip_associate_v2 "
        f"floating_ip {fip_id(ip)} with port port-{port}: Expected HTTP response code [200] when accessing "
        f"[PUT https://neutron.example.org:9696/v2.0/floatingips/{fip_id(ip)}], but got {status} instead: {body}")

def associate(ip, port):
    """The provider's Create: PUT /v2.0/floatingips/{id} with port_id."""
    data = neutron()
    others = sorted(a for a, p in data.items() if p == port and a != ip)
    if others:
        provider_error("creating", ip, port, 409, "FloatingIPPortAlreadyAssociated",
                       f"Cannot associate floating IP {ip} ({fip_id(ip)}) with port port-{port} using fixed IP "
                       f"192.168.1.10, as that fixed IP already has a floating IP on external network public.")
    holder = data.get(ip)
    if holder == port:
        return
    if holder:
        if settings.get("refuse_moves"):
            provider_error("creating", ip, port, 409, "FloatingIPAssociated",
                           f"Floating IP {ip} is associated with port port-{holder}: disassociate it first.")
        # One update: the old binding goes, the new one comes; the dataplane
        # switches in between.
        neutron_set(ip, None, f"move from {holder}")
        time.sleep(float(settings.get("move_seconds", 0)))
        neutron_set(ip, port, f"move to {port}")
        return
    neutron_set(ip, port, "associate")

def disassociate(ip):
    """The provider's Delete: PUT /v2.0/floatingips/{id} with port_id null, wherever the IP is."""
    if ip in neutron():
        neutron_set(ip, None, "disassociate")

# ------------------------------------------------------------------ program
def swap_record():
    try:
        r = json.loads(cfg.get("idrswap:state") or "null")
    except ValueError:
        return None
    if isinstance(r, dict) and r.get("status") == "in-progress" and r.get("order") == "direct":
        return r
    return None

def outputs(want):
    vols = {r["role"]: {"id": r["id"], "name": r["name"], "size": r["size"], "mount": r["mount"]}
            for r in st["resources"] if r["type"] == VOLUME}
    return {"environment": env, "floatingIp": want, "floatingIpUrn": urn if want else "", "dataVolumes": vols}

def line(sign, verb):
    say(f" {sign}  openstack:networking:FloatingIpAssociate {env}-proxy-floating-ip {verb} (0s) ")

def ancestors(resources):
    """What protected resources keep with them (pulumi's separateProtected):
    parents, providers and dependencies, transitively."""
    by_urn = {r["urn"]: r for r in resources}
    keep, todo = set(), [r["urn"] for r in resources if r.get("protect")]
    while todo:
        u = todo.pop()
        if u in keep or u not in by_urn:
            continue
        keep.add(u)
        r = by_urn[u]
        todo += [x for x in [r.get("parent"), r.get("provider"), *r.get("dependencies", [])] if x]
    return keep

if args == ["config"]:
    merged = with_defaults()
    out = json.dumps({k: {"value": json.dumps(v) if isinstance(v, (list, dict)) else display(v), "secret": False}
                      for k, v in merged.items() if k not in secrets}
                     | {k: {"value": v if "--show-secrets" in flags else "[secret]", "secret": True}
                        for k, v in secrets.items()})
elif args[:2] == ["config", "set"] and len(args) in (3, 4):
    # No value given: the CLI reads it from stdin (`... --secret K < file`).
    value = args[3] if len(args) == 4 else sys.stdin.read()
    if "--secret" in flags:
        secrets[args[2]] = value
        cfg.pop(args[2], None)
    else:
        cfg[args[2]] = value   # the CLI writes every top-level value as a string
        secrets.pop(args[2], None)
elif args[:2] == ["config", "get"] and len(args) == 3:
    merged = with_defaults()
    if args[2] not in merged:
        die(f"configuration key '{args[2]}' not found for stack '{stack}'")
    out = merged[args[2]] if args[2] in secrets else display(merged[args[2]])
elif args[:2] == ["config", "rm"] and len(args) == 3:
    cfg.pop(args[2], None)
    secrets.pop(args[2], None)
elif args == ["stack", "select"]:
    pass
elif args[:2] == ["stack", "output"] and len(args) <= 3:
    # The outputs live on the stack resource: none without it (never deployed, or destroyed).
    rooted = any(r["type"] == "pulumi:pulumi:Stack" for r in st["resources"])
    outs = st.get("outputs", {}) if rooted else {}
    if len(args) == 3:  # one output, as text
        if args[2] not in outs:
            die(f"current stack does not have output property '{args[2]}'")
        out = outs[args[2]] if isinstance(outs[args[2]], str) else json.dumps(outs[args[2]])
    else:
        out = json.dumps(outs)
elif args == ["stack", "export"]:
    out = json.dumps({"version": 3, "deployment": {"resources": st["resources"]}})
elif args == ["stack", "history"]:
    entries = []
    for n, h in enumerate(reversed(st.get("history", []))):
        entries.append({"kind": h["kind"], "message": h["message"], "result": h["result"], "environment": {},
                        "config": {}, "version": len(st["history"]) - n,
                        "startTime": "2024-05-17T09:00:00.000000Z", "endTime": "2024-05-17T09:01:00.000000Z"})
    out = json.dumps(entries[: int(values.get("page-size", ["0"])[-1]) or None])
elif args == ["stack", "rm"]:
    if not yes:
        die("--yes must be passed in to proceed when running in non-interactive mode")
    if st["resources"] and "--force" not in flags:
        die(f"'{stack}' still has resources; removal rejected; pass --force to override")
    spath.unlink()
    sys.exit(print(f"Stack '{stack}' has been removed!") or 0)
elif args[:2] == ["state", "unprotect"] and len(args) == 3:
    if not yes:
        die("--yes must be passed in to proceed when running in non-interactive mode")
    take_lock()
    found = [r for r in st["resources"] if r["urn"] == args[2]]
    if not found:
        die(f"No such resource {args[2]!r} exists in the current state")
    found[0]["protect"] = False
elif args == ["up"]:
    if not (yes or skip_preview):
        die("--yes or --skip-preview must be passed in to proceed when running in non-interactive mode")
    take_lock()
    # The operator commands never update without the policy pack.
    if values.get("policy-pack") != ["policy"]:
        die("the stand-in refuses `pulumi up` without --policy-pack policy")
    # The CLI checks the project and the stack's config before the engine starts
    # (project.go Project.Validate; config.go ValidateStackConfigAndApplyProjectConfig).
    problem = project_config_error(PROJECT) or stack_config_error(stack, PROJECT, {**cfg, **secrets}, set(secrets))
    if problem:
        die(f"validating stack config: {problem}")
    targets = set(values.get("target", []))
    say(f"Updating ({stack}):")
    handshake()
    time.sleep(float(settings.get("program_seconds", 0)))
    want = cfg.get("idr:floatingIp", "")
    if not (cfg.get("idr:sshBastion") or want):
        die("config idr:sshBastion = '' is not allowed: an address of the proxy for SSH; required when "
            "floatingIp is empty")
    record = swap_record()
    holder = neutron().get(want) if want else None
    if holder and holder != f"{env}-proxy":
        holder_env = holder[: -len("-proxy")] if holder.endswith("-proxy") else None
        taking = (record is not None and str(record.get("to_stack", "")).split("/")[-1] == stack
                  and record.get("public_ip") == want and holder_env and record.get("from_env") == holder_env)
        if not taking:
            die(f"config idr:floatingIp = {want!r} is held by port {holder}")
    retain = (record is not None and str(record.get("from_stack", "")).split("/")[-1] == stack
              and record.get("public_ip") == want and bool(want))
    # What the program declares: its resources as the stack's "program" lists
    # them (what the code of the project registers; by default what the state
    # holds), and the association when idr:floatingIp names an IP.
    program = st.get("program") or [r for r in st["resources"] if r["type"] != ASSOC]
    declared = [r["urn"] for r in program] + ([urn] if want else [])
    if targets:
        try:
            kept, deleted = target_plan(st["resources"], declared, targets)
        except CliRefusal as refusal:
            die(str(refusal))
    else:
        kept, deleted = set(), {r["urn"] for r in st["resources"] if r["urn"] not in declared}
    have = assoc["inputs"]["floatingIp"] if assoc else ""
    if assoc and urn in kept:
        pass  # untargeted dependents keep its old state: no step at all for it
    elif assoc and have != want and (want or urn in deleted) and assoc["protect"]:
        die(f"unable to {'replace' if want else 'delete'} resource {urn} as it is currently marked for protection")
    elif assoc and have != want and (want or urn in deleted):
        line("-", "deleting")
        if not assoc.get("retainOnDelete"):
            disassociate(have)  # the association's delete unbinds the IP wherever it is
        st["resources"].remove(assoc)
        save(spath, st)
        line("-", "deleted")
        assoc = None
    if want and assoc is None and (not targets or urn in targets):
        line("+", "creating")
        associate(want, f"{env}-proxy")
        st["resources"].append({"urn": urn, "type": ASSOC, "protect": True, "retainOnDelete": retain,
                                "parent": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment::{env}",
                                "provider": f"urn:pulumi:{stack}::idr::pulumi:providers:openstack::default",
                                "inputs": {"floatingIp": want}})
        line("+", "created")
    elif assoc and want and (not targets or urn in targets) and urn not in kept \
            and not settings.get("same_keeps_options"):  # a "same" step writes the goal's options
        assoc["protect"], assoc["retainOnDelete"] = True, retain
    # Remote commands store their connection; a full update with another
    # bastion address runs each command's `update` over SSH to it
    # (pulumi-command: a changed connection re-runs), which must reach this
    # environment's proxy: an IP on no port, or another's, does not answer.
    bastion = cfg.get("idr:sshBastion") or want
    ips = set(neutron()) | {e["ip"] for e in load_events()}
    if not targets and any(r["type"] == "command:remote:Command" for r in program) \
            and bastion != st.get("bastion") and bastion in ips and neutron().get(bastion) != f"{env}-proxy":
        remember("update", "failed")
        save(spath, st)
        die(f"{env}-proxy-etc-hosts: dial tcp {bastion}:22: i/o timeout (the stored connections move to "
            f"{bastion}, which {'is bound to ' + neutron()[bastion] if bastion in neutron() else 'is bound to no port'})")
    if not targets:
        st["bastion"] = bastion
    # The other resources: an untargeted one keeps its old state (dependencies
    # included); a targeted one, or every one in a full update, takes the
    # program's goal; deletes as planned.
    goals = {r["urn"]: r for r in program}
    st["resources"] = [goals[r["urn"]] if r["urn"] in goals and (not targets or r["urn"] in targets) else r
                       for r in st["resources"] if r["urn"] == urn or r["urn"] not in deleted]
    present = {r["urn"] for r in st["resources"]}
    st["resources"] += [r for u, r in goals.items() if u not in present and (not targets or u in targets)]
    root = f"urn:pulumi:{stack}::idr::pulumi:pulumi:Stack::idr-{stack}"
    if not any(r["type"] == "pulumi:pulumi:Stack" for r in st["resources"]):  # a first update creates it
        st["resources"].insert(0, {"urn": root, "type": "pulumi:pulumi:Stack", "protect": False})
    st["outputs"] = outputs(want)
    remember("update")
    out = "Resources: updated"
elif args == ["destroy"]:
    if not (yes or skip_preview):
        die("--yes or --skip-preview or --preview-only must be passed in to proceed when running in "
            "non-interactive mode")
    take_lock()
    say(f"Destroying ({stack}):")
    handshake()
    resources = st["resources"]
    targets = set(values.get("target", []))
    if "--exclude-protected" in flags:
        kept = ancestors(resources)
        doomed = [r for r in resources if r["urn"] not in kept]
    elif targets:
        doomed = [r for r in resources if r["urn"] in targets]
        for r in doomed:
            if r.get("protect"):
                die(f"unable to delete resource {r['urn']} as it is currently marked for protection")
            hangers = [x["urn"] for x in resources if x["urn"] not in targets
                       and r["urn"] in [x.get("parent"), x.get("provider"), *x.get("dependencies", [])]]
            if hangers:
                die(f"resource {r['urn']} cannot be deleted alone: {hangers[0]} depends on it")
    else:
        if any(r.get("protect") for r in resources):
            die("resource(s) are protected; use --exclude-protected")
        doomed = list(resources)
    for r in reversed(doomed):
        if r["type"] == ASSOC and not r.get("retainOnDelete"):
            disassociate(r["inputs"]["floatingIp"])
        say(f" - {r['urn']} deleted")
    gone = {r["urn"] for r in doomed}
    st["resources"] = [r for r in resources if r["urn"] not in gone]
    if not st["resources"]:
        st["outputs"] = {}  # the stack resource went too
    remember("destroy")
    out = f"Resources: {len(doomed)} deleted"
else:
    die(f"the stand-in does not know `pulumi {' '.join(argv)}`")

save(spath, st)
if out:
    print(out)
if fail_now:
    sys.exit(print(f"error: injected failure of call {number} (after its work)", file=sys.stderr) or 1)
'''


VALUED = {"-s": "stack", "--stack": "stack", "--target": "target", "--policy-pack": "policy-pack",
          "-m": "message", "--message": "message", "--exec-kind": "exec-kind", "--page-size": "page-size",
          "--page": "page", "--color": "color", "--event-log": "event-log", "--client": "client",
          "--secrets-provider": "secrets-provider"}
MUTATING = (("config", "set"), ("config", "rm"), ("state", "unprotect"), ("up",), ("destroy",), ("stack", "rm"))


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


def parse_argv(argv, valued):
    """(positional words, valueless flags, {flag name: [values]}); `stack rm S` names its stack.
    The stand-in's own parser too: its source is pasted into SCRIPT."""
    args, flags, values = [], set(), {}
    i, rest = 0, False
    while i < len(argv):
        a = argv[i]
        if rest:
            args.append(a)
        elif a == "--":
            rest = True
        elif a in valued:
            values.setdefault(valued[a], []).append(argv[i + 1])
            i += 1
        elif a.startswith("-"):
            flags.add(a)
        else:
            args.append(a)
        i += 1
    if args[:2] in (["stack", "rm"], ["stack", "init"]) and len(args) == 3:
        values.setdefault("stack", []).append(args.pop())
    return args, flags, values


# ---------------------------------------------------------------------------
# The Pulumi CLI's config rules and the engine's --target rules, as pure
# functions of plain data (stdlib only: their source is pasted into SCRIPT,
# which runs isolated, and tests call them directly). Each rule cites the
# Pulumi source it comes from (github.com/pulumi/pulumi).

class CliRefusal(Exception):
    """What the CLI or the engine refuses, in its words."""


def cli_value_ok(kind, items, value):
    """sdk/go/common/workspace/project.go ValidateConfigValue."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        # An int, a whole float (values from YAML or JSON), or a string strconv.Atoi reads.
        if isinstance(value, bool):
            return False
        if isinstance(value, int) or (isinstance(value, float) and value == int(value)):
            return True
        return isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value) is not None \
            and abs(int(value)) < 2**63
    if kind == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    # An array is a list whose items match `items`; any other type name fails.
    if not isinstance(value, list) or items is None:
        return False
    return all(cli_value_ok(items.get("type"), items.get("items"), item) for item in value)


def _type_name(kind, items):
    """project.go InferFullTypeName."""
    return f"array<{_type_name(items.get('type'), items.get('items'))}>" if items is not None else kind


def project_config_error(project):
    """project.go Project.Validate, for the `config:` block: None or the error."""
    name = project["name"]
    for key, decl in (project.get("config") or {}).items():
        decl = decl if isinstance(decl, dict) else {"value": decl}
        if decl.get("default") is not None and decl.get("value") is not None:
            return f"project config '{key}' cannot have both a 'default' and 'value' attribute"
        if ":" in key and not key.startswith(name + ":"):
            continue  # another namespace: a value only (not used here)
        typed = "type" in decl
        if typed and decl["type"] not in ("string", "integer", "boolean", "array"):
            return f"#/config/{key}/type: value must be one of 'string', 'integer', 'boolean', 'array'"  # ProjectSchema
        if typed and decl["type"] == "array" and decl.get("items") is None:
            return (f"The configuration key '{key}' declares an array but does not specify the underlying type via "
                    f"the 'items' attribute")
        if typed and decl.get("default") is not None and \
                not cli_value_ok(decl["type"], decl.get("items"), decl["default"]):
            return (f"The default value specified for configuration key '{key}' is not of the expected type "
                    f"'{_type_name(decl['type'], decl.get('items'))}'")
    return None


def _as_config_value(value):
    """config.Value as the CLI holds it: a scalar as its text (createConfigValue: fmt "%v";
    a stack file's YAML scalar likewise), a list or map as an object (JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.loads(json.dumps(value))
    return "" if value is None else str(value)


def apply_project_config(stack, project, config):
    """config.go mergeConfig (also `ApplyProjectConfig`, which `pulumi config`
    and `config get` run): the stack's values with the project's defaults
    applied, as plain values. A key of the project's namespace declared with
    neither default nor value, and not on the stack, is missing; all are named
    in one error."""
    name, merged, missing = project["name"], dict(config), []
    for key in sorted(project.get("config") or {}):
        decl = project["config"][key] if isinstance(project["config"][key], dict) else {"value": project["config"][key]}
        full = key if ":" in key else f"{name}:{key}"
        has_default, has_value = decl.get("default") is not None, decl.get("value") is not None
        if full not in merged and not has_value and not has_default and full.split(":")[0] == name:
            missing.append(key)
            continue
        if full not in merged and (has_value or has_default):
            merged[full] = _as_config_value(decl["default"] if has_default else decl["value"])
    if missing:
        missing.sort()
        names = f"'{missing[0]}'" if len(missing) == 1 else \
            "".join(f"'{k}', " for k in missing[:-2]) + f"'{missing[-2]}' and '{missing[-1]}'"
        raise CliRefusal(f"Stack '{stack}' is missing configuration value{'s' if len(missing) > 1 else ''} {names}")
    return merged


def stack_config_error(stack, project, config, secure):
    """config.go ValidateStackConfigAndApplyProjectConfig: mergeConfig, then
    validateStackConfigValues / validateStackConfigValue for every key with an
    explicit type: a secret must be encrypted on the stack (a default applied
    above is plain, so a declared secret with a default is always refused),
    and the value must be of the type. Keys the project does not declare are
    not checked. `config`: key -> value (text, or YAML-typed from a stack
    file; a secret's decrypted text); `secure`: the keys encrypted on the
    stack. None, or the CLI's error (it prints `validating stack config: <error>`)."""
    try:
        merged = apply_project_config(stack, project, config)
    except CliRefusal as refusal:
        return str(refusal)
    for key in sorted(project.get("config") or {}):
        decl = project["config"][key]
        if not isinstance(decl, dict) or "type" not in decl:
            continue
        full = key if ":" in key else f"{project['name']}:{key}"
        if decl.get("secret") and full not in secure:
            return f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret"
        if not cli_value_ok(decl["type"], decl.get("items"), _as_config_value(merged.get(full, ""))):
            return (f"Stack '{stack}' with configuration key '{key}' must be of type "
                    f"'{_type_name(decl['type'], decl.get('items'))}'")
    return None


def _dependencies(r):
    """resource.State.GetAllDependencies: parent, dependencies, property dependencies, deleted-with."""
    props = [u for us in (r.get("propertyDependencies") or {}).values() for u in us]
    return [u for u in [r.get("parent"), *(r.get("dependencies") or []), *props, r.get("deletedWith")] if u]


def target_plan(olds, declared, targets):
    """What `pulumi up --target` (no --target-dependents) keeps and deletes,
    by pkg/resource/deploy/step_generator.go. `olds`: the state's resources;
    `declared`: URNs the program registers; `targets`: the --target URNs.
    Returns (kept, deleted): URNs of old resources whose old state is copied
    as it is, and those deleted. Raises CliRefusal for an untargeted delete.
    - generateSteps, "if !isTargeted": a declared resource that is not
      targeted gets a SameStep with its OLD state (old dependencies kept),
      and getDependencySteps emits a SameStep for every old dependency
      (parent, dependencies, property dependencies, deleted-with) that has no
      step of its own, transitively. A dependency the program no longer
      declares is therefore kept, even when it is a target.
    - GenerateDeletes: an old resource neither declared nor kept is a delete
      candidate; determineAllowedResourcesToDeleteFromTargets keeps only the
      targets and what depends on them (getTargetDependents); any of those
      that is not itself a target bails the update
      (GetResourceWillBeDestroyedButWasNotSpecifiedInTargetList). The other
      candidates stay in the state untouched."""
    old = {r["urn"]: r for r in olds}
    declared, targets = set(declared), set(targets)
    kept, todo = set(), [u for u in old if u in declared and u not in targets]
    while todo:
        u = todo.pop()
        if u in kept:
            continue
        kept.add(u)
        todo += [d for d in _dependencies(old[u]) if d in old and not (d in declared and d in targets)]
    allowed, todo = set(), [u for u in old if u in targets]
    while todo:
        u = todo.pop()
        if u in allowed:
            continue
        allowed.add(u)
        todo += [r["urn"] for r in olds if u in _dependencies(r)]
    deleted = [u for u in old if u not in declared and u not in kept and u in allowed]
    for u in deleted:
        if u not in targets:
            raise CliRefusal(f"Resource '{u}' will be destroyed but was not specified in --target list.\n"
                             f"Either include resource in --target list or pass --target-dependents to proceed.")
    return kept, set(deleted)


RULES = (CliRefusal, cli_value_ok, _type_name, project_config_error, _as_config_value, apply_project_config,
         stack_config_error, _dependencies, target_plan)


def parse_call(argv: list[str]) -> Call:
    args, flags, values = parse_argv(argv, VALUED)
    return Call(tuple(argv), tuple(args), frozenset(flags), values)


def stack_state(stack: str, config: dict, floating_ip: str = "", env: str = "") -> dict:
    """A deployed stack's state: what the program declares, with the parents,
    providers and dependencies that `destroy --exclude-protected` follows."""
    env = env or stack
    root = f"urn:pulumi:{stack}::idr::pulumi:pulumi:Stack::idr-{stack}"
    provider = f"urn:pulumi:{stack}::idr::pulumi:providers:openstack::default"
    component = f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment::{env}"
    resources = [{"urn": root, "type": "pulumi:pulumi:Stack", "protect": False},
                 {"urn": provider, "type": "pulumi:providers:openstack", "protect": False},
                 {"urn": component, "type": "idr:environment:IdrEnvironment", "protect": False, "parent": root},
                 {"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment$openstack:networking/port:Port"
                         f"::{env}-omeroreadonly-1", "type": "openstack:networking/port:Port", "protect": False,
                  "parent": component, "provider": provider}]
    # What a data volume hangs on is protected by the program (components/server.py, network.py).
    for rtype, name in (("openstack:networking/network:Network", f"{env}-network"),
                        ("openstack:networking/subnet:Subnet", f"{env}-subnet"),
                        ("openstack:networking/port:Port", f"{env}-proxy"),
                        ("openstack:compute/instance:Instance", f"{env}-database"),
                        ("openstack:compute/volumeAttach:VolumeAttach", f"{env}-database-data")):
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${rtype}::{name}",
                          "type": rtype, "protect": True, "parent": component, "provider": provider})
    # (management: idr:monitoringEnabled, on in both stack files)
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100), ("management", 100)):
        name = f"{env}-{role}-data"
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${VOLUME_TYPE}::{name}",
                          "type": VOLUME_TYPE, "protect": True, "retainOnDelete": True, "role": role, "name": name,
                          "size": size, "id": f"vol-{env}-{role}", "parent": component, "provider": provider,
                          "mount": {"omeroreadwrite": "/data", "database": "/var/lib/pgsql",
                                    "proxy": "/var/cache/nginx", "management": "/data"}[role]})
    if floating_ip:
        assoc_urn = (f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${ASSOC_TYPE}"
                     f"::{env}-proxy-floating-ip")
        resources.append({"urn": assoc_urn, "type": ASSOC_TYPE, "protect": True, "retainOnDelete": False,
                          "parent": component, "provider": provider, "inputs": {"floatingIp": floating_ip}})
    config = dict(config, **({"idr:floatingIp": floating_ip} if floating_ip else {}))
    vols = {r["role"]: {"id": r["id"], "name": r["name"], "size": r["size"], "mount": r["mount"]}
            for r in resources if r["type"] == VOLUME_TYPE}
    outputs = {"environment": env, "floatingIp": floating_ip, "dataVolumes": vols,
               "floatingIpUrn": resources[-1]["urn"] if floating_ip else ""}
    return {"config": config, "resources": resources, "outputs": outputs}


# A deployed stack's secret, as `pulumi config set --secret` leaves it (README, Creating the stacks).
DEPLOYED_SECRETS = {"idr:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nstand-in\n"}


def program_state(stack: str, config: dict, floating_ip: str = "", legacy: bool = False) -> dict:
    """A deployed stack's state as the project's program declares it: every
    resource of the real program, run offline (components/offline.py) with
    `config` (the README's set-up: the stack file, then what it sets), with
    its parent and dependencies. `legacy`: as the code before issue 24
    declared it, a host's first steps (mount, /etc/hosts) depending on the
    association while idr:sshBastion followed the IP (environment.py's
    `reachable`)."""
    resources = [dict(r) for r in _program_resources(stack, json.dumps(config, sort_keys=True), floating_ip)]
    # What the program declares now (its `up` writes these), before any legacy edit of the state.
    program = [dict(r) for r in resources if r["type"] != ASSOC_TYPE]
    assoc = next((r for r in resources if r["type"] == ASSOC_TYPE), None)
    bastion = str(config.get("idr:sshBastion") or "")
    if legacy and assoc and bastion in ("", floating_ip):
        for r in resources:
            if r["type"] in ("command:remote:Command", "idr:host:HostFiles") and \
                    r["urn"].endswith(("-mount", "-etc-hosts")):
                r["dependencies"] = sorted({*r["dependencies"], assoc["urn"]})
    state = stack_state(stack, config, floating_ip)
    vols = {r["name"]: r for r in state["resources"] if r["type"] == VOLUME_TYPE}
    for r in resources:  # the fields the backups read
        if r["type"] == VOLUME_TYPE:
            r.update({k: v for k, v in vols.get(r["urn"].split("::")[-1], {}).items()
                      if k in ("role", "name", "size", "id", "mount")})
    for r in program:
        r.update({k: v for k, v in vols.get(r["urn"].split("::")[-1], {}).items()
                  if r["type"] == VOLUME_TYPE and k in ("role", "name", "size", "id", "mount")})
    return {"config": state["config"], "resources": resources, "program": program,
            "outputs": state["outputs"], "secrets": dict(DEPLOYED_SECRETS),
            "bastion": bastion or floating_ip}  # the address the stored connections use


_PROGRAM_CACHE: dict = {}


def _program_resources(stack: str, config_json: str, floating_ip: str) -> list[dict]:
    key = (stack, config_json, floating_ip)
    if key not in _PROGRAM_CACHE:
        from components.offline import run_stack
        overrides = {k.split(":", 1)[1]: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                     for k, v in json.loads(config_json).items() if k.startswith("idr:")}
        overrides["floatingIp"] = floating_ip
        outputs = {"prod": run_stack("prod").outputs} if stack != "prod" else {}
        run = run_stack(stack, overrides, stack_outputs=outputs)
        root = f"urn:pulumi:{stack}::idr::pulumi:pulumi:Stack::idr-{stack}"
        provider = f"urn:pulumi:{stack}::idr::pulumi:providers:openstack::default"
        resources = [{"urn": root, "type": "pulumi:pulumi:Stack", "protect": False},
                     {"urn": provider, "type": "pulumi:providers:openstack", "protect": False, "parent": root}]
        for r in run.resources:
            props = {k: list(v) for k, v in r.options.property_dependencies.items() if v}
            entry = {"urn": r.urn, "type": r.type, "protect": bool(r.options.protect),
                     "retainOnDelete": bool(r.options.retain_on_delete), "parent": r.options.parent or root,
                     "dependencies": sorted({*r.options.depends_on, *(u for us in props.values() for u in us)}),
                     "propertyDependencies": props}
            if r.custom:
                entry["provider"] = provider
            if r.type == ASSOC_TYPE:
                entry["inputs"] = {"floatingIp": r.inputs["floatingIp"]}
            resources.append(entry)
        _PROGRAM_CACHE[key] = resources
    return _PROGRAM_CACHE[key]


@dataclass
class World:
    home: Path
    bin: Path

    def add_stack(self, stack: str, floating_ip: str = "", config: dict | None = None) -> None:
        state = stack_state(stack, config or {}, floating_ip)
        state["secrets"] = dict(DEPLOYED_SECRETS)
        (self.home / "stacks" / f"{stack}.json").write_text(json.dumps(state, indent=1))
        if floating_ip:
            self.set_neutron(floating_ip, f"{stack}-proxy")

    def add_deployed(self, stack: str, floating_ip: str = "", config: dict | None = None,
                     legacy: bool = False) -> None:
        """A stack deployed by the project's program (program_state): the
        state of every resource, and what the program declares on `up`."""
        self.save_stack(stack, program_state(stack, config or {}, floating_ip, legacy))
        if floating_ip:
            self.set_neutron(floating_ip, f"{stack}-proxy")

    def add_stack_from_file(self, stack: str, path: Path) -> None:
        """A deployed stack whose config is a Pulumi.<stack>.yaml (values keep their YAML types)."""
        config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        config = {k: v for k, v in config.items() if not (isinstance(v, dict) and "secure" in v)}
        self.add_stack(stack, str(config.get("idr:floatingIp", "")), config)

    def stack_file(self, stack: str, base: Path | None = None) -> str:
        """Pulumi.<stack>.yaml as the CLI leaves it: the config of `base`
        with every `config set` and `config rm` applied, set values as strings."""
        data = (yaml.safe_load(base.read_text()) or {}) if base else {}
        secure = {k: v for k, v in (data.get("config") or {}).items() if isinstance(v, dict) and "secure" in v}
        # `config set --secret` writes the value encrypted: {"secure": <ciphertext>}.
        secure |= {k: {"secure": "v1:" + base64.b64encode(v.encode()).decode()}
                   for k, v in self.stack(stack).get("secrets", {}).items()}
        data["config"] = {**self.config(stack), **secure}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)

    def stack(self, stack: str) -> dict:
        return json.loads((self.home / "stacks" / f"{stack}.json").read_text())

    def exists(self, stack: str) -> bool:
        return (self.home / "stacks" / f"{stack}.json").exists()

    def save_stack(self, stack: str, state: dict) -> None:
        (self.home / "stacks" / f"{stack}.json").write_text(json.dumps(state, indent=1))

    def config(self, stack: str) -> dict:
        return self.stack(stack)["config"]

    def association(self, stack: str) -> dict | None:
        return next((r for r in self.stack(stack)["resources"] if r["type"] == ASSOC_TYPE), None)

    @property
    def neutron(self) -> dict:
        path = self.home / "neutron.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_neutron(self, ip: str, port_name: str | None) -> None:
        """Set up (or disturb) Neutron by hand: not an event of the log."""
        data = self.neutron
        if port_name:
            data[ip] = port_name
        else:
            data.pop(ip, None)
        (self.home / "neutron.json").write_text(json.dumps(data))

    def configure(self, **settings) -> None:
        """move_seconds, program_seconds, refuse_moves (see the module docstring);
        same_keeps_options: a "same" step leaves protect and retainOnDelete as
        they were in the state (an engine that would not write them)."""
        path = self.home / "settings.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**current, **settings}))

    def refuse_moves(self, refuse: bool = True) -> None:
        self.configure(refuse_moves=refuse)

    @property
    def events(self) -> list[dict]:
        """Neutron's binds and unbinds, oldest first: {"t", "ip", "port" (None: unbound), "why"}."""
        path = self.home / "neutron-events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def unbound_spans(self, ip: str) -> list[float]:
        """Seconds of each time `ip` was bound to no port, by the event log."""
        spans, since = [], None
        for e in self.events:
            if e["ip"] != ip:
                continue
            if e["port"] is None and since is None:
                since = e["t"]
            elif e["port"] is not None and since is not None:
                spans.append(e["t"] - since)
                since = None
        return spans

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

    def history(self, stack: str, result: str | None = "succeeded") -> list[dict]:
        """The stack's updates and destroys, oldest first (kind, message, flags); `result=None`: failed ones too."""
        return [h for h in self.stack(stack).get("history", []) if result is None or h["result"] == result]

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


def project_json(project_dir: Path) -> dict:
    """Pulumi.yaml's name and config block, and each Pulumi.<stack>.yaml's
    config: what the stand-in (which cannot read YAML) knows of the project."""
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    files = {path.name[len("Pulumi."):-len(".yaml")]: (yaml.safe_load(path.read_text()) or {}).get("config") or {}
             for path in sorted(project_dir.glob("Pulumi.*.yaml"))}
    return {"name": project["name"], "config": project.get("config") or {}, "stack_files": files}


def install(tmp_path: Path, monkeypatch, project_dir: Path | None = None) -> World:
    """Write the stand-in, put it first on PATH, and point it at a fresh
    state; the project is the repository's (or `project_dir`'s) Pulumi.yaml
    and stack files."""
    from components import PROJECT_DIR
    home = tmp_path / "pulumi-home"
    (home / "stacks").mkdir(parents=True)
    (home / "project.json").write_text(json.dumps(project_json(project_dir or PROJECT_DIR)))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "pulumi"
    # -I -S: no site packages or environment, so each call starts fast.
    # The stand-in runs isolated (-IS): it gets the type tokens as literals.
    script = (SCRIPT.replace("@ASSOC@", repr(ASSOC_TYPE)).replace("@VOLUME@", repr(VOLUME_TYPE))
              .replace("@VALUED@", repr(VALUED)).replace("@PARSE_ARGV@", inspect.getsource(parse_argv))
              .replace("@RULES@", "\n".join(inspect.getsource(f) for f in RULES)))
    exe.write_text(f"#!{sys.executable} -IS\n{script}")
    exe.chmod(0o755)
    (home / "calls.jsonl").write_text("")
    monkeypatch.setenv("FAKE_PULUMI_HOME", str(home))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PULUMI_SKIP_CONFIRMATIONS", raising=False)
    return World(home, bindir)
