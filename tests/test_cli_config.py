"""Pulumi.yaml and the stack files as the Pulumi CLI judges them before every
update, by the CLI's own rules (tests/support/pulumi_cli.py: project.go
Project.Validate and ValidateConfigValue; config.go mergeConfig,
validateStackConfigValues, validateStackConfigValue), which the stand-in
`pulumi` applies to every `up`:
- a key of the project's namespace declared without a default, and not on
  the stack, is missing ("Stack 'prod' is missing configuration value ...");
- a default is applied as a plain value; then every key with a `type` is
  checked: `secret: true` wants an encrypted stack value ("must be encrypted
  as it's secret"), and the value must be of the type;
- the project itself: an array needs `items`, a default must be of its type;
- keys a stack sets that the project does not declare are allowed.
The README's own set-up ("Creating the stacks", then "New release" step 2),
run command by command in the stand-in, leaves both stacks valid."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.offline import PROJECT_DIR
from tests.support.fake_world import install
from tests.support.pulumi_cli import CliRefusal, project_config_error, stack_config_error, target_plan
from tests.support.stack_files import stack_file_problems
from tests.support.settings import SECRET_VARS

README = (PROJECT_DIR / "README.md").read_text()
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nstand-in\n-----END OPENSSH PRIVATE KEY-----\n"


def project(path: Path = PROJECT_DIR / "Pulumi.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def cli_check(stack: str, stack_file: Path, project_data: dict | None = None) -> str | None:
    """The CLI's verdict on Pulumi.yaml and one stack file: None, or its error."""
    project_data = project_data or project()
    config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    secure = {k for k, v in config.items() if isinstance(v, dict) and set(v) == {"secure"}}
    # An encrypted value decrypts to its text (here: a stand-in text).
    values = {k: ("decrypted" if k in secure else v) for k, v in config.items()}
    return project_config_error(project_data) or stack_config_error(stack, project_data, values, secure)


def write_stack(tmp_path: Path, config: dict, name: str = "prod") -> Path:
    """A stack file: the repository's, with `config` applied (None removes a key)."""
    data = yaml.safe_load((PROJECT_DIR / f"Pulumi.{name}.yaml").read_text())
    data["config"]["idr:sshPrivateKey"] = {"secure": "v1:c3RhbmQtaW4="}
    for k, v in config.items():
        if v is None:
            data["config"].pop(k, None)
        else:
            data["config"][k] = v
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------ each rule
def test_a_stack_with_what_the_readme_sets_is_valid(tmp_path):
    assert cli_check("prod", write_stack(tmp_path, {})) is None


def test_a_declared_key_without_default_is_required(tmp_path):
    path = write_stack(tmp_path, {"idr:sshPrivateKey": None})
    assert cli_check("prod", path) == "Stack 'prod' is missing configuration value 'idr:sshPrivateKey'"


def test_every_missing_key_is_named_in_one_error(tmp_path):
    """Pulumi.yaml as it was before issue 24: the optional secrets declared
    without a default. The README's prod stack lacks one, newidr both."""
    old = project()
    for key in ("idr:tlsPrivateKey", "idr:deploymentSecretVars"):
        old["config"][key] = {"type": "string", "description": "optional", "secret": True}
    prod = write_stack(tmp_path, {"idr:deploymentSecretVars": {"secure": "v1:eA=="}})
    assert cli_check("prod", prod, old) == "Stack 'prod' is missing configuration value 'idr:tlsPrivateKey'"
    newidr = write_stack(tmp_path, {}, "newidr")
    assert cli_check("newidr", newidr, old) == ("Stack 'newidr' is missing configuration values "
                                                "'idr:deploymentSecretVars' and 'idr:tlsPrivateKey'")


def test_a_secret_must_be_encrypted(tmp_path):
    path = write_stack(tmp_path, {"idr:sshPrivateKey": KEY})
    assert cli_check("prod", path) == "Stack 'prod' with configuration key 'idr:sshPrivateKey' must be encrypted as it's secret"


