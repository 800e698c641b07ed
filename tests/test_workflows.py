"""The GitHub workflows: valid against the workflow JSON schema that
check-jsonschema ships (no network needed), wired to the project as the
design says, their shell steps clean under shellcheck, and the fork-PR
comment script run against a stub of the GitHub API."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = ["preview.yml", "deploy.yml", "preview-comment.yml"]
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads `on` as true
    return data


def steps(job: dict, uses_prefix: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith(uses_prefix)]


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def pinned(requirement: str, file: str = "requirements.txt") -> str:
    text = (ROOT / file).read_text()
    return re.search(rf"^{re.escape(requirement)}==(\S+)$", text, re.M).group(1)


# ------------------------------------------------------------------- schema

@pytest.mark.parametrize("name", FILES)
def test_workflow_matches_the_github_workflow_schema(name):
    result = validate(WORKFLOWS / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    """The validator is not vacuous: the same preview with a misspelt key fails."""
    broken = tmp_path / "broken.yml"
    broken.write_text((WORKFLOWS / "preview.yml").read_text().replace("runs-on:", "run-on:", 1))
    result = validate(broken)
    assert result.returncode != 0 and "run-on" in result.stdout + result.stderr


# ------------------------------------------------------------------ preview

def test_stacks_exist():
    assert STACKS == ["newidr", "prod"]


def runs_test_command_as_root(run: str) -> bool:
    """The README's test command, as root (apt-get, loop devices), then the
    checkout handed back to the runner's user for the later steps."""
    lines = run.strip().splitlines()
    return lines == ['sudo --preserve-env env "PATH=$PATH" scripts/test', 'sudo chown -R "$(id -u):$(id -g)" .']


