"""The GitHub workflows: valid against the workflow JSON schema that
check-jsonschema ships (no network needed), wired to the project as the
design says, their shell steps clean under shellcheck, and the steps that
run pulumi and the render run for real against stand-ins of pulumi and
scripts/render. The pinning of actions and of the Pulumi CLI version is in
test_workflows_pinning.py, the PR comment script in test_workflows_comment.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.workflows import FILES, ROOT, STACKS, WORKFLOWS, load, pinned, steps

SUMMARY = ROOT / ".github" / "scripts" / "summary"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
SECRET_ENV = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "OS_AUTH_URL", "OS_REGION_NAME",
              "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET")


def named(job: dict, name: str) -> dict:
    (step,) = [s for s in job["steps"] if s.get("name") == name]
    return step


def validate(path: Path, schema: str = "vendor.github-workflows") -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


def run_step(step: dict, cwd: Path, env: dict, path_dirs: list[Path] = ()) -> subprocess.CompletedProcess:
    """A `run:` step as the runner runs it: bash -eo pipefail, the step's env
    (expressions already substituted by the caller), $GITHUB_STEP_SUMMARY."""
    full_env = {**os.environ, **env,
                "PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]),
                "GITHUB_STEP_SUMMARY": str(cwd / "summary.md")}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def secrets_env_ok(env: dict) -> None:
    for key in SECRET_ENV:
        assert env[key] == f"${{{{ secrets.{key} }}}}", key
    assert env["AWS_ACCESS_KEY_ID"].startswith("${{ secrets.")
    assert env["OS_AUTH_TYPE"] == "v3applicationcredential"


# ------------------------------------------------------------------- schema

def test_the_workflows_are_these():
    assert FILES == ["deploy.yml", "drift.yml", "preview-comment.yml", "preview.yml"]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflow_matches_the_github_workflow_schema(name, schema):
    result = validate(WORKFLOWS / name, schema)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_config_matches_its_schema():
    result = validate(ROOT / ".github" / "dependabot.yml", "vendor.dependabot")
    assert result.returncode == 0, result.stdout + result.stderr
    (update,) = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())["updates"]
    assert update["package-ecosystem"] == "github-actions"


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


SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"


def test_preview_runs_tests_then_every_stack_with_the_policy_pack():
    wf = load("preview.yml")
    assert set(wf["on"]) == {"pull_request"}
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    (test,) = [s["run"] for s in jobs["test"]["steps"] if "run" in s]
    assert runs_test_command_as_root(test)
    preview = jobs["preview"]
    assert preview["needs"] == "test"
    # Same-repository pull requests only (a fork's run has no secrets). Not
    # `head.repo.fork`: that is also true when this repository is a fork.
    assert preview["if"] == f"${{{{ {SAME_REPO} }}}}"
    assert sorted(preview["strategy"]["matrix"]["stack"]) == STACKS
    assert preview["strategy"]["fail-fast"] is False
    assert "permissions" not in preview  # contents: read; preview-comment.yml comments
    secrets_env_ok(preview["env"])
    run = named(preview, "pulumi preview")
    assert run["env"] == {"STACK": "${{ matrix.stack }}"}
    assert 'pulumi preview --stack "$STACK" --policy-pack policy --diff' in run["run"]
    assert (ROOT / "policy" / "PulumiPolicy.yaml").exists()
    (upload,) = steps(preview, "actions/upload-artifact@")
    assert upload["with"]["name"] == "preview-${{ matrix.stack }}" and upload["with"]["path"] == "preview/"
    assert upload["if"] == "${{ !cancelled() }}"  # a failed preview's output is posted too


def fake_pulumi(tmp_path: Path, output: str, status: int) -> Path:
    """A `pulumi` that logs its arguments, prints `output` and exits `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "pulumi-output").write_text(output)
    script = bin_dir / "pulumi"
    script.write_text(f"""#!/bin/bash
echo "$*" >> "{tmp_path}/pulumi-calls"
[ "$1" = login ] && exit 0
cat "{tmp_path}/pulumi-output"
exit {status}
""")
    script.chmod(0o755)
    return bin_dir


def workspace(tmp_path: Path) -> Path:
    """A checkout as far as the steps need: the summary helper."""
    ws = tmp_path / "ws"
    (ws / ".github" / "scripts").mkdir(parents=True)
    (ws / ".github" / "scripts" / "summary").symlink_to(SUMMARY)
    return ws


@pytest.mark.parametrize("status", [0, 255])
def test_preview_step_keeps_the_output_and_status_and_fails_with_pulumi(tmp_path, status):
    step = named(load("preview.yml")["jobs"]["preview"], "pulumi preview")
    ws = workspace(tmp_path)
    output = "Previewing update (prod):\n ~ command:remote:CopyToRemote nginx-conf update\nResources:\n    ~ 1 to update\n"
    result = run_step(step, ws, {"STACK": "prod", "PULUMI_BACKEND_URL": "s3://state"},
                      [fake_pulumi(tmp_path, output, status)])
    assert result.returncode == status, result.stderr
    assert (tmp_path / "pulumi-calls").read_text().splitlines() == [
        "login s3://state",
        "preview --stack prod --policy-pack policy --diff --non-interactive --color never"]
    assert (ws / "preview" / "output.txt").read_text() == output
    assert (ws / "preview" / "status").read_text() == f"{status}\n"
    summary = (ws / "summary.md").read_text()
    verdict = "succeeded" if status == 0 else "failed (exit status 255)"
    assert summary.startswith(f"### pulumi preview of prod: {verdict}\n") and output in summary


def test_render_diff_runs_for_every_pull_request_without_secrets():
    wf = load("preview.yml")
    render = wf["jobs"]["render-diff"]
    assert render["needs"] == "test" and "if" not in render  # forks and same-repository pull requests
    assert "permissions" not in render  # the workflow's contents: read
    assert "secrets." not in yaml.safe_dump(render)
    checkouts = steps(render, "actions/checkout@")
    assert [c["with"]["path"] for c in checkouts] == ["head", "base"]
    assert checkouts[1]["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert all(c["with"]["persist-credentials"] is False for c in checkouts)
    script = named(render, "Render base and head")["run"]
    assert '"$tree/scripts/render" "$stack"' in script  # the README's offline render
    assert "diff -ruN base head" in named(render, "Diff")["run"]
    (upload,) = steps(render, "actions/upload-artifact@")
    assert upload["with"]["name"] == "render-diff" and upload["with"]["path"] == "render-diff/"


def fake_tree(root: Path, stacks: dict[str, dict[str, str]]) -> None:
    """A checkout whose scripts/render writes the given files of each stack
    into the output directory, which must exist and be given absolutely."""
    (root / "scripts").mkdir(parents=True)
    (root / ".github" / "scripts").mkdir(parents=True)
    (root / ".github" / "scripts" / "summary").symlink_to(SUMMARY)
    render = root / "scripts" / "render"
    render.write_text('#!/bin/bash\nset -e\n[ -d "$2" ] && [ "${2:0:1}" = / ]\n'
                      'cp -r "$(dirname "$0")/../data/$1/." "$2/"\n')
    render.chmod(0o755)
    for stack, files in stacks.items():
        (root / f"Pulumi.{stack}.yaml").write_text("config: {}\n")
        for name, content in files.items():
            (root / "data" / stack / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "data" / stack / name).write_text(content)


def test_render_diff_steps_diff_every_stack_of_base_and_head(tmp_path):
    render = load("preview.yml")["jobs"]["render-diff"]
    ws = tmp_path / "ws"
    fake_tree(ws / "base", {"prod": {"etc/nginx.conf": "listen 80;\n", "same": "x\n"},
                            "gone": {"f": "old\n"}})
    fake_tree(ws / "head", {"prod": {"etc/nginx.conf": "listen 443;\n", "same": "x\n"},
                            "new": {"g": "```\n"}})
    for name in ("Render base and head", "Diff"):
        result = run_step(named(render, name), ws, {})
        assert result.returncode == 0, result.stderr
    diff = (ws / "render-diff" / "render.diff").read_text()
    changed = re.findall(r"^diff -ruN base/(\S+) head/", diff, re.M)
    assert sorted(changed) == ["gone/f", "new/g", "prod/etc/nginx.conf"]
    assert "-listen 80;\n+listen 443;\n" in diff and "+```\n" in diff
    summary = (ws / "summary.md").read_text()
    assert summary.startswith("### Offline render diff: changed files: 3\n\n````diff\n")