def test_a_declared_secret_with_a_default_is_always_refused(tmp_path):
    """Why a default is no way to make a secret optional: it is applied as a
    plain value, then the secret rule refuses it, on a stack that set nothing."""
    with_default = project()
    with_default["config"]["idr:tlsPrivateKey"] = {"type": "string", "secret": True, "default": ""}
    assert cli_check("prod", write_stack(tmp_path, {}), with_default) == (
        "Stack 'prod' with configuration key 'idr:tlsPrivateKey' must be encrypted as it's secret")


@pytest.mark.parametrize("key,value,kind", [
    ("idr:omeroreadonlyCount", "four", "integer"),
    ("idr:omeroreadonlyCount", "4.0", "integer"),
    ("idr:maintenance", "True", "boolean"),
    ("idr:maintenance", "yes", "boolean"),
    ("idr:sshAllowedCidrs", '["10.0.0.0/8"]', "array<string>"),
    ("idr:sshAllowedCidrs", [8], "array<string>"),
    ("idr:serverName", ["idr.example.org"], "string"),
])
def test_a_value_must_be_of_its_type(tmp_path, key, value, kind):
    assert cli_check("prod", write_stack(tmp_path, {key: value})) == (
        f"Stack 'prod' with configuration key '{key}' must be of type '{kind}'")


@pytest.mark.parametrize("key,value", [
    ("idr:omeroreadonlyCount", "5"), ("idr:omeroreadonlyCount", 5), ("idr:omeroreadonlyCount", "+5"),
    ("idr:maintenance", "true"), ("idr:maintenance", False), ("idr:sshAllowedCidrs", ["10.0.0.0/8"]),
])
def test_what_config_set_writes_is_of_its_type(tmp_path, key, value):
    assert cli_check("prod", write_stack(tmp_path, {key: value})) is None


def test_undeclared_keys_are_allowed(tmp_path):
    """The swap's record, the optional secrets, another namespace."""
    path = write_stack(tmp_path, {"idrswap:state": "{}", "idr:tlsPrivateKey": {"secure": "v1:eA=="},
                                  "idr:deploymentSecretVars": {"secure": "v1:eA=="}, "aws:region": "x"})
    assert cli_check("prod", path) is None


def test_an_array_declared_without_items_is_refused(tmp_path):
    bad = project()
    del bad["config"]["idr:dnsNameservers"]["items"]
    assert cli_check("prod", write_stack(tmp_path, {}), bad) == (
        "The configuration key 'idr:dnsNameservers' declares an array but does not specify the underlying type "
        "via the 'items' attribute")


def test_a_default_of_another_type_is_refused(tmp_path):
    bad = project()
    bad["config"]["idr:omeroreadonlyCount"]["default"] = "four"
    assert cli_check("prod", write_stack(tmp_path, {}), bad) == (
        "The default value specified for configuration key 'idr:omeroreadonlyCount' is not of the expected type "
        "'integer'")


def test_pulumi_yaml_passes_its_own_rules():
    assert project_config_error(project()) is None


# ------------------------------------------------- the README's set-up
def readme_block(heading: str) -> str:
    """The first ```sh block after a README heading."""
    text = README[README.index(heading):]
    return re.search(r"```sh\n(.*?)```", text, re.S).group(1)


def readme_setup_commands() -> list[str]:
    """"Creating the stacks", then "New release" step 2: the commands an
    operator types, in order (scripts/setup aside: no CLI in it)."""
    creating = [line for line in readme_block("## Creating the stacks").splitlines()
                if line.strip() and not line.startswith("scripts/setup")]
    new_release = (PROJECT_DIR / "docs/operations/new-release.md").read_text()
    release = new_release[:new_release.index("3. Test the new environment")]
    step2 = [line.strip() for line in release.splitlines() if line.strip().startswith("pulumi ")]
    assert len(creating) == 11 and len(step2) == 3, (creating, step2)
    return creating + step2