def test_preview_runs_tests_then_every_stack_with_the_policy_pack():
    wf = load("preview.yml")
    assert set(wf["on"]) == {"pull_request"}
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    (test,) = [s["run"] for s in jobs["test"]["steps"] if "run" in s]
    assert runs_test_command_as_root(test)
    preview = jobs["preview"]
    assert preview["needs"] == "test"
    assert sorted(preview["strategy"]["matrix"]["stack"]) == STACKS
    assert preview["permissions"] == {"contents": "read", "pull-requests": "write"}
    (action,) = steps(preview, "pulumi/actions@")
    assert re.fullmatch(r"pulumi/actions@v\d+\.\d+\.\d+", action["uses"])  # a release tag, not a branch
    w = action["with"]
    assert w["command"] == "preview" and w["stack-name"] == "${{ matrix.stack }}"
    assert w["comment-on-pr"] is True
    assert w["policyPacks"] == "policy" and (ROOT / "policy" / "PulumiPolicy.yaml").exists()
    assert wf["env"]["PULUMI_VERSION"] == pinned("pulumi") and w["pulumi-version"] == "${{ env.PULUMI_VERSION }}"
    assert w["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    env = preview["env"]
    for key in ("PULUMI_CONFIG_PASSPHRASE", "OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID",
                "OS_APPLICATION_CREDENTIAL_SECRET"):
        assert env[key] == f"${{{{ secrets.{key} }}}}"
    assert env["AWS_ACCESS_KEY_ID"].startswith("${{ secrets.")


def test_forks_get_the_offline_render_diff_without_secrets():
    wf = load("preview.yml")
    preview, render = wf["jobs"]["preview"], wf["jobs"]["render-diff"]
    fork = "github.event.pull_request.head.repo.fork"
    assert preview["if"] == f"${{{{ !{fork} }}}}" and render["if"] == f"${{{{ {fork} }}}}"
    assert "permissions" not in render  # the workflow's contents: read
    assert "secrets." not in yaml.safe_dump(render)
    checkouts = steps(render, "actions/checkout@")
    assert [c["with"]["path"] for c in checkouts] == ["head", "base"]
    assert checkouts[1]["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    script = "\n".join(s.get("run", "") for s in render["steps"])
    assert "python -m components.render" in script and "for stack in prod newidr" in script
    assert "diff -ruN base head" in script
    (upload,) = steps(render, "actions/upload-artifact@")
    assert upload["with"]["name"] == "render-diff"


def test_fork_comment_workflow_never_runs_fork_code():
    wf = load("preview-comment.yml")
    assert wf["on"] == {"workflow_run": {"workflows": [load("preview.yml")["name"]], "types": ["completed"]}}
    assert wf["permissions"] == {}
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"actions": "read", "pull-requests": "write"}
    assert not steps(job, "actions/checkout@") and not any("run" in s for s in job["steps"])
    assert "head_repository.fork" in job["if"]
    (download,) = steps(job, "actions/download-artifact@")
    assert download["with"]["name"] == "render-diff"


# ------------------------------------------------------------------- deploy

def test_deploy_is_manual_per_stack_behind_its_environment():
    wf = load("deploy.yml")
    assert set(wf["on"]) == {"workflow_dispatch"}
    stack = wf["on"]["workflow_dispatch"]["inputs"]["stack"]
    assert stack["type"] == "choice" and sorted(stack["options"]) == STACKS and stack["required"] is True
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert job["environment"] == "${{ inputs.stack }}"
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs_test_command_as_root(runs[0])
    (action,) = steps(job, "pulumi/actions@")
    assert action["uses"] == steps(load("preview.yml")["jobs"]["preview"], "pulumi/actions@")[0]["uses"]
    w = action["with"]
    assert (w["command"], w["stack-name"], w["policyPacks"]) == ("up", "${{ inputs.stack }}", "policy")
    assert w["pulumi-version"] == pinned("pulumi")
    assert wf["concurrency"]["cancel-in-progress"] is False


# -------------------------------------------------------------- all of them

@pytest.mark.parametrize("name", FILES)
def test_every_action_is_pinned_to_a_release(name):
    for job in load(name)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+(\.\d+\.\d+)?", step["uses"]), step["uses"]


def test_no_workflow_uses_pull_request_target():
    for name in FILES:
        assert "pull_request_target" not in (WORKFLOWS / name).read_text()


def test_policy_pack_pins_the_program_sdk():
    text = (ROOT / "policy" / "requirements.txt").read_text()
    assert f"pulumi=={pinned('pulumi')}" in text.split()
    assert f"pulumi-policy=={pinned('pulumi-policy', 'requirements-dev.txt')}" in text.split()


@pytest.mark.parametrize("name", FILES)
def test_shell_steps_pass_shellcheck(name, tmp_path):
    for job_name, job in load(name)["jobs"].items():
        for i, step in enumerate(job["steps"]):
            if "run" not in step:
                continue
            # Expressions are substituted by the runner before bash sees the text.
            body = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", step["run"])
            script = tmp_path / f"{job_name}-{i}.sh"
            script.write_text("#!/bin/bash\nset -eo pipefail\n" + body)  # GitHub's default shell
            result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout


# ----------------------------------------- the fork comment script, for real

HARNESS = r"""
const fs = require('fs');
const [scriptFile, stateFile] = process.argv.slice(2);
const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
const calls = [];
const api = (name, result) => async (args) => { calls.push([name, args]); return { data: result(args) }; };
const github = {
  paginate: async (fn, args) => (await fn(args)).data,
  rest: {
    pulls: { list: api('pulls.list', () => state.pulls) },
    issues: {
      listComments: api('issues.listComments', () => state.comments),
      updateComment: api('issues.updateComment', () => ({})),
      createComment: api('issues.createComment', () => ({})),
    },
  },
};
const context = { payload: { workflow_run: state.run }, repo: { owner: 'IDR', repo: 'idr-pulumi' } };
const core = { info: (m) => calls.push(['info', m]) };
const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
new AsyncFunction('github', 'context', 'core', 'require', fs.readFileSync(scriptFile, 'utf8'))(github, context, core, require)
  .then(() => console.log(JSON.stringify(calls)), (e) => { console.error(e); process.exit(1); });
"""


def run_comment_script(tmp_path, diff: str, pulls: list, comments: list) -> list:
    (job,) = load("preview-comment.yml")["jobs"].values()
    (script_step,) = steps(job, "actions/github-script@")
    (tmp_path / "render-diff").mkdir(exist_ok=True)
    (tmp_path / "render-diff" / "render.diff").write_text(diff)
    (tmp_path / "script.js").write_text(script_step["with"]["script"])
    (tmp_path / "harness.js").write_text(HARNESS)
    run = {"head_sha": "a" * 40, "head_branch": "fix-nginx", "head_repository": {"owner": {"login": "someone"}}}
    (tmp_path / "state.json").write_text(json.dumps({"run": run, "pulls": pulls, "comments": comments}))
    result = subprocess.run(["node", "harness.js", "script.js", "state.json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_comment_script_posts_the_diff_on_the_matching_pull_request(tmp_path):
    diff = "--- base/prod/x\n+++ head/prod/x\n-old\n+new ``` not a fence end\n"
    pulls = [{"number": 7, "head": {"sha": "b" * 40}}, {"number": 9, "head": {"sha": "a" * 40}}]
    calls = run_comment_script(tmp_path, diff, pulls, [])
    assert calls[0] == ["pulls.list", {"owner": "IDR", "repo": "idr-pulumi", "state": "open",
                                       "head": "someone:fix-nginx"}]
    (create,) = [args for name, args in calls if name == "issues.createComment"]
    assert create["issue_number"] == 9
    body = create["body"]
    assert body.startswith("<!-- idr-render-diff -->") and diff in body
    assert "````diff\n" in body  # fenced longer than the diff's own backticks


def test_comment_script_updates_its_comment_and_ignores_stale_runs(tmp_path):
    pulls = [{"number": 9, "head": {"sha": "a" * 40}}]
    comments = [{"id": 1, "user": {"type": "User"}, "body": "<!-- idr-render-diff --> copied by a person"},
                {"id": 2, "user": {"type": "Bot"}, "body": "<!-- idr-render-diff -->\nold"}]
    calls = run_comment_script(tmp_path, "", pulls, comments)
    (update,) = [args for name, args in calls if name == "issues.updateComment"]
    assert update["comment_id"] == 2 and "No rendered file changes" in update["body"]
    assert not [c for c in calls if c[0] == "issues.createComment"]
    # The pull request moved on since this run: nothing is posted.
    calls = run_comment_script(tmp_path, "x", [{"number": 9, "head": {"sha": "c" * 40}}], [])
    assert [c[0] for c in calls] == ["pulls.list", "info"]