def test_render_diff_of_no_change_is_empty_and_says_so(tmp_path):
    render = load("preview.yml")["jobs"]["render-diff"]
    ws = tmp_path / "ws"
    for tree in ("base", "head"):
        fake_tree(ws / tree, {"prod": {"a": "1\n"}, "newidr": {"b": "2\n"}})
    for name in ("Render base and head", "Diff"):
        assert run_step(named(render, name), ws, {}).returncode == 0
    assert (ws / "render-diff" / "render.diff").read_text() == ""
    assert (ws / "summary.md").read_text().startswith("### Offline render diff: no rendered file changes\n")


def test_render_diff_fails_when_the_render_fails(tmp_path):
    render = load("preview.yml")["jobs"]["render-diff"]
    ws = tmp_path / "ws"
    fake_tree(ws / "base", {"prod": {"a": "1\n"}})
    fake_tree(ws / "head", {"prod": {"a": "1\n"}})
    (ws / "head" / "scripts" / "render").write_text("#!/bin/bash\nexit 1\n")
    assert run_step(named(render, "Render base and head"), ws, {}).returncode != 0


def test_comment_workflow_posts_for_every_pull_request_and_never_runs_its_code():
    wf = load("preview-comment.yml")
    assert wf["on"] == {"workflow_run": {"workflows": [load("preview.yml")["name"]], "types": ["completed"]}}
    assert wf["permissions"] == {}
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"actions": "read", "pull-requests": "write"}
    assert not steps(job, "actions/checkout@") and not any("run" in s for s in job["steps"])
    condition = " ".join(job["if"].split())
    assert "github.event.workflow_run.event == 'pull_request'" in condition
    assert "fork" not in condition  # same-repository pull requests too
    assert "conclusion == 'success'" in condition and "conclusion == 'failure'" in condition
    (download,) = steps(job, "actions/download-artifact@")
    assert "name" not in download["with"] and download["with"]["path"] == "artifacts"  # all, one folder each
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"


