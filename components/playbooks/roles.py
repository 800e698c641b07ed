#!/usr/bin/env python3
"""Checks of the Galaxy roles of an IDR/deployment checkout, run by the
deployment step from the checkout's ansible/ directory (the working directory).

  roles.py stale requirements.yml
      prints the directory of every installed role whose version is not the
      one requirements.yml pins (ansible-galaxy, without --force, keeps such a
      role and only warns); nothing for a role that is missing or at its pin.
  roles.py hosts-populate
      exits 1, with one line, when the installed ome.hosts_populate would
      write /etc/hosts itself: the program owns that file and points the role
      at another one (hosts_populate_etc_hosts).

Roles are where ansible-galaxy puts them: the first entry of ANSIBLE_ROLES_PATH,
else of ansible.cfg's roles_path, else ~/.ansible/roles.
"""
from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

import yaml

HOSTS_POPULATE = "ome.hosts_populate"
TARGET_VARIABLE = "hosts_populate_etc_hosts"


def roles_dir(cwd: Path) -> Path:
    path = os.environ.get("ANSIBLE_ROLES_PATH", "")
    if not path:
        config = configparser.ConfigParser()
        config.read(cwd / "ansible.cfg")
        path = config.get("defaults", "roles_path", fallback="")
    first = path.split(":")[0].strip() if path.strip() else "~/.ansible/roles"
    return (cwd / Path(first).expanduser()).resolve()


def role_name(entry: dict) -> str:
    """A requirements.yml entry's installed name: `name`, else the Galaxy `src`."""
    return str(entry.get("name") or entry.get("src"))


def installed_version(role: Path) -> str:
    try:
        info = yaml.safe_load((role / "meta" / ".galaxy_install_info").read_text()) or {}
    except OSError:
        return ""
    return str(info.get("version", ""))


def stale(requirements: Path, cwd: Path) -> list[Path]:
    loaded = yaml.safe_load(requirements.read_text()) or []
    entries = loaded.get("roles", []) if isinstance(loaded, dict) else loaded
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "version" not in entry:
            continue
        name = role_name(entry)
        if "/" in name or name.startswith("."):
            continue   # not a Galaxy role name (a URL without `name`): never a path to remove
        role = roles_dir(cwd) / name
        if role.is_dir() and installed_version(role) != str(entry["version"]):
            out.append(role)
    return out


def hosts_populate_problem(cwd: Path) -> str:
    role = roles_dir(cwd) / HOSTS_POPULATE
    tasks = role / "tasks"
    if not tasks.is_dir():
        return ""
    if any(TARGET_VARIABLE in f.read_text() for f in tasks.rglob("*.yml")):
        return ""
    return (f"{HOSTS_POPULATE} at {role} does not read {TARGET_VARIABLE}: it would overwrite /etc/hosts, "
            "which the program's hosts step owns; pin a version that does (0.3.0 does)")


def main(argv: list[str]) -> int:
    cwd = Path.cwd()
    if argv[:1] == ["stale"] and len(argv) == 2:
        for role in stale(Path(argv[1]), cwd):
            print(role)
        return 0
    if argv == ["hosts-populate"]:
        problem = hosts_populate_problem(cwd)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
