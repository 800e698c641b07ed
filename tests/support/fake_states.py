"""Deployed stacks' states for the stand-in `pulumi` (tests/support/fake_world.py
World.add_stack / add_deployed): a small hand-made one (`stack_state`) and
every resource the project's program declares, run offline (`program_state`)."""
from __future__ import annotations

import json

from components.swap_record import ASSOCIATION_TYPE as ASSOC_TYPE, association_urn
from operations.common import VOLUME_TYPE


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
        resources.append({"urn": association_urn(stack, env), "type": ASSOC_TYPE, "protect": True,
                          "retainOnDelete": False, "parent": component, "provider": provider,
                          "inputs": {"floatingIp": floating_ip}})
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