# ------------------------------------------------------------------- deploy

def test_deploy_is_manual_per_stack_behind_its_environment():
    wf = load("deploy.yml")
    assert set(wf["on"]) == {"workflow_dispatch"}
    stack = wf["on"]["workflow_dispatch"]["inputs"]["stack"]
    assert stack["type"] == "choice" and sorted(stack["options"]) == STACKS and stack["required"] is True
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert job["if"] == "github.ref == 'refs/heads/main'"
    assert job["environment"] == "${{ inputs.stack }}"
    secrets_env_ok({**job["env"], "PULUMI_BACKEND_URL": "${{ secrets.PULUMI_BACKEND_URL }}"})
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs_test_command_as_root(runs[0])
    (action,) = steps(job, "pulumi/actions@")
    w = action["with"]
    assert (w["command"], w["stack-name"], w["policyPacks"]) == ("up", "${{ inputs.stack }}", "policy")
    assert w["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert wf["concurrency"]["cancel-in-progress"] is False


# -------------------------------------------------------------------- drift

def test_drift_previews_every_stack_on_a_schedule_with_refresh_and_the_policy_pack():
    wf = load("drift.yml")
    assert set(wf["on"]) == {"schedule", "workflow_dispatch"}
    (cron,) = [s["cron"] for s in wf["on"]["schedule"]]
    assert len(cron.split()) == 5
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert sorted(job["strategy"]["matrix"]["stack"]) == STACKS and job["strategy"]["fail-fast"] is False
    # No environment: prod's would wait for a reviewer every night. A preview
    # writes no state, so the previews' (read-only) credential serves.
    assert "environment" not in job
    secrets_env_ok(job["env"])
    step = named(job, "pulumi preview --refresh --expect-no-changes")
    assert step["env"] == {"STACK": "${{ matrix.stack }}"}
    assert job["concurrency"]["group"] == "drift-${{ matrix.stack }}"


@pytest.mark.parametrize("status, output, title", [
    (0, "Resources:\n    84 unchanged\n", "No drift in newidr"),
    (255, " ~ openstack:networking/secGroupRule:SecGroupRule ssh update [diff: ~remoteIpPrefix]\n"
          "error: no changes were expected but changes were proposed\n",
     "Drift in newidr: the cloud differs from the program"),
    (255, "error: no changes were expected for preview but changes were proposed\n",
     "Drift in newidr: the cloud differs from the program"),
    (255, "Policy Violations:\n    [mandatory]  idr-guard-rails v0.0.1  data-volumes-protected\n",
     "Drift check of newidr failed (exit status 255)"),
])
def test_drift_step_fails_visibly_with_the_drift_in_the_job_summary(tmp_path, status, output, title):
    (job,) = load("drift.yml")["jobs"].values()
    step = named(job, "pulumi preview --refresh --expect-no-changes")
    ws = workspace(tmp_path)
    result = run_step(step, ws, {"STACK": "newidr", "PULUMI_BACKEND_URL": "s3://state"},
                      [fake_pulumi(tmp_path, output, status)])
    assert result.returncode == status
    assert (tmp_path / "pulumi-calls").read_text().splitlines() == [
        "login s3://state",
        "preview --stack newidr --refresh --expect-no-changes --policy-pack policy --diff"
        " --non-interactive --color never"]
    summary = (ws / "summary.md").read_text()
    assert summary.startswith(f"### {title}\n\n```\n") and output in summary
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    if status == 0:
        assert not errors
    else:
        # A workflow command: the title is a property (no ':' or ',' in it),
        # the message says where the output is.
        (error,) = errors
        props, message = error[len("::error "):].split("::", 1)
        assert props == "title=drift check of newidr" and title in message and "job summary" in message


# -------------------------------------------------------------- all of them

def test_no_workflow_uses_pull_request_target():
    for name in FILES:
        assert "pull_request_target" not in (WORKFLOWS / name).read_text()


def test_jobs_with_secrets_never_check_out_a_fork():
    """Secrets reach only jobs that run on main, by hand or on schedule, or
    for same-repository pull requests."""
    for name in FILES:
        wf = load(name)
        for job_name, job in wf["jobs"].items():
            if "secrets." not in yaml.safe_dump(job):
                continue
            triggers = set(wf["on"])
            assert triggers <= {"workflow_dispatch", "schedule", "pull_request"}, (name, job_name)
            if "pull_request" in triggers:
                assert job["if"] == f"${{{{ {SAME_REPO} }}}}", (name, job_name)


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


def test_no_run_step_interpolates_an_expression():
    """Expressions reach shell steps through env, never spliced into the
    script text, where a branch name or a matrix value would be code."""
    for name in FILES:
        for job in load(name)["jobs"].values():
            for step in job["steps"]:
                assert "${{" not in step.get("run", ""), (name, step.get("name"))


# ------------------------------------------------------ the summary helper

def test_summary_helper_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SUMMARY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def summarise(tmp_path: Path, text: str, *args: str, limit: int | None = None) -> tuple[int, str]:
    source = tmp_path / "in.txt"
    source.write_text(text)
    out = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(out)}
    if limit is not None:
        env["SUMMARY_LIMIT"] = str(limit)
    result = subprocess.run([str(SUMMARY), "The title", str(source), *args], env=env,
                            capture_output=True, text=True, timeout=60)
    return result.returncode, out.read_text() if out.exists() else ""


