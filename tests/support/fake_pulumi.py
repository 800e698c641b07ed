"""A stand-in `pulumi` CLI for the operator-command tests, run as the
executable `pulumi` that tests/support/fake_world.py `install` writes.

The operator commands drive Pulumi through pulumi.automation, whose
LocalWorkspace and Stack run the `pulumi` CLI found on PATH and read its
JSON. This stand-in sits at exactly that seam: the real Automation API code
builds the command lines, reads the JSON printed here, streams the output
through its reader threads and classifies the errors (a locked stack becomes
ConcurrentUpdateError). It also accepts an operator's command lines
(`pulumi config set K V -s S`), which the commands print as advice, and
behaves as the real CLI does where that matters here:
- non-interactive (no terminal): `up` and `destroy` refuse without --yes or
  --skip-preview, state edits and `stack rm` without --yes, in the CLI's words;
- `config set` stores the value as the string given; `config set --secret`
  stores a secret (from stdin when no value is given); `pulumi config` and
  `config get` apply the project's defaults and name missing keys, and every
  `up` first applies the CLI's config validation, then the engine's
  targeting rules (tests/support/pulumi_cli.py, each rule cited there);
- `stack output` answers from the last update: the outputs of the stack
  resource (none when the state has none);
- `destroy --exclude-protected` keeps the protected resources and what they
  hang on, transitively (pulumi's separateProtected); a plain `destroy`
  refuses while anything is protected; `destroy --target` deletes that
  resource alone; `stack rm` refuses a stack with resources.
Its `up` does to the association what the program (the guard of
components/floatingip.py, through components/swap_record.py, the same code),
the engine and the provider would, with Neutron played by
tests/support/fake_neutron.py: a protected association refuses to be replaced
or deleted, a replacement deletes first, a "same" step writes the goal's
options (protect, retainOnDelete), a retained resource leaves the state
without its Delete, each step's line is printed when it starts and ends.

Its whole state is files under $FAKE_PULUMI_HOME (fake_world.World reads and
sets them): each stack's config, resources, outputs and history, Neutron,
every call (the API's `pulumi version` probe aside), injected failures
(`fail`: call n exits 1 before, or with `:after` after, its work), locks, and
the handshake that proves output is streamed. Standard library only: it runs
isolated (python -I -S) to start fast."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.support import fake_engine as engine
from tests.support.fake_engine import NOT_INTERACTIVE, load, save, say
from tests.support.fake_neutron import Neutron, die
from tests.support.pulumi_cli import CliRefusal, apply_project_config, parse_argv

# components/swap_record.py is imported only where needed: each call of the
# stand-in is a process of its own, and most calls only read.
VOLUME = "openstack:blockstorage/volume:Volume"


def display(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class Cli:
    """One call of the stand-in on one stack."""

    def __init__(self, home: Path, argv: list[str], settings: dict, project: dict):
        self.home, self.argv, self.settings, self.project = home, argv, settings, project
        self.args, self.flags, self.values = parse_argv(argv)
        self.stack = self.values["stack"][-1].split("/")[-1]
        self.path = home / "stacks" / f"{self.stack}.json"
        self.neutron = Neutron(home, settings)
        self.yes = bool({"--yes", "-y"} & self.flags) or \
            os.environ.get("PULUMI_SKIP_CONFIRMATIONS", "").lower() in ("1", "true")
        self.skip_preview = "--skip-preview" in self.flags

    def open(self) -> None:
        """The stack's state (after `stack init` and its checks)."""
        self.st = load(self.path, None)
        self.cfg, self.secrets = self.st["config"], self.st.setdefault("secrets", {})
        self.env = self.cfg.get("idr:environment") or self.stack

    @property
    def urn(self) -> str:
        from components.swap_record import association_urn
        return association_urn(self.stack, self.env)

    def with_defaults(self) -> dict:
        """`pulumi config` and `config get` apply the project's defaults (config.go ApplyProjectConfig)."""
        try:
            return apply_project_config(self.stack, self.project, {**self.cfg, **self.secrets})
        except CliRefusal as refusal:
            die(str(refusal))

    def take_lock(self) -> None:
        # A DIY backend (the S3 bucket) refuses with its lock file; Pulumi Cloud with 409.
        lock = self.home / "locks" / self.stack
        kind = lock.read_text().strip() if lock.exists() else ""
        if kind == "cloud":
            die("[409] Conflict: Another update is currently in progress.")
        if kind:
            die("the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
                "delete the lock file with `pulumi cancel`.\n"
                f"  s3://idr-pulumi-state/.pulumi/locks/organization/idr/{self.stack}/0b1c2d.json: created by "
                "ops@bastion (pid 4242) at 2024-05-17T09:00:00Z")

    def handshake(self) -> None:
        # Streaming proof: wait until the operator has seen the line above.
        if not (self.home / "handshake").exists():
            return
        ack = self.home / "handshake-ack"
        deadline = time.monotonic() + float((self.home / "handshake").read_text())
        while time.monotonic() < deadline:
            if ack.exists():
                ack.unlink()
                return
            time.sleep(0.02)
        die("nobody saw the engine's output while it ran (not streamed)")

    def remember(self, kind: str, result: str = "succeeded") -> None:
        self.st.setdefault("history", []).append({"kind": kind, "message": self.values.get("message", [""])[-1],
                                                  "flags": sorted(self.flags), "result": result})

    def fail_update(self, message: str) -> None:
        """An update that fails part-way: what it did is kept, and the failure is in the history."""
        self.remember("update", "failed")
        save(self.path, self.st)
        die(message)

    def line(self, sign: str, verb: str) -> None:
        from components.swap_record import association_name
        say(f" {sign}  openstack:networking:FloatingIpAssociate {association_name(self.env)} {verb} (0s) ")

    def outputs(self, want: str) -> dict:
        vols = {r["role"]: {"id": r["id"], "name": r["name"], "size": r["size"], "mount": r["mount"]}
                for r in self.st["resources"] if r["type"] == VOLUME}
        return {"environment": self.env, "floatingIp": want, "floatingIpUrn": self.urn if want else "",
                "dataVolumes": vols}

    # ------------------------------------------------------------ commands
    def run(self) -> str:
        """The command's work on the state; its output."""
        args, flags, values, st = self.args, self.flags, self.values, self.st
        if args == ["config"]:
            merged = self.with_defaults()
            return json.dumps(
                {k: {"value": json.dumps(v) if isinstance(v, (list, dict)) else display(v), "secret": False}
                 for k, v in merged.items() if k not in self.secrets}
                | {k: {"value": v if "--show-secrets" in flags else "[secret]", "secret": True}
                   for k, v in self.secrets.items()})
        if args[:2] == ["config", "set"] and len(args) in (3, 4):
            # No value given: the CLI reads it from stdin (`... --secret K < file`).
            value = args[3] if len(args) == 4 else sys.stdin.read()
            if "--secret" in flags:
                self.secrets[args[2]] = value
                self.cfg.pop(args[2], None)
            else:
                self.cfg[args[2]] = value   # the CLI writes every top-level value as a string
                self.secrets.pop(args[2], None)
            return ""
        if args[:2] == ["config", "get"] and len(args) == 3:
            merged = self.with_defaults()
            if args[2] not in merged:
                die(f"configuration key '{args[2]}' not found for stack '{self.stack}'")
            return merged[args[2]] if args[2] in self.secrets else display(merged[args[2]])
        if args[:2] == ["config", "rm"] and len(args) == 3:
            self.cfg.pop(args[2], None)
            self.secrets.pop(args[2], None)
            return ""
        if args == ["stack", "select"]:
            return ""
        if args[:2] == ["stack", "output"] and len(args) <= 3:
            # The outputs live on the stack resource: none without it (never deployed, or destroyed).
            rooted = any(r["type"] == "pulumi:pulumi:Stack" for r in st["resources"])
            outs = st.get("outputs", {}) if rooted else {}
            if len(args) == 3:  # one output, as text
                if args[2] not in outs:
                    die(f"current stack does not have output property '{args[2]}'")
                return outs[args[2]] if isinstance(outs[args[2]], str) else json.dumps(outs[args[2]])
            return json.dumps(outs)
        if args == ["stack", "export"]:
            return json.dumps({"version": 3, "deployment": {"resources": st["resources"]}})
        if args == ["stack", "history"]:
            history = st.get("history", [])
            entries = [{"kind": h["kind"], "message": h["message"], "result": h["result"], "environment": {},
                        "config": {}, "version": len(history) - n, "startTime": "2024-05-17T09:00:00.000000Z",
                        "endTime": "2024-05-17T09:01:00.000000Z"} for n, h in enumerate(reversed(history))]
            return json.dumps(entries[: int(values.get("page-size", ["0"])[-1]) or None])
        if args == ["stack", "rm"]:
            if not self.yes:
                die(f"--yes {NOT_INTERACTIVE}")
            if st["resources"] and "--force" not in flags:
                die(f"'{self.stack}' still has resources; removal rejected; pass --force to override")
            self.path.unlink()
            print(f"Stack '{self.stack}' has been removed!")
            sys.exit(0)
        if args[:2] == ["state", "unprotect"] and len(args) == 3:
            if not self.yes:
                die(f"--yes {NOT_INTERACTIVE}")
            self.take_lock()
            found = [r for r in st["resources"] if r["urn"] == args[2]]
            if not found:
                die(f"No such resource {args[2]!r} exists in the current state")
            found[0]["protect"] = False
            return ""
        if args == ["up"]:
            return engine.up(self)
        if args == ["destroy"]:
            return engine.destroy(self)
        die(f"the stand-in does not know `pulumi {' '.join(self.argv)}`")

    def guard(self, want: str) -> bool:
        """The program's floating-IP guard (components/floatingip.py, by the
        same record code): refuses an IP another environment's proxy holds,
        unless this stack's swap record moves it here; says whether the
        association is declared retain-on-delete."""
        from components.swap_record import CONFIG_KEY, moving_directly
        record = moving_directly(self.cfg.get(CONFIG_KEY))
        holder = self.neutron.holders().get(want) if want else None
        if holder and holder != f"{self.env}-proxy":
            holder_env = holder[: -len("-proxy")] if holder.endswith("-proxy") else None
            if not (record is not None and record.takes_over(self.stack, want, holder_env)):
                die(f"config idr:floatingIp = {want!r} is held by port {holder}")
        return bool(want) and record is not None and record.hands_over(self.stack, want)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home = Path(os.environ["FAKE_PULUMI_HOME"])
    if argv == ["version"]:  # the Automation API's probe when it makes a workspace; not numbered
        if (home / "no-version").exists():
            die("injected failure of `pulumi version`")
        print("v3.272.0")
        return 0
    with open(home / "calls.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")
    number = sum(1 for _ in open(home / "calls.jsonl"))
    fail_n, _, fail_when = ((home / "fail").read_text().strip() if (home / "fail").exists() else "").partition(":")
    fail_now = fail_n.isdigit() and int(fail_n) == number
    if fail_now and fail_when != "after":
        die(f"injected failure of call {number}")
    args, flags, values = parse_argv(argv)
    for unwanted in ("event-log", "client"):  # the operations neither inline programs nor take engine events
        if unwanted in values:
            die(f"the stand-in does not serve --{unwanted}")
    if "--target-dependents" in flags:
        die("the stand-in does not serve --target-dependents (nothing here uses it)")
    # Pulumi.yaml (name and config block) and the repository's stack files, as JSON.
    project = load(home / "project.json", {"name": "idr", "config": {}, "stack_files": {}})
    if args[:1] == ["login"]:
        print("Logged in to the stand-in backend")
        return 0
    if "stack" not in values:
        die("no stack selected")
    cli = Cli(home, argv, load(home / "settings.json", {}), project)
    if args[:2] == ["stack", "init"]:
        if cli.path.exists():
            die(f"stack '{cli.stack}' already exists")
        # A stack file that exists already (this repository's) keeps its config.
        save(cli.path, {"config": dict(project["stack_files"].get(cli.stack, {})), "secrets": {}, "resources": []})
        print(f"Created stack '{cli.stack}'")
        return 0
    if not cli.path.exists():
        die(f"no stack named '{cli.stack}' found")
    cli.open()
    out = cli.run()
    save(cli.path, cli.st)
    if out:
        print(out)
    if fail_now:
        print(f"error: injected failure of call {number} (after its work)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

