"""scripts/setup, the set-up both README commands share: it makes .venv
work instead of trusting that .venv/bin/python exists. Run for real in a
copy of the script with requirements that install nothing, so no download."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.offline import PROJECT_DIR


@pytest.fixture
def project(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(PROJECT_DIR / "scripts/setup", tmp_path / "scripts/setup")
    (tmp_path / "requirements.txt").write_text("# runtime\n")
    (tmp_path / "requirements-dev.txt").write_text("-r requirements.txt\n")
    return tmp_path


def setup(project: Path, level: str = "dev") -> subprocess.CompletedProcess:
    # The interpreter running the tests stands in for the machine's python3.
    return subprocess.run(["bash", str(project / "scripts/setup"), level], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": _base_python(), "HOME": str(project)},
                          timeout=300)


def _base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def pip_works(project: Path) -> bool:
    return subprocess.run([str(project / ".venv/bin/python"), "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


def test_a_fresh_checkout_gets_a_working_venv_and_a_stamp(project):
    result = setup(project)
    assert result.returncode == 0, result.stderr
    assert pip_works(project)
    assert (project / ".venv/.idr-setup").read_text().startswith("dev ")
    again = setup(project)
    assert again.returncode == 0 and "making it again" not in again.stdout


def test_a_venv_left_without_pip_is_made_again(project):
    """What a failed `python3 -m venv` (no ensurepip) leaves behind."""
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    assert not pip_works(project)
    result = setup(project)
    assert result.returncode == 0, result.stderr
    assert "making it again" in result.stdout
    assert pip_works(project)


def test_a_venv_whose_python_is_gone_is_made_again(project):
    (project / ".venv/bin").mkdir(parents=True)
    (project / ".venv/bin/python").symlink_to("/nonexistent/python3")
    result = setup(project)
    assert result.returncode == 0, result.stderr
    assert pip_works(project)


def test_changed_requirements_install_again_and_runtime_is_served_by_dev(project):
    assert setup(project).returncode == 0
    stamp = (project / ".venv/.idr-setup").read_text()
    assert setup(project, "runtime").returncode == 0
    assert (project / ".venv/.idr-setup").read_text() == stamp       # dev covers runtime
    (project / "requirements.txt").write_text("# runtime, changed\n")
    assert setup(project).returncode == 0
    assert (project / ".venv/.idr-setup").read_text() != stamp


def test_an_unknown_level_is_refused(project):
    result = setup(project, "everything")
    assert result.returncode == 2 and "usage: scripts/setup [runtime|dev]" in result.stderr
