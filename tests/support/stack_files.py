"""What the Pulumi CLI or the program would refuse in a stack file
(`stack_file_problems`), values as the CLI writes them or as typed by hand."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from components.offline import PROJECT_DIR, _wire
from components.settings import KEYS
from components.swap_record import CONFIG_KEY as RECORD
from operations.common import OperationError
from operations.swap import load_record

PROJECT = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())

# Secrets the program does without: left out of Pulumi.yaml, because the CLI
# requires every declared key without a default (tests/test_cli_config.py).
OPTIONAL_SECRETS = {f"idr:{name}" for name, key in KEYS.items() if key.secret and not key.required}


# `pulumi config set` writes every top-level value as a string ("4", "true");
# the CLI checks a stack's values against Pulumi.yaml's types before every
# update (pulumi sdk/go/common/workspace ValidateConfigValue): an integer is a
# string strconv.Atoi reads, a boolean "true" or "false" exactly, an array a
# YAML list (a JSON text in a string is refused).
PULUMI_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _cli_accepts(kind: str, value) -> bool:
    if kind == "array":
        return isinstance(value, list)
    if isinstance(value, (list, dict)):
        return False
    text = _wire(value)
    if kind == "integer":
        return isinstance(value, int) or bool(PULUMI_INTEGER.match(text))
    if kind == "boolean":
        return text in ("true", "false")
    return isinstance(value, str)


def stack_file_problems(path: Path, project: dict = PROJECT) -> list[str]:
    """What the Pulumi CLI or the program would refuse in a stack file,
    values as the CLI writes them or as typed by hand."""
    from components.validators import NotAllowed, from_cli
    data = yaml.safe_load(path.read_text()) or {}
    problems = []
    for full, value in (data.get("config") or {}).items():
        if full == RECORD:
            try:
                if not isinstance(value, str) or load_record(value) is None:
                    raise OperationError("not a JSON text")
            except OperationError as error:
                problems.append(f"{full}: not a swap record ({error})")
            continue
        if full in OPTIONAL_SECRETS and full not in project["config"]:
            if not (isinstance(value, dict) and set(value) == {"secure"}):
                problems.append(f"{full} is a secret in plain text: `pulumi config set --secret {full}`")
            continue
        if full not in project["config"]:
            problems.append(f"{full} is not declared in Pulumi.yaml")
            continue
        decl = project["config"][full]
        kind = decl["type"]
        if isinstance(value, dict):
            if not (set(value) == {"secure"} and decl.get("secret")):
                problems.append(f"{full}: an object, and not an encrypted secret")
            continue
        if decl.get("secret"):
            problems.append(f"{full} is a secret in plain text: `pulumi config set --secret {full}`")
        if not _cli_accepts(kind, value):
            advice = (f"; set it with `pulumi config set --path '{full}[0]' <value>`" if kind == "array" else "")
            problems.append(f"{full} = {value!r}: the Pulumi CLI refuses it as {kind}{advice}")
            continue
        try:
            from_cli(kind, _wire(value))
        except NotAllowed as no:
            problems.append(f"{full} = {value!r}: the program refuses it ({no.allowed})")
    return problems
