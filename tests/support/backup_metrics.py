"""The backups' tests' world: a deployed prod stack (the stand-in `pulumi`)
and its data volumes in the fake cloud; with a management host
(idr:monitoringEnabled) for the backup metrics' tests."""
from __future__ import annotations

from tests.support.fake_world import World, install


def prod_world(tmp_path, monkeypatch, cloud) -> World:
    """prod on 203.0.113.10, its three data volumes in `cloud`."""
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", "203.0.113.10")
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
        cloud.volumes[f"vol-prod-{role}"] = size
    return w


def with_management(world, stack: str, bastion: str, address: str, user: str = "root") -> None:
    """The stack's outputs name its hosts and bastion as the program's do
    (components/environment.py); its config the login user."""
    state = world.stack(stack)
    env = state["outputs"]["environment"]
    state["outputs"]["hosts"] = [{"name": f"{env}-proxy", "role": "proxy", "alias": "", "fixedIp": "192.168.1.10"},
                                 {"name": f"{env}-management", "role": "management", "alias": "",
                                  "fixedIp": address}]
    state["outputs"]["sshBastion"] = bastion
    state["config"]["idr:sshUser"] = user
    world.save_stack(stack, state)
