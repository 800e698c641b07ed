"""The program's code type-checks: mypy, configured in pyproject.toml (the
pydantic plugin types the Settings model), on components/ and policy/."""
from __future__ import annotations

import subprocess
import sys

from components import PROJECT_DIR


def test_mypy_passes_on_the_program_and_the_policy_pack():
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], cwd=PROJECT_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
