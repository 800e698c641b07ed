#!/usr/bin/env python3
"""A stand-in `omero` CLI for the post-install test: the `group` and `user`
commands IDR's ome.omero_user role runs (`-C -s HOST -u root -w PASSWORD`,
then `list -q --style json` or `add ...`), over a JSON file of groups and
users, recording every call (login included) so a test can see what ran.

Usage: omero_standin.py STATE_FILE group|user [options] list|add ...
STATE_FILE holds {"root_password": ..., "groups": [], "users": [], "calls": []}.
A wrong root password fails as a refused login does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    state_file, noun, *rest = argv
    path = Path(state_file)
    state = json.loads(path.read_text())
    state["calls"].append([noun, *rest])
    options, words = {}, []
    i = 0
    while i < len(rest):
        if rest[i] in ("-s", "-u", "-w", "--type", "--userpassword", "--group-name", "--style"):
            options[rest[i]] = rest[i + 1]
            i += 2
        elif rest[i].startswith("-"):
            options[rest[i]] = True
            i += 1
        else:
            words.append(rest[i])
            i += 1
    try:
        if options.get("-u") != "root" or options.get("-w") != state["root_password"]:
            print("Error: Login failed", file=sys.stderr)
            return 1
        verb, args = words[0], words[1:]
        if noun == "group" and verb == "list":
            print(json.dumps([{"id": n, "name": g["name"], "perms": g["type"]} for n, g in enumerate(state["groups"])]))
        elif noun == "group" and verb == "add":
            if any(g["name"] == args[0] for g in state["groups"]):
                print(f"Group '{args[0]}' already exists.", file=sys.stderr)
                return 1
            state["groups"].append({"name": args[0], "type": options["--type"]})
        elif noun == "user" and verb == "list":
            print(json.dumps([{"id": n, "login": u["login"]} for n, u in enumerate(state["users"])]))
        elif noun == "user" and verb == "add":
            login, first, last = args
            if any(u["login"] == login for u in state["users"]):
                print(f"User '{login}' already exists.", file=sys.stderr)
                return 1
            if not any(g["name"] == options.get("--group-name") for g in state["groups"]):
                print(f"No group found: {options.get('--group-name')}", file=sys.stderr)
                return 1
            state["users"].append({"login": login, "name": f"{first} {last}", "password": options["--userpassword"],
                                   "group": options["--group-name"]})
        else:
            print(f"stand-in omero: unknown command {noun} {verb}", file=sys.stderr)
            return 2
        return 0
    finally:
        path.write_text(json.dumps(state, indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
