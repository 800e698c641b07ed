"""Run the real program with no cloud and no Pulumi CLI.

Used by the offline render (`python -m components.render`), the tests and the
benchmarks. Config comes from the real `Pulumi.yaml` defaults and
`Pulumi.<stack>.yaml`, exactly as the CLI would pass it; the engine is
replaced by Pulumi's mocks with `preview=False`, so every Output resolves and
nothing passes because a value was unknown. A recording monitor keeps each
resource's type, name, inputs and options (protect, delete_before_replace,
ignore_changes, dependencies) for assertions.

Only the SDK's public testing API is used (tests/test_public_sdk_api.py
checks it): `pulumi.runtime.reset_options` for a clean runtime,
`pulumi.runtime.set_all_config`, `pulumi.runtime.set_mocks` with a
`pulumi.runtime.mocks.MockMonitor` subclass, and `pulumi.runtime.test`, which
runs the program and waits for every outstanding registration and Output.
"""
from __future__ import annotations

import inspect
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from . import PROJECT, PROJECT_DIR

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


def placeholder(key: str) -> str:
    """What an offline run reads for a secret: a placeholder of the shape
    the program checks (the deployment step's secret vars are a mapping of
    the names it requires), never a real value."""
    from .validators import REQUIRED_SECRET_VARS
    if key == f"{PROJECT}:deploymentSecretVars":
        return yaml.safe_dump({name: SECRET_PLACEHOLDER for name in REQUIRED_SECRET_VARS})
    return SECRET_PLACEHOLDER


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
            values[key] = placeholder(key)
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


def model_secrets() -> set[str]:
    """Every secret key of the model (components/settings.py), declared in
    Pulumi.yaml or not."""
    from .settings import KEYS
    return {f"{PROJECT}:{name}" for name, key in KEYS.items() if key.secret}


def effective_config(stack: str, overrides: Optional[dict] = None,
                     project_dir: Path = PROJECT_DIR) -> tuple[dict[str, str], set[str]]:
    """Defaults, then the stack file, then `overrides` (None removes a key).
    Secrets are never in the repository's stack files as text: a declared
    secret key gets a placeholder, as an offline run never needs its value."""
    config = project_config_defaults(project_dir)
    values, secrets = stack_config(stack, project_dir)
    for key in model_secrets():
        config[key] = placeholder(key)
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


def _holds_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return (_SIG in value and "value" in value) or any(_holds_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_secret(v) for v in value)
    return False


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
    secret_inputs: frozenset = frozenset()   # inputs that hold a secret (the render never writes them out)


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

    def waits_for(self, resource: RecordedResource) -> set[str]:
        """Names of every resource `resource` waits for, directly or through
        others (depends_on and input dependencies): what the engine finishes first."""
        urns = {r.urn: r for r in self.resources}
        seen: set[str] = set()
        todo = [resource]
        while todo:
            r = todo.pop()
            for urn in [*r.options.depends_on, *(u for us in r.options.property_dependencies.values() for u in us)]:
                if urn not in seen and urn in urns:
                    seen.add(urn)
                    todo.append(urns[urn])
        return {urns[u].name for u in seen}


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
            name = args.inputs.get("name") or args.resource_id or ""
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
    def __init__(self, mocks: pulumi_mocks.Mocks, recording: Recording):
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        urn = response.urn
        state = self.resources[urn].state if urn in self.resources else {}
        inputs = rpc.deserialize_properties(request.object)
        self.recording.resources.append(RecordedResource(
            type=request.type, name=request.name, urn=urn, custom=bool(request.custom),
            inputs=_unwrap(inputs), state=_unwrap(state), id=response.id,
            secret_inputs=frozenset(k for k, v in inputs.items() if _holds_secret(v)),
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

def reset_runtime() -> None:
    """A clean SDK runtime: no root stack, no outstanding registration or
    Output, no monitor, no config.

    `pulumi.runtime.reset_options` (public: in `pulumi.runtime.__all__`; the
    Automation API resets with it before each inline program) installs fresh
    runtime settings: a new RPC manager, an empty set of outstanding Outputs,
    no root resource. A run that failed (a refused config) leaves neither to
    the next run."""
    pulumi.runtime.reset_options()
    pulumi.runtime.set_all_config({}, [])


# Kept for callers of the former name.
_reset_runtime = reset_runtime


def _keep_outputs(recording: Recording) -> Callable[[Any], None]:
    def keep(outputs: Any) -> None:
        if isinstance(outputs, dict):  # a program's outputs (a component's body returns its resource)
            recording.outputs.update(outputs)
    return keep


def run_mocked(body: Callable[[], Any], stack: str, mocks: Optional[pulumi_mocks.Mocks] = None,
               recording: Optional[Recording] = None, monitor: Optional[pulumi_mocks.MockMonitor] = None,
               config: Optional[dict[str, str]] = None, secret_keys: Optional[set[str]] = None) -> Recording:
    """Run `body` (declares resources; may return Inputs or be a coroutine
    function) under mocks for `stack`, from a clean runtime, and return what
    the monitor recorded. An error of `body` or of a registration is raised
    once every outstanding registration has finished; pass `recording` to
    keep what was registered up to it."""
    mocks = mocks or IdrMocks(stack=stack)
    if monitor is None:
        monitor = RecordingMonitor(mocks, recording if recording is not None else Recording(stack))
    recording = getattr(monitor, "recording", recording)
    if recording is None:
        raise TypeError("run_mocked: a monitor that records nothing")

    async def program():
        result = body()
        return await result if inspect.isawaitable(result) else result

    reset_runtime()
    try:
        pulumi.runtime.set_all_config(config or {}, list(secret_keys or ()))
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
        # `pulumi.runtime.test` runs its function, resolves the Output it
        # returns, then waits for every outstanding registration and Output,
        # and raises the program's error, if any.
        pulumi.runtime.test(lambda: pulumi.Output.from_input(program()).apply(_keep_outputs(recording)))()
    finally:
        recording.calls = getattr(mocks, "calls", [])
        reset_runtime()
    return recording


def run_config(stack: str, config: dict[str, str], secret_keys: set[str], mocks: Optional[IdrMocks] = None,
               recording: Optional[Recording] = None) -> Recording:
    """Run the program once for `stack` with the given wire config (into
    `recording` when given: it keeps what a failed run registered)."""
    from . import program

    mocks = mocks or IdrMocks()
    mocks.stack = mocks.stack or stack  # its reference to itself: never deployed unless told
    return run_mocked(program.main, stack, mocks, recording if recording is not None else Recording(stack),
                      config=config, secret_keys=secret_keys)


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
