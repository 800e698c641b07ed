"""The repository's GitHub workflows read as data, for the workflow tests."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads `on` as true
    return data


def steps(job: dict, uses_prefix: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith(uses_prefix)]


def pinned(requirement: str, file: str = "requirements.txt") -> str:
    text = (ROOT / file).read_text()
    return re.search(rf"^{re.escape(requirement)}==(\S+)$", text, re.M).group(1)
