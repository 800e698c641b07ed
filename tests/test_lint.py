"""The code the program, the operator commands, the policy pack and the hosts
run passes the linters configured in pyproject.toml: mypy (the pydantic plugin
types the Settings model) and ruff (lines of at most 120 characters)."""
from __future__ import annotations

import subprocess
import sys

from components import PROJECT_DIR


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=PROJECT_DIR, capture_output=True, text=True)


def test_mypy_passes_on_the_program_the_commands_and_the_policy_pack():
    result = run("mypy", "--cache-dir", "/dev/null")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_ruff_passes_on_the_program_the_commands_the_policy_pack_and_the_shipped_files():
    result = run("ruff", "check", "--no-cache", "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed" in result.stdout


def test_ruff_checks_the_shipped_dispatcher_and_the_swap():
    """The configuration reaches the files it is meant for (not an empty set)."""
    result = run("ruff", "check", "--no-cache", "--show-files")
    files = result.stdout.splitlines()
    assert any(f.endswith("components/files/bfcache/dispatch.py") for f in files), result.stdout
    assert any(f.endswith("operations/swap/plan.py") for f in files), result.stdout
    assert not any("/tests/" in f for f in files), result.stdout
