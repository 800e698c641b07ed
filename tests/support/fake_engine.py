"""The stand-in `pulumi`'s `up` and `destroy` (tests/support/fake_pulumi.py):
what the CLI checks first, the engine's targeting (tests/support/pulumi_cli.py
target_plan), the program's guard and the association's steps. A stack made
by fake_world.World.add_deployed holds every resource the project's program
declares (its "program"); `up` without --target writes what it declares."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.fake_neutron import die
from tests.support.pulumi_cli import CliRefusal, project_config_error, stack_config_error, target_plan

NOT_INTERACTIVE = "must be passed in to proceed when running in non-interactive mode"


def load(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def save(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def say(line: str) -> None:  # the engine's output, line by line, as it happens
    print(line, flush=True)


def ancestors(resources: list[dict]) -> set:
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


def up(cli) -> str:
    """`pulumi up` of the stack of `cli` (a fake_pulumi.Cli); its last line of output."""
    from components.swap_record import ASSOCIATION_TYPE as ASSOC, ENVIRONMENT_TYPE
    st, cfg, stack, env, urn = cli.st, cli.cfg, cli.stack, cli.env, cli.urn
    assoc = next((r for r in st["resources"] if r["type"] == ASSOC), None)
    if not (cli.yes or cli.skip_preview):
        die(f"--yes or --skip-preview {NOT_INTERACTIVE}")
    cli.take_lock()
    # The operator commands never update without the policy pack.
    if cli.values.get("policy-pack") != ["policy"]:
        die("the stand-in refuses `pulumi up` without --policy-pack policy")
    # The CLI checks the project and the stack's config before the engine starts
    # (project.go Project.Validate; config.go ValidateStackConfigAndApplyProjectConfig).
    problem = project_config_error(cli.project) or \
        stack_config_error(stack, cli.project, {**cfg, **cli.secrets}, set(cli.secrets))
    if problem:
        die(f"validating stack config: {problem}")
    targets = set(cli.values.get("target", []))
    say(f"Updating ({stack}):")
    cli.handshake()
    time.sleep(float(cli.settings.get("program_seconds", 0)))
    want = cfg.get("idr:floatingIp", "")
    if not (cfg.get("idr:sshBastion") or want):
        die("config idr:sshBastion = '' is not allowed: an address of the proxy for SSH; required when "
            "floatingIp is empty")
    retain = cli.guard(want)
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
        cli.line("-", "deleting")
        if not assoc.get("retainOnDelete"):
            cli.neutron.disassociate(have)  # the association's delete unbinds the IP wherever it is
        st["resources"].remove(assoc)
        save(cli.path, st)
        cli.line("-", "deleted")
        assoc = None
    if want and assoc is None and (not targets or urn in targets):
        cli.line("+", "creating")
        port = f"{env}-proxy"
        cli.neutron.associate(want, port, lambda *refusal: cli.fail_update(
            cli.neutron.refusal("creating", urn, want, port, *refusal)))
        st["resources"].append({"urn": urn, "type": ASSOC, "protect": True, "retainOnDelete": retain,
                                "parent": f"urn:pulumi:{stack}::idr::{ENVIRONMENT_TYPE}::{env}",
                                "provider": f"urn:pulumi:{stack}::idr::pulumi:providers:openstack::default",
                                "inputs": {"floatingIp": want}})
        cli.line("+", "created")
    elif assoc and want and (not targets or urn in targets) and urn not in kept \
            and not cli.settings.get("same_keeps_options"):  # a "same" step writes the goal's options
        assoc["protect"], assoc["retainOnDelete"] = True, retain
    # Remote commands store their connection; a full update with another
    # bastion address runs each command's `update` over SSH to it
    # (pulumi-command: a changed connection re-runs), which must reach this
    # environment's proxy: an IP on no port, or another's, does not answer.
    bastion = cfg.get("idr:sshBastion") or want
    holders = cli.neutron.holders()
    ips = set(holders) | {e["ip"] for e in cli.neutron.events()}
    if not targets and any(r["type"] == "command:remote:Command" for r in program) \
            and bastion != st.get("bastion") and bastion in ips and holders.get(bastion) != f"{env}-proxy":
        cli.fail_update(f"{env}-proxy-etc-hosts: dial tcp {bastion}:22: i/o timeout (the stored connections move "
                        f"to {bastion}, which "
                        f"{'is bound to ' + holders[bastion] if bastion in holders else 'is bound to no port'})")
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
    st["outputs"] = cli.outputs(want)
    cli.remember("update")
    return "Resources: updated"


def destroy(cli) -> str:
    """`pulumi destroy` of the stack of `cli` (a fake_pulumi.Cli); its last line of output."""
    from components.swap_record import ASSOCIATION_TYPE as ASSOC
    st = cli.st
    if not (cli.yes or cli.skip_preview):
        die(f"--yes or --skip-preview or --preview-only {NOT_INTERACTIVE}")
    cli.take_lock()
    say(f"Destroying ({cli.stack}):")
    cli.handshake()
    resources = st["resources"]
    targets = set(cli.values.get("target", []))
    if "--exclude-protected" in cli.flags:
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
            cli.neutron.disassociate(r["inputs"]["floatingIp"])
        say(f" - {r['urn']} deleted")
    gone = {r["urn"] for r in doomed}
    st["resources"] = [r for r in resources if r["urn"] not in gone]
    if not st["resources"]:
        st["outputs"] = {}  # the stack resource went too
    cli.remember("destroy")
    return f"Resources: {len(doomed)} deleted"
