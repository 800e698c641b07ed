"""Helpers shared by the operator commands: Pulumi (through pulumi.automation) and OpenStack."""
from __future__ import annotations

import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pulumi import automation as auto

from components import PROJECT, PROJECT_DIR
from components.swap_record import ASSOCIATION_TYPE, association_urn, short_stack  # noqa: F401 (the commands' names)

VOLUME_TYPE = "openstack:blockstorage/volume:Volume"
# Every update a command runs is checked by the CrossGuard pack (relative to
# the project directory, the workspace's work_dir, where the engine runs).
POLICY_PACKS = ("policy",)


class OperationError(Exception):
    """Stops a command; the message says what is wrong and what to do."""


def _command_output(error: auto.CommandError) -> tuple[str, str]:
    """(stdout, stderr) of a failed command: the Automation API keeps them
    only in the exception's text ("\\n code: N\\n stdout: ...\\n stderr: ...")."""
    text = str(error.args[0]) if error.args else ""
    head, _, stderr = text.partition("\n stderr: ")
    _, _, stdout = head.partition("\n stdout: ")
    return stdout, stderr


class PulumiError(OperationError):
    """A Pulumi command run through the Automation API failed."""

    def __init__(self, stack: str, command: str, error: auto.CommandError, streamed: bool):
        self.stack, self.command, self.error = stack, command, error
        stdout, stderr = _command_output(error)
        # A streamed command has shown its output already: only stderr's end again.
        lines = (stderr if streamed else f"{stdout}\n{stderr}").strip().splitlines()
        tail = "\n".join(lines[-15:])
        super().__init__(self.summary() + (f":\n{tail}" if tail else ""))

    def summary(self) -> str:
        return f"`{self.command}` failed ({self.error.name})"


class ConcurrentUpdate(PulumiError):
    """The stack is locked by another update (pulumi.automation's ConcurrentUpdateError)."""

    def summary(self) -> str:
        return (f"{self.stack} is locked by another update (ConcurrentUpdateError), so `{self.command}` did not "
                f"run. Wait until that update has finished, then run this command again. If no update of "
                f"{self.stack} is running (an update that was killed leaves its lock behind), remove the lock "
                f"with `pulumi cancel -s {self.stack}` first")


class Pulumi:
    """The project's stacks through pulumi.automation: one LocalWorkspace over
    the project directory (the `pulumi` CLI it drives is found on PATH),
    stacks selected with Stack.select.

    Reads are quiet. Every change is announced to `say` as the equivalent
    CLI command; updates and destroys stream the engine's output to `say` as
    it comes, always carry a `message` (shown in the stack's history) and
    updates always run the policy pack. `workspace` may be given (tests,
    another work_dir); otherwise it is made on first use."""

    def __init__(self, work_dir: Path = PROJECT_DIR, say: Callable[[str], None] = print,
                 workspace: Optional[auto.Workspace] = None):
        self.work_dir = work_dir
        self.say = say
        self._workspace = workspace
        self._stacks: dict[str, auto.Stack] = {}
        self._lock = threading.Lock()  # the API calls back from two threads (stdout, stderr)

    # ------------------------------------------------------------ plumbing
    @property
    def workspace(self) -> auto.Workspace:
        if self._workspace is None:
            try:
                self._workspace = auto.LocalWorkspace(work_dir=str(self.work_dir),
                                                      env_vars={"PULUMI_SKIP_UPDATE_CHECK": "true"})
            except FileNotFoundError:
                raise OperationError("`pulumi` is not on PATH: install the Pulumi CLI "
                                     "(the Automation API drives it)") from None
            except subprocess.CalledProcessError as error:
                raise OperationError(f"`pulumi version` failed (exit {error.returncode}): "
                                     f"is the Pulumi CLI installed correctly?") from None
            except auto.InvalidVersionError as error:
                raise OperationError(f"the Pulumi CLI does not suit the Automation API: {error}") from None
        return self._workspace

    def stack(self, name: str) -> auto.Stack:
        if name not in self._stacks:
            self._stacks[name] = self._call(name, f"pulumi stack select {name}",
                                            lambda: auto.Stack.select(name, self.workspace))
        return self._stacks[name]

    def _call(self, stack: str, command: str, run: Callable, streamed: bool = False):
        try:
            return run()
        except auto.ConcurrentUpdateError as error:
            raise ConcurrentUpdate(stack, command, error, streamed) from None
        except auto.StackNotFoundError:
            raise OperationError(f"there is no stack {stack} (`pulumi stack ls` lists them; "
                                 f"logged in to the right backend?)") from None
        except auto.CommandError as error:
            raise PulumiError(stack, command, error, streamed) from None

    def _stream(self, line: str) -> None:
        with self._lock:
            self.say(f"    {line}")

    def _announce(self, command: str) -> None:
        self.say(f"$ {command}")

    # ----------------------------------------------------------- config
    def config(self, stack: str, *, secrets: bool = False) -> dict[str, str]:
        """Every config value of the stack; the secrets left out, or in clear
        with `secrets` (only for a login the command makes itself)."""
        command = f"pulumi config -s {stack}" + (" --show-secrets" if secrets else "")
        values = self._call(stack, command, lambda: self.stack(stack).get_all_config())
        return {k: ("" if v.value is None else str(v.value)) for k, v in values.items() if secrets or not v.secret}

    def config_set(self, stack: str, key: str, value: str) -> None:
        command = f"pulumi config set {shlex.quote(key)} {shlex.quote(value)} -s {stack}"
        self._announce(command)
        self._call(stack, command, lambda: self.stack(stack).set_config(key, auto.ConfigValue(value, secret=False)))

    def config_rm(self, stack: str, key: str) -> None:
        command = f"pulumi config rm {shlex.quote(key)} -s {stack}"
        self._announce(command)
        self._call(stack, command, lambda: self.stack(stack).remove_config(key))

    # ------------------------------------------------------------ state
    def outputs(self, stack: str) -> dict:
        values = self._call(stack, f"pulumi stack output -s {stack}", lambda: self.stack(stack).outputs())
        return {k: v.value for k, v in values.items()}

    def resources(self, stack: str) -> list[dict]:
        """Resources of the stack's last state (urn, type, protect, ...)."""
        deployment = self._call(stack, f"pulumi stack export -s {stack}", lambda: self.stack(stack).export_stack())
        return list((deployment.deployment or {}).get("resources") or [])

    def unprotect(self, stack: str, urn: str) -> None:
        """`pulumi state unprotect`: the one verb Stack and Workspace lack.
        It runs through the API's generated CLI binding (cli_api), so the same
        `pulumi` is used and a locked stack raises ConcurrentUpdateError too."""
        command = f"pulumi state unprotect -s {stack} {shlex.quote(urn)} --yes"
        self._announce(command)
        ws = self.workspace
        self.stack(stack)
        self._call(stack, command, lambda: ws.cli_api.state_unprotect(
            urn, stack=stack, cwd=ws.work_dir, additional_env=dict(ws.env_vars),
            on_output=self._stream, on_error=self._stream), streamed=True)

    # ------------------------------------------------------------ updates
    def up_target(self, stack: str, urn: str, message: str,
                  watch: Optional[Callable[[str], None]] = None) -> str:
        """A targeted `pulumi up` with the policy pack, streamed. `watch`
        sees each line of the engine's output as it arrives (the swap times
        the association's step by it)."""
        if not message:
            raise ValueError("every update carries a message")
        packs = list(POLICY_PACKS)
        command = (f"pulumi up -s {stack} --target {shlex.quote(urn)} "
                   + " ".join(f"--policy-pack {p}" for p in packs) + f" --message {shlex.quote(message)}")
        self._announce(command)

        def output(line: str) -> None:
            if watch is not None:
                watch(line)
            self._stream(line)

        result = self._call(stack, command, lambda: self.stack(stack).up(
            target=[urn], policy_packs=packs, message=message, suppress_progress=True,
            on_output=output, on_error=self._stream), streamed=True)
        return result.stdout

    def destroy_unprotected(self, stack: str, message: str) -> str:
        """`pulumi destroy --exclude-protected`, streamed (policy packs do not run on destroys)."""
        if not message:
            raise ValueError("every update carries a message")
        command = f"pulumi destroy -s {stack} --exclude-protected --message {shlex.quote(message)}"
        self._announce(command)
        result = self._call(stack, command, lambda: self.stack(stack).destroy(
            exclude_protected=True, message=message, suppress_progress=True,
            on_output=self._stream, on_error=self._stream), streamed=True)
        return result.stdout


