"""Pulumi.yaml, the stack files, settings.py and the README agree."""
from __future__ import annotations

import re

import yaml

from components.offline import PROJECT_DIR
from components.settings import KEYS
from tests.support.stack_files import OPTIONAL_SECRETS, PROJECT, stack_file_problems

SIMPLE_TYPES = {"string", "integer", "boolean", "array"}  # what the Pulumi CLI accepts
PY_TYPES = {"string": str, "integer": int, "boolean": bool, "array": list}


def test_project_is_idr_on_python_with_a_virtualenv():
    assert PROJECT["name"] == "idr"
    assert PROJECT["runtime"]["name"] == "python"
    assert PROJECT["runtime"]["options"]["virtualenv"] == ".venv"


def test_every_key_declared_with_type_description_default():
    config = PROJECT["config"]
    assert OPTIONAL_SECRETS == {"idr:tlsPrivateKey", "idr:deploymentSecretVars"}
    assert set(config) == {f"idr:{name}" for name in KEYS} - OPTIONAL_SECRETS
    for name, key in KEYS.items():
        if f"idr:{name}" in OPTIONAL_SECRETS:
            continue
        decl = config[f"idr:{name}"]
        assert decl["type"] in SIMPLE_TYPES and decl["type"] == key.kind, name
        assert decl["description"] == key.description
        if decl["type"] == "array":
            assert decl["items"] == {"type": "string"}
        if key.secret:
            assert decl.get("secret") is True and "default" not in decl, name
        else:
            assert decl["default"] == key.default and isinstance(decl["default"], PY_TYPES[key.kind]), name


def test_stack_files_use_declared_keys_with_their_types():
    for stack in ("prod", "newidr"):
        assert stack_file_problems(PROJECT_DIR / f"Pulumi.{stack}.yaml") == [], stack


def test_stack_file_check_has_teeth(tmp_path):
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump({"config": {
        "idr:omeroreadonlyCount": "four", "idr:maintenance": "True", "idr:sshAllowedCidrs": '["10.0.0.0/8"]',
        "idr:nosuchKey": "x", "idrswap:state": "{}", "aws:region": "eu-west-1", "idr:tlsPrivateKey": "PEM",
        "idr:deploymentSecretVars": {"secure": "v1:abc"}}}))
    problems = stack_file_problems(bad)
    assert len(problems) == 7, problems
    assert "idr:tlsPrivateKey is a secret in plain text: `pulumi config set --secret idr:tlsPrivateKey`" in problems
    assert any("--path 'idr:sshAllowedCidrs[0]'" in p for p in problems)


def docs_text() -> str:
    """The README and every page under docs/ (runbooks, design, reference)."""
    return "\n".join(p.read_text() for p in [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").rglob("*.md"))])


def test_readme_documents_every_key():
    readme = docs_text()
    missing = [name for name in KEYS if f"`idr:{name}`" not in readme]
    assert missing == []


def test_readme_names_only_keys_that_exist():
    """Every idr:<key> the README mentions (in commands and prose) is a real key."""
    import re
    readme = docs_text()
    # Component type tokens in URNs (idr:server:Server, ...) are not keys.
    named = set(re.findall(r"idr:([A-Za-z]+)\b(?!:)", readme))
    assert len(named) > 40
    assert {k for k in named if k not in KEYS} == set()


def test_readme_paths_on_hosts_are_rendered(rendered_every_feature):
    """Every host path the README tells operators to use is a file the program puts there."""
    import re
    readme = docs_text()
    paths = set(re.findall(r"(/usr/local/[\w./-]+\w)", readme))
    assert paths, "the README names the operator scripts"
    tree = rendered_every_feature
    missing = [p for p in paths if not any((tree / host / p.lstrip("/")).is_file()
                                           for host in ("prod-proxy", "prod-database", "prod-omeroreadwrite"))]
    assert missing == []


def test_pulumi_yaml_and_reference_tables_are_generated_from_settings():
    """Pulumi.yaml's config block and docs/reference/ are what scripts/gen-pulumi-yaml
    and scripts/gen-docs write from settings.KEYS and changes.CHANGES."""
    import subprocess
    import sys
    for script in ("gen-pulumi-yaml", "gen-docs"):
        result = subprocess.run([sys.executable, str(PROJECT_DIR / "scripts" / script), "--check"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_gen_docs_finds_and_rewrites_a_stale_table(tmp_path):
    import shutil
    import subprocess
    import sys
    shutil.copytree(PROJECT_DIR / "docs" / "reference", tmp_path / "reference")
    stale = tmp_path / "reference" / "changes.md"
    stale.write_text(stale.read_text().replace("| refused |", "| in place |", 1))
    gen = [sys.executable, str(PROJECT_DIR / "scripts/gen-docs"), "--docs", str(tmp_path)]
    result = subprocess.run([*gen, "--check"], capture_output=True, text=True)
    assert result.returncode == 1 and "reference/changes.md out of date" in result.stderr
    assert "config.md" not in result.stderr
    subprocess.run(gen, check=True)
    assert stale.read_text() == (PROJECT_DIR / "docs/reference/changes.md").read_text()


def test_readme_commands_are_the_scripts_ci_runs():
    readme = (PROJECT_DIR / "README.md").read_text()
    assert "scripts/render prod out/" in readme and "scripts/test" in readme
    assert "exec scripts/test" in (PROJECT_DIR / ".ci/run").read_text()
