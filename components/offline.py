"""Run the real program with no cloud and no Pulumi CLI.

Used by the offline render (`python -m components.render`), the tests and the
benchmarks. Config comes from the real `Pulumi.yaml` defaults and
`Pulumi.<stack>.yaml`, exactly as the CLI would pass it; the engine is
replaced by Pulumi's mocks with `preview=False`, so every Output resolves and
nothing passes because a value was unknown. A recording monitor keeps each
resource's type, name, inputs and options (protect, delete_before_replace,
ignore_changes, dependencies) for assertions.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "idr"
SECRET_PLACEHOLDER = "-----OFFLINE RENDER: secret not decrypted-----"
_NS = uuid.UUID("6b1d3a52-0d8e-4a9c-9b55-2f0c4e1d7a10")


def fake_id(*parts: str) -> str:
    """A stable UUID per name, as OpenStack IDs look."""
    return str(uuid.uuid5(_NS, "/".join(parts)))


# ----------------------------------------------------------------- config

def project_config_defaults(project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    out = {}
    for key, decl in (project.get("config") or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(decl, dict) and "default" in decl:
            out[full] = decl["default"]
    return out


def stack_config(stack: str, project_dir: Path = PROJECT_DIR) -> tuple[dict[str, Any], set[str]]:
    """Values of Pulumi.<stack>.yaml; encrypted values become a placeholder
    (an offline render never needs a secret's text)."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name} in {project_dir}")
    data = yaml.safe_load(path.read_text()) or {}
    values, secrets = {}, set()
    for key, value in (data.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = SECRET_PLACEHOLDER
            secrets.add(key)
        else:
            values[key] = value
    return values, secrets


def _wire(value: Any) -> str:
    """Config values as the CLI hands them to a program: strings, JSON for
    arrays and objects, lower-case booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def declared_secrets(project_dir: Path = PROJECT_DIR) -> set[str]:
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    return {k if ":" in k else f"{PROJECT}:{k}" for k, d in (project.get("config") or {}).items()
            if isinstance(d, dict) and d.get("secret")}


def effective_config(stack: str, overrides: Optional[dict] = None,
                     project_dir: Path = PROJECT_DIR) -> tuple[dict[str, str], set[str]]:
    """Defaults, then the stack file, then `overrides` (None removes a key).
    Secrets are never in the repository's stack files as text: a declared
    secret gets the placeholder, as an offline run never needs its value."""
    config = project_config_defaults(project_dir)
    values, secrets = stack_config(stack, project_dir)
    for key in declared_secrets(project_dir):
        config[key] = SECRET_PLACEHOLDER
        secrets.add(key)
    config.update(values)
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return {k: _wire(v) for k, v in config.items()}, secrets


# ------------------------------------------------------------- recording

_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's wire marker for special values


def _unwrap(value: Any) -> Any:
    """Inputs with secrets in them arrive wrapped; tests and the render read
    the plain value (offline, the secret is only a placeholder)."""
    if isinstance(value, dict):
        if _SIG in value and "value" in value:
            return _unwrap(value["value"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


@dataclass
class Options:
    protect: bool
    delete_before_replace: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    depends_on: list[str]  # URNs
    parent: str
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)  # input -> URNs
    aliases: list[str] = field(default_factory=list)  # URNs this resource was known by


@dataclass
class RecordedResource:
    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict
    state: dict
    options: Options
    id: str = ""


@dataclass
class Recording:
    stack: str
    resources: list[RecordedResource] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def of_type(self, typ: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str, typ: Optional[str] = None) -> RecordedResource:
        found = [r for r in self.resources if r.name == name and (typ is None or r.type == typ)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}" + (f" of type {typ}" if typ else ""))
        return found[0]

    def by_urn(self, urn: str) -> RecordedResource:
        return next(r for r in self.resources if r.urn == urn)


class IdrMocks(pulumi_mocks.Mocks):
    """Answers as OpenStack would, deterministically.

    `floating_ip_holders` maps an address to the name of the port holding it
    (absent: the IP is free). `stack_outputs` maps a stack name to the outputs
    a StackReference to it reads. `subnet_cidrs` maps an existing subnet name
    to its CIDR. `stack` is the stack being run: its reference to itself
    reads `deployed` (its last outputs; None: never deployed, no outputs, as
    the engine answers for a stack without a checkpoint)."""

    def __init__(self, floating_ip_holders=None, stack_outputs=None, subnet_cidrs=None,
                 stack: str = "", deployed: Optional[dict] = None):
        self.floating_ip_holders = floating_ip_holders or {}
        self.stack_outputs = stack_outputs or {}
        self.subnet_cidrs = subnet_cidrs or {}
        self.stack = stack
        self.deployed = deployed or {}
        self.calls: list[tuple[str, dict]] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            name = args.inputs.get("name") or args.resource_id
            short = name.split("/")[-1]
            if short == self.stack:
                return name, {"name": name, "outputs": self.deployed, "secretOutputNames": []}
            if short not in self.stack_outputs:
                raise pulumi.RunError(f"stack {name} has no outputs here (offline run)")
            return name, {"name": name, "outputs": self.stack_outputs[short], "secretOutputNames": []}
        if not args.custom:
            return "", state
        rid = fake_id(args.typ, args.name)
        if args.typ == "openstack:networking/port:Port":
            state["allFixedIps"] = [f["ipAddress"] for f in args.inputs.get("fixedIps", [])]
        elif args.typ == "openstack:compute/instance:Instance":
            state["accessIpV4"] = ""
        elif args.typ == "command:remote:Command":
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
        return rid, state

    def call(self, args: pulumi_mocks.MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        a = args.args
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": fake_id("network", a.get("name", "")), "name": a.get("name", "")}
        if args.token == "openstack:networking/getSubnet:getSubnet":
            name = a.get("name", "")
            return {"id": fake_id("subnet", name), "name": name,
                    "cidr": self.subnet_cidrs.get(name, "192.168.1.0/24"), "networkId": a.get("networkId", "")}
        if args.token == "openstack:networking/getFloatingIp:getFloatingIp":
            address = a.get("address", "")
            holder = self.floating_ip_holders.get(address)
            return {"id": fake_id("fip", address), "address": address,
                    "portId": fake_id("port", holder) if holder else ""}
        if args.token == "openstack:networking/getPort:getPort":
            port_id = a.get("portId", "")
            names = {fake_id("port", n): n for n in self.floating_ip_holders.values()}
            return {"id": port_id, "portId": port_id, "name": names.get(port_id, "")}
        raise NotImplementedError(f"offline run: no mock for invoke {args.token}")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: IdrMocks, recording: Recording):
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        from pulumi.runtime import rpc
        urn = response.urn
        state = self.resources[urn].state if urn in self.resources else {}
        self.recording.resources.append(RecordedResource(
            type=request.type, name=request.name, urn=urn, custom=bool(request.custom),
            inputs=_unwrap(rpc.deserialize_properties(request.object)), state=_unwrap(state), id=response.id,
            options=Options(
                protect=bool(getattr(request, "protect", False)),
                delete_before_replace=bool(request.deleteBeforeReplace),
                retain_on_delete=bool(getattr(request, "retainOnDelete", False)),
                ignore_changes=list(request.ignoreChanges),
                depends_on=list(request.dependencies),
                parent=request.parent,
                property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
                aliases=_alias_urns(urn, request))))
        return response

    def ReadResource(self, request):
        response = super().ReadResource(request)
        from pulumi.runtime import rpc
        self.recording.resources.append(RecordedResource(
            type=request.type, name=request.name, urn=response.urn, custom=True,
            inputs=rpc.deserialize_properties(request.properties), state=self.resources[response.urn].state,
            id=request.id, options=Options(False, False, False, [], list(request.dependencies), request.parent)))
        return response


def _alias_urns(urn: str, request) -> list[str]:
    """The old URNs a registration carries over (only renames in place:
    what this program uses)."""
    found = []
    for alias in request.aliases:
        if alias.urn:
            found.append(alias.urn)
        elif alias.spec.name and not alias.spec.type and not alias.spec.parentUrn and not alias.spec.noParent:
            found.append(urn.rsplit("::", 1)[0] + "::" + alias.spec.name)
        else:
            raise NotImplementedError(f"offline run: alias {alias} of {urn} is not recorded")
    found.extend(request.aliasURNs)
    return found


# ------------------------------------------------------------------ run

def _reset_runtime() -> None:
    from pulumi.runtime import settings as runtime_settings
    from pulumi.runtime import config as runtime_config
    runtime_settings.set_root_resource(None)
    # A failed run (a refused config) leaves outputs and RPCs behind; the
    # next run must not inherit them.
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()
    runtime_config.set_all_config({}, [])


def run_config(stack: str, config: dict[str, str], secret_keys: set[str], mocks: Optional[IdrMocks] = None) -> Recording:
    """Run the program once for `stack` with the given wire config."""
    from . import program

    _reset_runtime()
    mocks = mocks or IdrMocks()
    mocks.stack = mocks.stack or stack  # its reference to itself: never deployed unless told
    recording = Recording(stack)
    pulumi.runtime.set_all_config(config, list(secret_keys))
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False,
                             monitor=RecordingMonitor(mocks, recording))

    def body():
        outputs = program.main()
        resolved = _sync_await(pulumi.Output.from_input(outputs).future())
        recording.outputs.update(resolved or {})

    try:
        _sync_await(run_pulumi_func(body))
    finally:
        recording.calls = mocks.calls
        _reset_runtime()
    return recording


def run_stack(stack: str, overrides: Optional[dict] = None, floating_ip_holders: Optional[dict] = None,
              stack_outputs: Optional[dict] = None, subnet_cidrs: Optional[dict] = None,
              project_dir: Path = PROJECT_DIR, deployed: Optional[dict] = None) -> Recording:
    """Run the program for a stack file of this project (plus `overrides`).

    A stack that clones another (idr:cloneFromStack) reads that stack's
    outputs; unless given in `stack_outputs`, they come from running that
    stack offline first, as `pulumi up` would have produced them."""
    config, secrets = effective_config(stack, overrides, project_dir)
    stack_outputs = dict(stack_outputs or {})
    source = config.get(f"{PROJECT}:cloneFromStack", "").split("/")[-1]
    if source and source not in stack_outputs and (project_dir / f"Pulumi.{source}.yaml").exists():
        stack_outputs[source] = run_stack(source, project_dir=project_dir).outputs
    mocks = IdrMocks(floating_ip_holders, stack_outputs, subnet_cidrs, stack=stack, deployed=deployed)
    return run_config(stack, config, secrets, mocks)
