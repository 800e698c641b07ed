"""The project uses the Pulumi SDK's public API only (issue 13).

Private SDK internals (the runtime's settings object, its RPC manager, the
loop-pumping await, the stack runner) change without notice between SDK
releases: every Python file of the project is searched for them. Allowed
are the names the SDK exports: `pulumi`, `pulumi.runtime` (its `__all__`),
the mocks module (`set_mocks`, `Mocks`, `MockMonitor`, `test`), the `rpc`
submodule `pulumi.runtime` lists, the wire protocol's generated stubs
(`pulumi.runtime.proto`), provider packages and `pulumi_policy`, each
without a leading underscore.

Also here: a run that fails offline leaves nothing behind for the next one.
"""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pulumi
import pulumi.runtime
import pytest

from components import identity
from components.offline import IdrMocks, Recording, effective_config, run_config, run_mocked, run_stack
from components.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("components", "operations", "policy", "tests", "benchmarks", "scripts", ".github")

# What pulumi.runtime offers: the names it exports (its __all__, from the
# installed SDK) and the public submodules. The others (settings, stack,
# sync_await, rpc_manager, ...) are internal: what they hold that is public,
# pulumi.runtime re-exports.
PUBLIC_RUNTIME = set(pulumi.runtime.__all__) | {"mocks", "rpc", "proto"}
# Internal names that must not appear in code at all, however reached.
PRIVATE_NAMES = {"SETTINGS", "rpc_manager", "sync_await", "_sync_await", "run_pulumi_func", "wait_for_rpcs",
                 "set_root_resource", "_get_rpc_manager", "_set_stack", "_set_project", "_load_monitor_feature_support"}


def is_sdk(module: str) -> bool:
    top = module.split(".")[0]
    return top == "pulumi" or top.startswith("pulumi_")


def private_module(path: str) -> str | None:
    """Why the dotted SDK path is private, or None."""
    parts = path.split(".")
    if any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts):
        return "a name with a leading underscore"
    if parts[:2] == ["pulumi", "runtime"] and len(parts) > 2 and parts[2] not in PUBLIC_RUNTIME \
            and not parts[2].startswith("__"):
        return f"pulumi.runtime.{parts[2]} is internal (use what pulumi.runtime exports)"
    return None


def _dotted(node: ast.AST) -> list[str] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(names)]
    return None


