"""Restarts and reloads that do not go through systemctl (the page: "you
must use systemctl and not omero admin or omero web"), found in a script's text."""
from __future__ import annotations

import re

FORBIDDEN = [
    (re.compile(r"\bomero\s+(admin|web)\s+(start|stop|restart|reload|startasync|reindex)\b"),
     "omero admin/web controls a service: use systemctl"),
    (re.compile(r"(^|[\s;&|(])service\s+\S+\s+(start|stop|restart|reload|condrestart)\b"), "SysV `service`"),
    (re.compile(r"/etc/(rc\.d/)?init\.d/"), "init script"),
    (re.compile(r"\bnginx\s+(-\S+\s+)*-s\s+(reload|stop|quit|reopen)\b"), "nginx -s signal"),
    (re.compile(r"\b(kill\s+-(HUP|1|SIGHUP|USR1|USR2)|killall|pkill)\b"), "signals a daemon directly"),
]
RESTART_WORD = re.compile(r"\b(restart|reload|try-restart|reload-or-restart|try-reload-or-restart)\b")
SYSTEMCTL_RESTART = re.compile(
    r"\bsystemctl\s+(--?[\w-]+(=\S+)?\s+)*(restart|reload|try-restart|reload-or-restart|try-reload-or-restart)\s+\S")

# systemd reading unit files again (after the program installs one): systemctl too.
DAEMON_RELOAD = re.compile(r"\bsystemctl\s+daemon-reload\s*$")


def violations(text: str) -> list[str]:
    """Lines (outside comments) that restart, reload, start or stop a service other than by systemctl."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if not code.strip():
            continue
        for pattern, why in FORBIDDEN:
            if pattern.search(code):
                found.append(f"{number}: {why}: {line.strip()}")
        if RESTART_WORD.search(code) and not (SYSTEMCTL_RESTART.search(code) or DAEMON_RELOAD.search(code)):
            found.append(f"{number}: restart/reload not through systemctl: {line.strip()}")
    return found
