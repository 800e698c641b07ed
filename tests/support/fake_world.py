"""The stand-in `pulumi`'s world, seen from a test: `install(tmp_path,
monkeypatch)` puts the stand-in (tests/support/fake_pulumi.py) first on PATH
and returns a `World` whose files are its whole state: each stack's config,
resources, outputs and update history, and the stand-in Neutron (floating IP
-> name of the port holding it) with its event log. The project is the
repository's Pulumi.yaml and stack files (`install` converts them to JSON).

`world.fail_at(n)` makes call number n exit 1 before doing anything,
`world.fail_at(n, after=True)` after doing its work (as an update that
changed the cloud and then lost its connection). `world.lock(stack)` makes
updates, destroys and state edits of the stack refuse as a locked stack does;
`world.handshake()` makes every update and destroy wait, after its first line
of output, until the test has seen that line (`world.ack()`), which only
streamed output allows. `world.configure(move_seconds=..., program_seconds=...)`
sets how long a Neutron move and an update's program take."""
from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from components import PROJECT_DIR
from components.swap_record import ASSOCIATION_TYPE as ASSOC_TYPE, association_urn
from operations.common import VOLUME_TYPE
from tests.support.pulumi_cli import VALUED, parse_argv

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests.support and components import from it

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
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
        name = f"{env}-{role}-data"
        resources.append({"urn": f"urn:pulumi:{stack}::idr::idr:environment:IdrEnvironment${VOLUME_TYPE}::{name}",
                          "type": VOLUME_TYPE, "protect": True, "retainOnDelete": True, "role": role, "name": name,
                          "size": size, "id": f"vol-{env}-{role}", "parent": component, "provider": provider,
                          "mount": {"omeroreadwrite": "/data", "database": "/var/lib/pgsql",
                                    "proxy": "/var/cache/nginx"}[role]})
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
    """Write the stand-in `pulumi`, put it first on PATH, and point it at a
    fresh state; the project is the repository's (or `project_dir`'s)
    Pulumi.yaml and stack files."""
    home = tmp_path / "pulumi-home"
    (home / "stacks").mkdir(parents=True)
    (home / "project.json").write_text(json.dumps(project_json(project_dir or PROJECT_DIR)))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "pulumi"
    # Isolated (-I -S: no site packages or environment) so that each call
    # starts fast; the stand-in and what it imports need the standard library only.
    exe.write_text(f"#!{sys.executable} -IS\n"
                   f"import sys\n"
                   f"sys.path.insert(0, {str(ROOT)!r})\n"
                   f"from tests.support.fake_pulumi import main\n"
                   f"sys.exit(main())\n")
    exe.chmod(0o755)
    (home / "calls.jsonl").write_text("")
    monkeypatch.setenv("FAKE_PULUMI_HOME", str(home))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PULUMI_SKIP_CONFIRMATIONS", raising=False)
    return World(home, bindir)
