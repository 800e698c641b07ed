"""Helpers shared by the operator commands: the `pulumi` CLI and OpenStack."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "idr"
ASSOCIATION_TYPE = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
VOLUME_TYPE = "openstack:blockstorage/volume:Volume"
ENVIRONMENT_TYPE = "idr:environment:IdrEnvironment"
# Every update a command runs is checked by the CrossGuard pack (relative to
# the project directory, where the commands run pulumi).
POLICY_PACK = ("--policy-pack", "policy")


class OperationError(Exception):
    """Stops a command; the message says what is wrong and what to do."""


class PulumiError(OperationError):
    def __init__(self, argv: Sequence[str], returncode: int, output: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"`{shlex.join(argv)}` failed (exit {returncode})" + (f":\n{tail}" if tail else ""))


def short_stack(stack: str) -> str:
    """'organization/idr/prod' -> 'prod' (URNs and stack files use this)."""
    return stack.split("/")[-1]


def association_urn(stack: str, environment: str) -> str:
    """URN of the proxy's floating-IP association (components/floatingip.py)."""
    return (f"urn:pulumi:{short_stack(stack)}::{PROJECT}::{ENVIRONMENT_TYPE}${ASSOCIATION_TYPE}"
            f"::{environment}-proxy-floating-ip")


class Pulumi:
    """The `pulumi` CLI, found on PATH (tests put a stand-in first)."""

    def __init__(self, binary: str = "pulumi", cwd: Path = PROJECT_DIR, echo=None):
        self.binary = binary
        self.cwd = cwd
        self.echo = echo  # callable(str) told every mutating command, or None

    def _run(self, args: Sequence[str], stack: str, mutating: bool = False) -> str:
        argv = [self.binary, *args, "--stack", stack, "--non-interactive"]
        if mutating and self.echo:
            self.echo("$ " + shlex.join(argv))
        try:
            done = subprocess.run(argv, cwd=self.cwd, capture_output=True, text=True,
                                  env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"})
        except FileNotFoundError:
            raise OperationError(f"`{self.binary}` is not on PATH: install the Pulumi CLI") from None
        if done.returncode != 0:
            raise PulumiError(argv, done.returncode, done.stdout + done.stderr)
        return done.stdout

    # ----------------------------------------------------------- config
    def config(self, stack: str) -> dict[str, str]:
        """Every config value of the stack (secrets stay hidden)."""
        data = json.loads(self._run(["config", "--json"], stack) or "{}")
        return {k: ("" if v.get("value") is None else str(v["value"])) for k, v in data.items()
                if not v.get("secret")}

    def config_set(self, stack: str, key: str, value: str) -> None:
        self._run(["config", "set", key, value], stack, mutating=True)

    def config_rm(self, stack: str, key: str) -> None:
        self._run(["config", "rm", key], stack, mutating=True)

    # ------------------------------------------------------------ state
    def outputs(self, stack: str) -> dict:
        return json.loads(self._run(["stack", "output", "--json"], stack) or "{}")

    def resources(self, stack: str) -> list[dict]:
        """Resources of the stack's last state (urn, type, protect, ...)."""
        data = json.loads(self._run(["stack", "export"], stack) or "{}")
        return list((data.get("deployment") or {}).get("resources") or [])

    def unprotect(self, stack: str, urn: str) -> None:
        self._run(["state", "unprotect", urn, "--yes"], stack, mutating=True)

    def up_target(self, stack: str, urn: str) -> str:
        return self._run(["up", *POLICY_PACK, "--target", urn, "--yes", "--skip-preview"], stack, mutating=True)

    def destroy_unprotected(self, stack: str) -> str:
        return self._run(["destroy", "--exclude-protected", "--yes", "--skip-preview"], stack, mutating=True)


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
