"""The Pulumi CLI's command-line parsing, its config rules and the engine's
--target rules, as pure functions of plain data, each citing the Pulumi
source it comes from (github.com/pulumi/pulumi). The stand-in `pulumi`
(tests/support/fake_pulumi.py) imports it on every call: standard library
modules it loads anyway only. Tests call the rules directly."""
from __future__ import annotations

import json
import re

VALUED = {"-s": "stack", "--stack": "stack", "--target": "target", "--policy-pack": "policy-pack",
          "-m": "message", "--message": "message", "--exec-kind": "exec-kind", "--page-size": "page-size",
          "--page": "page", "--color": "color", "--event-log": "event-log", "--client": "client",
          "--secrets-provider": "secrets-provider"}
def parse_argv(argv, valued=VALUED):
    """(positional words, valueless flags, {flag name: [values]}); `stack rm S` names its stack."""
    args, flags, values = [], set(), {}
    i, rest = 0, False
    while i < len(argv):
        a = argv[i]
        if rest:
            args.append(a)
        elif a == "--":
            rest = True
        elif a in valued:
            values.setdefault(valued[a], []).append(argv[i + 1])
            i += 1
        elif a.startswith("-"):
            flags.add(a)
        else:
            args.append(a)
        i += 1
    if args[:2] in (["stack", "rm"], ["stack", "init"]) and len(args) == 3:
        values.setdefault("stack", []).append(args.pop())
    return args, flags, values


class CliRefusal(Exception):
    """What the CLI or the engine refuses, in its words."""