def stack_environment(stack: str, config: dict[str, str]) -> str:
    """Environment name as the program derives it: idr:environment or the stack name."""
    return config.get(f"{PROJECT}:environment") or short_stack(stack)


# --------------------------------------------------------------- OpenStack

@dataclass(frozen=True)
class FloatingIpHolder:
    address: str
    port_id: str    # "" when the IP is free
    port_name: str  # "" when free or unnamed

    @property
    def environment(self) -> Optional[str]:
        """<env> of an IDR proxy port (<env>-proxy), else None."""
        if self.port_name.endswith("-proxy"):
            return self.port_name[: -len("-proxy")]
        return None

    def describe(self) -> str:
        if not self.port_id:
            return f"{self.address} is free"
        return f"{self.address} is held by port {self.port_name or '(unnamed)'} ({self.port_id})"


class OpenStack:
    """The few OpenStack questions the commands ask, through openstacksdk."""

    def __init__(self, connection):
        self.conn = connection

    def floating_ip(self, address: str) -> FloatingIpHolder:
        found = list(self.conn.network.ips(floating_ip_address=address))
        if not found:
            raise OperationError(f"floating IP {address} is not allocated in this OpenStack project")
        port_id = found[0].port_id or ""
        name = self.conn.network.get_port(port_id).name or "" if port_id else ""
        return FloatingIpHolder(address, port_id, name)

    def floating_ips_of_port(self, port_name: str) -> list[str]:
        """Addresses of the floating IPs bound to the port(s) of that name."""
        found = []
        for port in self.conn.network.ports(name=port_name):
            found += [ip.floating_ip_address for ip in self.conn.network.ips(port_id=port.id)]
        return sorted(found)


def connect(cloud: Optional[str] = None):
    """openstacksdk connection from clouds.yaml (--os-cloud / OS_CLOUD) or OS_* variables."""
    import openstack
    try:
        return openstack.connect(cloud=cloud) if cloud else openstack.connect()
    except Exception as error:  # openstacksdk raises several kinds for missing credentials
        raise OperationError(f"cannot connect to OpenStack ({error}); source your openrc or pass --os-cloud")


def confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    try:
        return input(f"{question} [yes/no] ").strip().lower() == "yes"
    except EOFError:  # no terminal: only --yes can agree
        return False
