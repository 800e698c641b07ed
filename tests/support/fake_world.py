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
from components.swap_record import ASSOCIATION_TYPE as ASSOC_TYPE
from operations.common import VOLUME_TYPE  # noqa: F401 (tests take the type tokens from here)
from tests.support.fake_states import DEPLOYED_SECRETS, program_state, stack_state
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