def violations(source: str, name: str = "<source>") -> list[str]:
    """Each private SDK use in `source`, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, name)
    bound: dict[str, str] = {}  # local name -> SDK module path it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_sdk(alias.name):
                    if (why := private_module(alias.name)):
                        found.append(f"{name}:{node.lineno}: import {alias.name}: {why}")
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and is_sdk(node.module):
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                why = private_module(path) or (f"{alias.name} is internal" if alias.name in PRIVATE_NAMES else None)
                if why:
                    found.append(f"{name}:{node.lineno}: from {node.module} import {alias.name}: {why}")
                bound[alias.asname or alias.name] = path
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # each whole a.b.c once
            chain = _dotted(node)
            if chain and chain[0] in bound:
                path = ".".join([bound[chain[0]], *chain[1:]])
                why = private_module(path) or next((f"{n} is internal" for n in chain[1:] if n in PRIVATE_NAMES), None)
                if why:
                    found.append(f"{name}:{node.lineno}: {'.'.join(chain)}: {why}")
    # Internal names in code (not in strings or comments), however reached.
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in PRIVATE_NAMES:
            found.append(f"{name}:{tok.start[0]}: {tok.string}: an SDK internal")
    return sorted(set(found))


def project_files() -> list[Path]:
    files = [ROOT / "__main__.py"]
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py":
                files.append(path)
            elif path.suffix == "" and path.read_bytes()[:64].split(b"\n")[0].startswith(b"#!") \
                    and b"python" in path.read_bytes()[:64].split(b"\n")[0]:
                files.append(path)  # scripts/: Python without the .py suffix
    return files


def test_every_project_file_uses_only_the_public_sdk_api():
    files = project_files()
    assert len(files) > 40 and ROOT / "components" / "offline.py" in files
    found = [v for path in files for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "private Pulumi SDK use:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "from pulumi.runtime.stack import run_pulumi_func",
    "from pulumi.runtime.sync_await import _sync_await",
    "from pulumi.runtime import settings as runtime_settings",
    "from pulumi.runtime.settings import SETTINGS",
    "import pulumi.runtime.stack",
    "from pulumi._utils import contextproperty",
    "from pulumi.output import _OutputData",
    "from pulumi_openstack import _utilities",
    "import pulumi\npulumi.runtime.settings.SETTINGS.rpc_manager.clear()",
    "import pulumi\npulumi.runtime.settings._set_stack('x')",
    "import pulumi\npulumi.Output._from_data(None)",
    "from pulumi import runtime\nruntime.stack.run_pulumi_func",
    "from pulumi.runtime import settings as s\ns.SETTINGS.outputs.clear()",
    "from pulumi.runtime import mocks\nmocks._sync_await(None)",
    "from pulumi.runtime import mocks\nmocks.SETTINGS.rpc_manager.clear()",
])
def test_the_search_finds_private_uses(line):
    assert violations(line), line


@pytest.mark.parametrize("line", [
    "import pulumi\npulumi.runtime.set_mocks(None)\npulumi.runtime.test(f)()\npulumi.runtime.reset_options()",
    "from pulumi.runtime import mocks as pulumi_mocks\nclass M(pulumi_mocks.MockMonitor): pass",
    "from pulumi.runtime import rpc\nrpc.deserialize_properties({})",
    "from pulumi.runtime.proto import analyzer_pb2 as pb",
    "import pulumi_openstack as openstack\nopenstack.compute.Instance",
    "from pulumi_policy.proxy import UnknownValueError",
    "x = 'from pulumi.runtime.stack import run_pulumi_func'  # SETTINGS.rpc_manager in a comment",
    "import pulumi\npulumi.__version__",
])
def test_the_search_lets_public_uses_pass(line):
    assert violations(line) == []


# ------------------------------------------------ a clean runtime per run

def _shape(run: Recording) -> list[tuple]:
    """Every registration (their order varies from run to run)."""
    return sorted((r.type, r.urn, r.options.parent, tuple(sorted(r.options.depends_on)), repr(r.inputs), repr(r.state))
                  for r in run.resources)


def test_a_failed_run_leaves_nothing_to_the_next(prod_run):
    """A refusal (before anything but the self-reference is declared) and a
    failure with every registration still under way leave no root stack,
    registration or Output behind: the next run records exactly what a first
    run does."""
    from components import program
    with pytest.raises(ConfigError):
        run_stack("prod", {"environment": "prod2"}, deployed=prod_run.outputs)

    async def fails_once_declared():
        await program.main()
        raise RuntimeError("offline: failed with the whole environment declared")

    # Another stack: a root stack left behind would parent prod's resources.
    config, secrets = effective_config("newidr")
    partial = Recording("newidr")
    with pytest.raises(RuntimeError, match="failed with the whole environment declared"):
        run_mocked(fails_once_declared, "newidr", IdrMocks(stack_outputs={"prod": prod_run.outputs}, stack="newidr"),
                   partial, config=config, secret_keys=secrets)
    # Its own root stack, not the one of the runs before.
    roots = {r.options.parent for r in partial.resources if "::pulumi:pulumi:Stack::" in r.options.parent}
    assert roots == {"urn:pulumi:newidr::idr::pulumi:pulumi:Stack::idr-newidr"}
    again = run_stack("prod")
    assert _shape(again) == _shape(prod_run)
    assert again.outputs == prod_run.outputs
    # What was under way when it failed was waited for.
    assert _shape(partial) == _shape(run_stack("newidr", stack_outputs={"prod": prod_run.outputs}))


def test_refused_run_keeps_its_recording_and_registers_only_the_self_reference(prod_run):
    config, secrets = effective_config("prod", {"subnetCidr": "10.20.0.0/24"})
    recording = Recording("prod")
    with pytest.raises(ConfigError, match="idr:subnetCidr"):
        run_config("prod", config, secrets, IdrMocks(stack="prod", deployed=prod_run.outputs), recording=recording)
    assert [(r.type, r.name) for r in recording.resources] == [("pulumi:pulumi:StackReference",
                                                                 identity.REFERENCE_NAME)]
    assert recording.outputs == {}