def cli_value_ok(kind, items, value):
    """sdk/go/common/workspace/project.go ValidateConfigValue."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        # An int, a whole float (values from YAML or JSON), or a string strconv.Atoi reads.
        if isinstance(value, bool):
            return False
        if isinstance(value, int) or (isinstance(value, float) and value == int(value)):
            return True
        return isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value) is not None \
            and abs(int(value)) < 2**63
    if kind == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    # An array is a list whose items match `items`; any other type name fails.
    if not isinstance(value, list) or items is None:
        return False
    return all(cli_value_ok(items.get("type"), items.get("items"), item) for item in value)


def _type_name(kind, items):
    """project.go InferFullTypeName."""
    return f"array<{_type_name(items.get('type'), items.get('items'))}>" if items is not None else kind


def project_config_error(project):
    """project.go Project.Validate, for the `config:` block: None or the error."""
    name = project["name"]
    for key, decl in (project.get("config") or {}).items():
        decl = decl if isinstance(decl, dict) else {"value": decl}
        if decl.get("default") is not None and decl.get("value") is not None:
            return f"project config '{key}' cannot have both a 'default' and 'value' attribute"
        if ":" in key and not key.startswith(name + ":"):
            continue  # another namespace: a value only (not used here)
        typed = "type" in decl
        if typed and decl["type"] not in ("string", "integer", "boolean", "array"):
            return f"#/config/{key}/type: value must be one of 'string', 'integer', 'boolean', 'array'"  # ProjectSchema
        if typed and decl["type"] == "array" and decl.get("items") is None:
            return (f"The configuration key '{key}' declares an array but does not specify the underlying type via "
                    f"the 'items' attribute")
        if typed and decl.get("default") is not None and \
                not cli_value_ok(decl["type"], decl.get("items"), decl["default"]):
            return (f"The default value specified for configuration key '{key}' is not of the expected type "
                    f"'{_type_name(decl['type'], decl.get('items'))}'")
    return None


def _as_config_value(value):
    """config.Value as the CLI holds it: a scalar as its text (createConfigValue: fmt "%v";
    a stack file's YAML scalar likewise), a list or map as an object (JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.loads(json.dumps(value))
    return "" if value is None else str(value)


def apply_project_config(stack, project, config):
    """config.go mergeConfig (also `ApplyProjectConfig`, which `pulumi config`
    and `config get` run): the stack's values with the project's defaults
    applied, as plain values. A key of the project's namespace declared with
    neither default nor value, and not on the stack, is missing; all are named
    in one error."""
    name, merged, missing = project["name"], dict(config), []
    for key in sorted(project.get("config") or {}):
        decl = project["config"][key] if isinstance(project["config"][key], dict) else {"value": project["config"][key]}
        full = key if ":" in key else f"{name}:{key}"
        has_default, has_value = decl.get("default") is not None, decl.get("value") is not None
        if full not in merged and not has_value and not has_default and full.split(":")[0] == name:
            missing.append(key)
            continue
        if full not in merged and (has_value or has_default):
            merged[full] = _as_config_value(decl["default"] if has_default else decl["value"])
    if missing:
        missing.sort()
        names = f"'{missing[0]}'" if len(missing) == 1 else \
            "".join(f"'{k}', " for k in missing[:-2]) + f"'{missing[-2]}' and '{missing[-1]}'"
        raise CliRefusal(f"Stack '{stack}' is missing configuration value{'s' if len(missing) > 1 else ''} {names}")
    return merged


def stack_config_error(stack, project, config, secure):
    """config.go ValidateStackConfigAndApplyProjectConfig: mergeConfig, then
    validateStackConfigValues / validateStackConfigValue for every key with an
    explicit type: a secret must be encrypted on the stack (a default applied
    above is plain, so a declared secret with a default is always refused),
    and the value must be of the type. Keys the project does not declare are
    not checked. `config`: key -> value (text, or YAML-typed from a stack
    file; a secret's decrypted text); `secure`: the keys encrypted on the
    stack. None, or the CLI's error (it prints `validating stack config: <error>`)."""
    try:
        merged = apply_project_config(stack, project, config)
    except CliRefusal as refusal:
        return str(refusal)
    for key in sorted(project.get("config") or {}):
        decl = project["config"][key]
        if not isinstance(decl, dict) or "type" not in decl:
            continue
        full = key if ":" in key else f"{project['name']}:{key}"
        if decl.get("secret") and full not in secure:
            return f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret"
        if not cli_value_ok(decl["type"], decl.get("items"), _as_config_value(merged.get(full, ""))):
            return (f"Stack '{stack}' with configuration key '{key}' must be of type "
                    f"'{_type_name(decl['type'], decl.get('items'))}'")
    return None


def _dependencies(r):
    """resource.State.GetAllDependencies: parent, dependencies, property dependencies, deleted-with."""
    props = [u for us in (r.get("propertyDependencies") or {}).values() for u in us]
    return [u for u in [r.get("parent"), *(r.get("dependencies") or []), *props, r.get("deletedWith")] if u]


def target_plan(olds, declared, targets):
    """What `pulumi up --target` (no --target-dependents) keeps and deletes,
    by pkg/resource/deploy/step_generator.go. `olds`: the state's resources;
    `declared`: URNs the program registers; `targets`: the --target URNs.
    Returns (kept, deleted): URNs of old resources whose old state is copied
    as it is, and those deleted. Raises CliRefusal for an untargeted delete.
    - generateSteps, "if !isTargeted": a declared resource that is not
      targeted gets a SameStep with its OLD state (old dependencies kept),
      and getDependencySteps emits a SameStep for every old dependency
      (parent, dependencies, property dependencies, deleted-with) that has no
      step of its own, transitively. A dependency the program no longer
      declares is therefore kept, even when it is a target.
    - GenerateDeletes: an old resource neither declared nor kept is a delete
      candidate; determineAllowedResourcesToDeleteFromTargets keeps only the
      targets and what depends on them (getTargetDependents); any of those
      that is not itself a target bails the update
      (GetResourceWillBeDestroyedButWasNotSpecifiedInTargetList). The other
      candidates stay in the state untouched."""
    old = {r["urn"]: r for r in olds}
    declared, targets = set(declared), set(targets)
    kept, todo = set(), [u for u in old if u in declared and u not in targets]
    while todo:
        u = todo.pop()
        if u in kept:
            continue
        kept.add(u)
        todo += [d for d in _dependencies(old[u]) if d in old and not (d in declared and d in targets)]
    allowed, todo = set(), [u for u in old if u in targets]
    while todo:
        u = todo.pop()
        if u in allowed:
            continue
        allowed.add(u)
        todo += [r["urn"] for r in olds if u in _dependencies(r)]
    deleted = [u for u in old if u not in declared and u not in kept and u in allowed]
    for u in deleted:
        if u not in targets:
            raise CliRefusal(f"Resource '{u}' will be destroyed but was not specified in --target list.\n"
                             f"Either include resource in --target list or pass --target-dependents to proceed.")
    return kept, set(deleted)
