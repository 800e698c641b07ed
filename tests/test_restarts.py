"""Every restart or reload the program does uses systemctl (the page: "you
must use systemctl and not omero admin or omero web").

Scans every file the offline render puts on any host of both stacks, the
scripts the remote commands run, and cloud-init user data - once with the
stacks as they are and once with every switch and generation turned on, so
the one-off scripts (cache purge, cache regeneration, rsync) are rendered too.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from components.offline import run_stack
from components.render.__main__ import write_tree
from tests.support.restarts import SYSTEMCTL_RESTART, violations

# Everything turned on that renders extra files or scripts.
ALL_ON = {"cachePurgeGeneration": 3, "bfcacheGeneration": 2, "rsyncEnabled": True, "maintenance": True,
          "jupyterEnabled": True}


@pytest.fixture(scope="module")
def trees(rendered, tmp_path_factory):
    out = dict(rendered)
    prod = run_stack("prod", ALL_ON)
    newidr = run_stack("newidr", ALL_ON, stack_outputs={"prod": prod.outputs})
    for recording in (prod, newidr):
        target = tmp_path_factory.mktemp(f"restarts-{recording.stack}")
        write_tree(recording, target)
        out[f"{recording.stack}+all-on"] = target
    return out


def host_files(tree: Path) -> list[Path]:
    """Every file under a host directory (<tree>/<host>/...), scripts of remote commands included."""
    return sorted(p for host in tree.iterdir() if host.is_dir() for p in host.rglob("*") if p.is_file())


def test_every_rendered_file_restarts_only_with_systemctl(trees):
    problems, scanned, restarts = [], 0, {}
    for label, tree in trees.items():
        files = host_files(tree)
        assert files, f"{label}: the render produced no host files"
        restarts[label] = 0
        for path in files:
            text = path.read_text(errors="replace")
            scanned += 1
            restarts[label] += len(SYSTEMCTL_RESTART.findall(text))
            problems += [f"{label}:{path.relative_to(tree)}:{v}" for v in violations(text)]
    assert not problems, "\n".join(problems)
    assert scanned > 100
    # The scan saw the restarts that exist: nginx's reload everywhere; with
    # everything on also the cache purge's reload and rsyncd's restart.
    assert all(n >= 1 for n in restarts.values()), restarts
    assert restarts["prod+all-on"] >= 3 and restarts["newidr+all-on"] >= 3, restarts


def test_one_off_scripts_are_among_the_scanned(trees):
    """The all-on render includes the cache purge script and its reload."""
    purge = list(trees["prod+all-on"].glob("prod-proxy/usr/local/sbin/*purge*"))
    assert purge and SYSTEMCTL_RESTART.search(purge[0].read_text())


@pytest.mark.parametrize("line", [
    "omero admin restart",
    "/opt/omero/server/OMERO.server/bin/omero web restart",
    "sudo -u omero-server omero admin stop && echo done",
    "service nginx reload",
    "/etc/init.d/nginx restart",
    "nginx -s reload",
    "nginx -c /etc/nginx/nginx.conf -s reload",
    "kill -HUP $(cat /run/nginx.pid)",
    "pkill -f omero",
    "supervisorctl restart omero-web",
])
def test_scanner_catches_other_ways(line):
    assert violations(f"#!/bin/bash\nset -e\n{line}\n")


@pytest.mark.parametrize("line", [
    "systemctl restart omero-server",
    "systemctl --no-block reload nginx",
    "systemctl try-restart omero-web.service",
    "# never use omero admin restart here",
    "echo ok  # omero web restart is forbidden",
    "omero admin diagnostics",
])
def test_scanner_allows_systemctl_and_comments(line):
    assert violations(f"#!/bin/bash\n{line}\n") == []
