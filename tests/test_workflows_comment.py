"""The script of preview-comment.yml, run by node against a stub of the
GitHub API and artifacts laid out as actions/download-artifact lays them
(one folder per artifact): the one PR comment with each stack's preview and
the offline render diff."""
from __future__ import annotations

import json
import re
import subprocess

from tests.support.workflows import STACKS, load, steps

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

HEAD = "a" * 40
PR = {"number": 9, "head": {"sha": HEAD}}
MARKER = "<!-- idr-preview -->"


def script() -> str:
    (job,) = load("preview-comment.yml")["jobs"].values()
    (step,) = steps(job, "actions/github-script@")
    return step["with"]["script"]


def run_script(tmp_path, artifacts: dict[str, str], pulls=(PR,), comments=(), fork=False,
               head_repository="default") -> list:
    for name, text in artifacts.items():
        (tmp_path / "artifacts" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "artifacts" / name).write_text(text)
    (tmp_path / "script.js").write_text(script())
    (tmp_path / "harness.js").write_text(HARNESS)
    owner = "someone" if fork else "IDR"
    if head_repository == "default":
        head_repository = {"owner": {"login": owner}, "full_name": f"{owner}/idr-pulumi", "fork": fork}
    run = {"head_sha": HEAD, "head_branch": "fix-nginx", "head_repository": head_repository,
           "run_number": 42, "html_url": "https://github.com/IDR/idr-pulumi/actions/runs/1"}
    (tmp_path / "state.json").write_text(json.dumps({"run": run, "pulls": list(pulls), "comments": list(comments)}))
    result = subprocess.run(["node", "harness.js", "script.js", "state.json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def posted(calls: list) -> str:
    (body,) = [args["body"] for name, args in calls if name in ("issues.createComment", "issues.updateComment")]
    assert body.startswith(MARKER) and len(body) <= 65536
    return body


DIFF = ("diff -ruN base/prod/etc/nginx/conf.d/idr.conf head/prod/etc/nginx/conf.d/idr.conf\n"
        "--- base/prod/etc/nginx/conf.d/idr.conf\n+++ head/prod/etc/nginx/conf.d/idr.conf\n"
        "@@ -1 +1 @@\n-listen 80;\n+listen 443; # ``` not a fence end\n")


def test_script_knows_every_stack():
    stacks = json.loads(re.search(r"const stacks = (\[.*?\]);", script())[1].replace("'", '"'))
    assert sorted(stacks) == STACKS


def test_same_repository_pull_request_gets_each_preview_and_the_render_diff(tmp_path):
    calls = run_script(tmp_path, {
        "preview-prod/output.txt": "Previewing update (prod):\n ~ nginx-conf update\nResources:\n    ~ 1 to update\n",
        "preview-prod/status": "0\n",
        "preview-newidr/output.txt": "Policy Violations:\n    [mandatory]  data-volumes-protected\n",
        "preview-newidr/status": "255\n",
        "render-diff/render.diff": DIFF,
    })
    assert calls[0] == ["pulls.list", {"owner": "IDR", "repo": "idr-pulumi", "state": "open",
                                       "head": "IDR:fix-nginx"}]
    (create,) = [args for name, args in calls if name == "issues.createComment"]
    assert create["issue_number"] == 9
    body = posted(calls)
    assert f"### Preview of {HEAD[:7]}" in body
    # prod succeeded: folded; newidr failed: open, with its exit status.
    assert "<details><summary><code>pulumi preview</code> of prod: succeeded</summary>" in body
    assert "<details open><summary><code>pulumi preview</code> of newidr: <b>failed</b> (exit status 255)" in body
    assert body.index("of prod") < body.index("of newidr") < body.index("#### Offline render diff")
    assert "```\nPreviewing update (prod):\n ~ nginx-conf update\nResources:\n    ~ 1 to update\n```" in body
    # The render diff: which files, then the diff fenced longer than its own backticks.
    assert "Changed files: 1\n\n- `prod/etc/nginx/conf.d/idr.conf`" in body
    assert "````diff\n" + DIFF.rstrip("\n") + "\n````" in body


def test_fork_gets_only_the_render_diff_whatever_its_run_uploaded(tmp_path):
    """A fork's workflow can upload anything under any name: preview
    artifacts from a fork's run are made up, and are not posted."""
    calls = run_script(tmp_path, {
        "preview-prod/output.txt": "Resources:\n    84 unchanged (trust me)\n",
        "preview-prod/status": "0\n",
        "render-diff/render.diff": DIFF,
    }, fork=True)
    assert calls[0][1]["head"] == "someone:fix-nginx"
    body = posted(calls)
    assert "trust me" not in body and "<details" not in body
    assert "from a fork gets no cloud credentials" in body and "+listen 443;" in body


def test_a_fork_of_the_same_name_is_a_fork(tmp_path):
    """Decided by the head repository's full name, from the event."""
    repo = {"owner": {"login": "someone"}, "full_name": "someone/idr-pulumi", "fork": True}
    body = posted(run_script(tmp_path, {"preview-prod/output.txt": "made up\n", "render-diff/render.diff": ""},
                             head_repository=repo))
    assert "made up" not in body


def test_updates_its_comment_and_says_when_nothing_changed(tmp_path):
    comments = [{"id": 1, "user": {"type": "User"}, "body": MARKER + " copied by a person"},
                {"id": 2, "user": {"type": "Bot"}, "body": MARKER + "\nold"},
                {"id": 3, "user": {"type": "Bot"}, "body": "#### :tropical_drink: `preview` on idr/prod"}]
    calls = run_script(tmp_path, {
        "preview-prod/output.txt": "Resources:\n    84 unchanged\n", "preview-prod/status": "0\n",
        "preview-newidr/output.txt": "Resources:\n    85 unchanged\n", "preview-newidr/status": "0\n",
        "render-diff/render.diff": "",
    }, comments=comments)
    (update,) = [args for name, args in calls if name == "issues.updateComment"]
    assert update["comment_id"] == 2 and "_no rendered file changes._" in update["body"]
    assert not [c for c in calls if c[0] == "issues.createComment"]


def test_says_which_parts_are_missing_when_the_run_failed_early(tmp_path):
    body = posted(run_script(tmp_path, {}))
    for stack in ("prod", "newidr"):
        assert f"**`pulumi preview` of {stack}: none.**" in body
    assert "#### Offline render diff\n\nNone: its job failed" in body
    assert "[run 42](https://github.com/IDR/idr-pulumi/actions/runs/1)" in body


def test_stale_runs_and_vanished_forks_post_nothing(tmp_path):
    calls = run_script(tmp_path, {"render-diff/render.diff": "x"}, pulls=[{"number": 9, "head": {"sha": "c" * 40}}])
    assert [c[0] for c in calls] == ["pulls.list", "info"]
    calls = run_script(tmp_path, {"render-diff/render.diff": "x"}, head_repository=None)
    assert [c[0] for c in calls] == ["info"]


def test_long_outputs_are_cut_to_fit_one_comment(tmp_path):
    files = [f"prod/etc/file{i}" for i in range(80)]
    diff = "".join(f"diff -ruN base/{f} head/{f}\n--- base/{f}\n+++ head/{f}\n@@ -1 +1 @@\n-old\n+{'x' * 2000}\n"
                   for f in files)
    output = "".join(f"line {i}\n" for i in range(20000)) + "Resources:\n    ~ 1 to update\n"
    body = posted(run_script(tmp_path, {
        "preview-prod/output.txt": output, "preview-prod/status": "0\n",
        "preview-newidr/output.txt": output, "preview-newidr/status": "0\n",
        "render-diff/render.diff": diff,
    }))
    # Each preview keeps its end, where the summary and any violations are.
    assert body.count("Resources:\n    ~ 1 to update\n```") == 2 and "line 0\n" not in body
    assert body.count("_Its last 12000 characters") == 2
    # The diff keeps its start; all files are counted, 50 listed.
    assert "Changed files: 80" in body and "- `prod/etc/file49`" in body and "- and 30 more" in body
    assert "diff -ruN base/prod/etc/file0 head/prod/etc/file0" in body
    assert "the whole diff is the render-diff artifact of [run 42]" in body
