"""What the workflows run is fixed by the repository: every third-party
action by its commit, with the release it is in a comment beside it, and the
Pulumi CLI by .pulumi-version, the one place its version is written, which
the pulumi SDK pins of requirements.txt and of the policy pack follow."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.support.workflows import FILES, ROOT, WORKFLOWS, load, pinned

VERSION_FILE = ROOT / ".pulumi-version"
SEMVER = r"\d+\.\d+\.\d+"
PIN = re.compile(rf"(?P<action>[\w.-]+/[\w.-]+(?:/[\w./-]+)?)@(?P<sha>[0-9a-f]{{40}}) # (?P<version>v{SEMVER})")
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<value>.*?)\s*$", re.M)


def pin_problems(text: str) -> list[str]:
    """Every `uses:` of a workflow's text that is not `owner/repo@<40 hex> # vX.Y.Z`."""
    return [m["value"] for m in USES.finditer(text) if not PIN.fullmatch(m["value"])]


def pins(text: str) -> list[tuple[str, str, str]]:
    return [(p["action"], p["sha"], p["version"]) for m in USES.finditer(text)
            if (p := PIN.fullmatch(m["value"]))]


def all_steps(name: str) -> list[dict]:
    return [step for job in load(name)["jobs"].values() for step in job["steps"]]


# ------------------------------------------------------------------ actions

@pytest.mark.parametrize("name", FILES)
def test_every_action_is_pinned_by_commit_with_its_release_in_a_comment(name):
    text = (WORKFLOWS / name).read_text()
    assert pin_problems(text) == []
    # The text check saw every step that uses an action (none hides in a flow mapping).
    assert len(pins(text)) == sum("uses" in step for step in all_steps(name)) > 0


@pytest.mark.parametrize("uses", [
    "actions/checkout@v5",
    "actions/checkout@v5.1.0",
    "actions/checkout@main",
    "actions/checkout@fbc6f39 # v5.1.0",
    "actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09",
    "actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # v5",
    "actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # main",
    "actions/checkout@FBC6F3992D24B796D5A048FF273F7FCC4A7B6C09 # v5.1.0",
    "./.github/actions/local",
    "docker://alpine:3",
])
def test_pin_check_rejects_anything_but_a_commit_and_its_release(uses):
    assert pin_problems(f"    steps:\n      - uses: {uses}\n") == [uses]


def test_pin_check_accepts_a_pin():
    uses = "pulumi/actions@8582a9e8cc630786854029b4e09281acd6794b58 # v6.6.1"
    assert pin_problems(f"      - name: x\n        uses: {uses}\n") == []
    assert pins(f"      - uses: {uses}\n") == [("pulumi/actions", "8582a9e8cc630786854029b4e09281acd6794b58", "v6.6.1")]


def test_each_action_is_pinned_to_one_commit_everywhere():
    seen: dict[str, set[tuple[str, str]]] = {}
    for name in FILES:
        for action, sha, version in pins((WORKFLOWS / name).read_text()):
            seen.setdefault(action, set()).add((sha, version))
    assert {action: len(found) for action, found in seen.items()} == {action: 1 for action in seen}
    # One commit is one release: no two actions' entries share a SHA by a copying slip.
    shas = [sha for found in seen.values() for sha, _ in found]
    assert len(shas) == len(set(shas))


# --------------------------------------------------------------- Pulumi CLI

def cli_version() -> str:
    text = VERSION_FILE.read_text()
    assert re.fullmatch(rf"{SEMVER}\n", text), "one line, X.Y.Z"
    return text.strip()


def test_the_sdk_pins_follow_the_cli_version():
    assert pinned("pulumi") == cli_version()
    assert pinned("pulumi", "policy/requirements.txt") == cli_version()


def pulumi_steps(name: str) -> list[tuple[str, list[dict], int]]:
    """(job name, its steps, index) of every pulumi/actions step of a workflow."""
    return [(job_name, job["steps"], i) for job_name, job in load(name)["jobs"].items()
            for i, step in enumerate(job["steps"]) if step.get("uses", "").startswith("pulumi/actions@")]


@pytest.mark.parametrize("name", FILES)
def test_every_pulumi_install_reads_the_version_file(name):
    for job_name, job_steps, i in pulumi_steps(name):
        w = job_steps[i]["with"]
        assert w["pulumi-version-file"] == VERSION_FILE.name and "pulumi-version" not in w, job_name
        # The file is there: the repository is checked out, at its root, before.
        checkouts = [s for s in job_steps[:i] if s.get("uses", "").startswith("actions/checkout@")]
        assert checkouts and "path" not in checkouts[0].get("with", {}), job_name


@pytest.mark.parametrize("name", FILES)
def test_every_job_that_runs_pulumi_installs_it_first(name):
    for job_name, job in load(name)["jobs"].items():
        for i, step in enumerate(job["steps"]):
            if re.search(r"^\s*pulumi\s", step.get("run", ""), re.M):
                assert any(s.get("uses", "").startswith("pulumi/actions@") for s in job["steps"][:i]), job_name


@pytest.mark.parametrize("name", FILES)
def test_no_workflow_writes_a_cli_version_of_its_own(name):
    text = (WORKFLOWS / name).read_text()
    assert cli_version() not in text
    assert not re.search(r"pulumi-version\s*:", text)
    assert "get.pulumi.com" not in text  # no other installer


def test_the_version_checks_catch_a_disagreement(tmp_path, monkeypatch):
    """Not vacuous: a version file that moved alone fails the check."""
    me = sys.modules[__name__]
    moved = tmp_path / ".pulumi-version"
    moved.write_text("3.999.0\n")
    monkeypatch.setattr(me, "VERSION_FILE", moved)
    with pytest.raises(AssertionError):
        test_the_sdk_pins_follow_the_cli_version()
    moved.write_text("v3.272.0\n")
    with pytest.raises(AssertionError):
        cli_version()