def test_summary_fences_text_longer_than_its_own_backticks(tmp_path):
    status, md = summarise(tmp_path, "+a ```` b\n-c", "diff")
    assert status == 0
    assert md == "### The title\n\n`````diff\n+a ```` b\n-c\n`````\n\n"


def test_summary_of_an_empty_file_and_a_cut_one(tmp_path):
    (tmp_path / "empty").mkdir()
    assert summarise(tmp_path / "empty", "")[1] == "### The title\n\n_Empty._\n\n"
    status, md = summarise(tmp_path, "abcdef\n", limit=3)
    assert status == 0
    assert md.startswith("### The title\n\n```\nabc\n```\n\n_Cut at 3 of 7 bytes")


def test_summary_appends_and_needs_its_arguments(tmp_path):
    summarise(tmp_path, "one\n")
    _, md = summarise(tmp_path, "two\n")
    assert md.count("### The title") == 2
    result = subprocess.run([str(SUMMARY), "only a title"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "x")})
    assert result.returncode == 2


def test_playbooks_job_runs_the_step_check_only_for_every_stack_without_secrets(tmp_path):
    job = load("preview.yml")["jobs"]["playbooks"]
    assert job["needs"] == "test" and "if" not in job and job["strategy"]["matrix"]["stack"] == ["prod", "newidr"]
    assert "secrets." not in yaml.safe_dump(job)
    step = named(job, "Syntax check of the deployment playbooks")
    assert step["env"] == {"STACK": "${{ matrix.stack }}"}
    # Its shell, with a stand-in render that writes what the real one does
    # and a step that records how it was called.
    ws = tmp_path / "ws"
    (ws / "scripts").mkdir(parents=True)
    render = ws / "scripts" / "render"
    render.write_text('#!/bin/bash\nset -e\nmkdir -p "$2/local/.commands"\necho "inv: $1" > "$2/inventory.yaml"\n'
                      'echo "vars: $1" > "$2/local/.commands/$1-deployment.program-vars.yml"\n'
                      'printf \'%s\\n\' \'echo "$IDR_DEPLOYMENT_CHECK_ONLY|$IDR_INVENTORY|$IDR_DEPLOYMENT_PROGRAM_VARS" > called\' '
                      '> "$2/local/.commands/$1-deployment.sh"\n')
    render.chmod(0o755)
    result = run_step(step, ws, {"STACK": "newidr"})
    assert result.returncode == 0, result.stderr
    assert (ws / "called").read_text() == "1|inv: newidr|vars: newidr\n"
    # The step's failure fails the job.
    shutil.rmtree(ws / "rendered")
    (ws / "scripts" / "render").write_text(render.read_text().replace("> called", "> called; exit 3"))
    assert run_step(step, ws, {"STACK": "prod"}).returncode == 3
