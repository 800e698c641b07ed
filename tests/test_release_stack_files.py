"""The stack files as the CLI and the swap leave them pass the project's
checks and the program's config checks, so that committing them after a
release (README "New release", step 6) does not break the next deploy, which
runs the tests first.

The stand-in `pulumi` (tests/support/fake_pulumi.py) starts from the repository's
Pulumi.prod.yaml and Pulumi.newidr.yaml, an operator sets a few values the
way the README says (`pulumi config set`: strings), the swap runs (and, in a
second case, stops half-way), and the stack files are written as the CLI
writes them into a copy of the project; then the checks of
tests/test_project_files.py and the program itself (offline) read them."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from components.offline import PROJECT_DIR, run_stack
from tests.support.fake_world import install
from tests.support.stack_files import PROJECT, stack_file_problems
from tests.support.swap_world import PUBLIC, SPARE, Web, run

FIP = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"


@pytest.fixture
def release(tmp_path, monkeypatch):
    world = install(tmp_path, monkeypatch)
    for stack in ("prod", "newidr"):
        world.add_stack_from_file(stack, PROJECT_DIR / f"Pulumi.{stack}.yaml")
    # The addresses the stub web servers play, bound as the stacks say.
    world.set_neutron("203.0.113.10", None)
    world.set_neutron("203.0.113.20", None)
    for stack, ip in (("prod", PUBLIC), ("newidr", SPARE)):
        state = world.stack(stack)
        state["config"]["idr:floatingIp"] = ip
        next(r for r in state["resources"] if r["type"] == FIP)["inputs"]["floatingIp"] = ip
        world.save_stack(stack, state)
        world.set_neutron(ip, f"{stack}-proxy")
    # What an operator sets by hand on the way (README: Config reference).
    for args in (("idr:omeroreadonlyCount", "5", "-s", "newidr"), ("idr:maintenance", "false", "-s", "newidr"),
                 ("idr:deploymentRef", "0123456789abcdef0123456789abcdef01234567", "-s", "newidr"),
                 ("idr:omeroreadonlyCount", "4", "-s", "prod"), ("idr:maintenance", "true", "-s", "prod")):
        subprocess.run(["pulumi", "config", "set", *args], check=True)
    web = Web(world)
    yield world, web, tmp_path
    web.close()


def written(world, tmp_path):
    """A copy of the project with the stack files as the CLI leaves them."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", project / "Pulumi.yaml")
    for stack in ("prod", "newidr"):
        (project / f"Pulumi.{stack}.yaml").write_text(world.stack_file(stack, PROJECT_DIR / f"Pulumi.{stack}.yaml"))
    return project


def check(project):
    for stack in ("prod", "newidr"):
        assert stack_file_problems(project / f"Pulumi.{stack}.yaml", PROJECT) == [], stack
    prod = run_stack("prod", project_dir=project)
    newidr = run_stack("newidr", project_dir=project, stack_outputs={"prod": prod.outputs})
    return prod, newidr


def test_stack_files_after_a_release_pass_the_checks(release):
    world, web, tmp_path = release
    assert run(world, web) == 0
    project = written(world, tmp_path)
    files = {s: yaml.safe_load((project / f"Pulumi.{s}.yaml").read_text())["config"] for s in ("prod", "newidr")}
    # As the CLI writes them: strings, and the swap's record.
    assert files["newidr"]["idr:omeroreadonlyCount"] == "5" and files["newidr"]["idr:maintenance"] == "false"
    assert files["prod"]["idr:floatingIp"] == SPARE and files["newidr"]["idr:floatingIp"] == PUBLIC
    assert '"status": "done"' in files["prod"]["idrswap:state"]
    assert files["prod"]["idr:omeroreadonlyCount"] == "4" and files["prod"]["idr:maintenance"] == "true"
    assert files["prod"]["idr:databaseVolumeSize"] == 800, "a value nobody set keeps the file's type"
    prod, newidr = check(project)
    assert len(newidr.of_type("openstack:compute/instance:Instance")) == 5 + 5  # 5 read-only servers, the management host
    (assoc,) = prod.of_type(FIP)
    assert assoc.inputs["floatingIp"] == SPARE and not assoc.options.retain_on_delete


def test_stack_files_of_a_swap_cut_short_pass_the_checks(release):
    """A release stopped half-way (the swap's record in progress) is committed
    too, sometimes: the checks accept it, and the program reads the record."""
    world, web, tmp_path = release
    world.clear_calls()
    world.fail_at(32)  # step 4: prod's `config rm idr:floatingIp`
    assert run(world, web) == 2
    world.fail_at(None)
    project = written(world, tmp_path)
    record = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())["config"]["idrswap:state"]
    assert '"status": "in-progress"' in record
    prod, _ = check(project)
    (assoc,) = prod.of_type(FIP) or (None,)
    assert assoc is None or assoc.options.retain_on_delete, "prod hands its IP over: retained"