def run_readme(world, tmp_path: Path, project_dir: Path = PROJECT_DIR) -> list[subprocess.CompletedProcess]:
    home = tmp_path / "operator"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "idr-deploy").write_text(KEY)
    (home / ".ssh" / "idr-deploy.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOWG0Nc7HwAe8C00kfkbDjmcv8IEEyVdEu4YVcB3WPO idr-deploy\n")
    (home / "secret-vars.yml").write_text(SECRET_VARS)
    env = {**os.environ, "HOME": str(home), "PULUMI_SKIP_CONFIRMATIONS": "true"}
    filled = {"<public IP>": "203.0.113.10", "<spare IP>": "203.0.113.20",
              "<the release's IDR/deployment commit>": "0123456789abcdef0123456789abcdef01234567"}
    results = []
    for line in readme_setup_commands():
        for placeholder, value in filled.items():
            line = line.replace(placeholder, value)
        assert "<" not in line.split("#")[0].replace("< ", ""), line
        results.append(subprocess.run(["bash", "-c", line], cwd=home, env=env, capture_output=True, text=True))
    return results


def test_the_readme_setup_leaves_both_stacks_valid(tmp_path, monkeypatch):
    world = install(tmp_path, monkeypatch)
    results = run_readme(world, tmp_path)
    assert [r.returncode for r in results] == [0] * len(results), [(r.args, r.stderr) for r in results if r.returncode]
    for stack in ("prod", "newidr"):
        assert [h["kind"] for h in world.history(stack)] == ["update"], stack
        path = tmp_path / f"Pulumi.{stack}.yaml"
        path.write_text(world.stack_file(stack, PROJECT_DIR / f"Pulumi.{stack}.yaml"))
        assert cli_check(stack, path) is None, stack
        assert stack_file_problems(path) == [], stack
    files = {s: yaml.safe_load((tmp_path / f"Pulumi.{s}.yaml").read_text())["config"] for s in ("prod", "newidr")}
    assert set(files["prod"]["idr:sshPrivateKey"]) == {"secure"} and set(files["prod"]["idr:deploymentSecretVars"]) == {"secure"}
    assert set(files["newidr"]["idr:deploymentSecretVars"]) == {"secure"} and "idr:tlsPrivateKey" not in files["prod"]
    assert world.neutron == {"203.0.113.10": "prod-proxy", "203.0.113.20": "newidr-proxy"}


def test_the_readme_setup_fails_with_the_pulumi_yaml_of_before(tmp_path, monkeypatch):
    """The check has teeth: with the optional secrets declared as they were,
    the README's first `pulumi up` stops, as issue 24 found."""
    old = tmp_path / "old-project"
    old.mkdir()
    for name in ("Pulumi.prod.yaml", "Pulumi.newidr.yaml"):
        shutil.copy(PROJECT_DIR / name, old / name)
    data = project()
    for key in ("idr:tlsPrivateKey", "idr:deploymentSecretVars"):
        data["config"][key] = {"type": "string", "description": "optional", "secret": True}
    (old / "Pulumi.yaml").write_text(yaml.safe_dump(data))
    world = install(tmp_path, monkeypatch, project_dir=old)
    results = run_readme(world, tmp_path, old)
    up = next(r for r in results if r.args[2].startswith("pulumi up -s prod"))
    assert up.returncode == 1
    assert "validating stack config: Stack 'prod' is missing configuration value 'idr:tlsPrivateKey'" in up.stderr
    assert world.history("prod") == []


# ---------------------------------------------------- the engine's targeting
def _r(urn, *deps, parent=None):
    return {"urn": urn, "dependencies": list(deps), **({"parent": parent} if parent else {})}


def test_targeting_keeps_what_an_untargeted_resource_depends_on():
    """step_generator.go: an untargeted resource keeps its old state and the
    old resources it depends on, a target the program dropped included."""
    olds = [_r("assoc"), _r("mount", "assoc"), _r("other")]
    assert target_plan(olds, ["mount", "other"], {"assoc"}) == ({"mount", "assoc", "other"}, set())
    assert target_plan([_r("assoc"), _r("mount"), _r("other")], ["mount", "other"], {"assoc"}) == (
        {"mount", "other"}, {"assoc"})


def test_targeting_refuses_an_untargeted_delete():
    with pytest.raises(CliRefusal, match="Resource 'mount' will be destroyed but was not specified in --target list"):
        target_plan([_r("assoc"), _r("mount", "assoc")], [], {"assoc"})
    # Not a dependent of a target: left alone.
    assert target_plan([_r("assoc"), _r("lone")], [], {"assoc"}) == (set(), {"assoc"})
