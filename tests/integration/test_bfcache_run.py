"""The regeneration run for real: GNU parallel on the rendered run.sh drives
three OMERO "nodes" (sshd on 127.0.0.2-4, one fast, two ten times slower) and
fetches the ID list from a "database" (sshd on 127.0.0.5 with the forced
command). A stand-in `omero` sleeps per image cost (milliseconds) and prints
the plugin's `ok:`/`fail:` lines. Only paths and addresses are rewritten.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from components.render import bfcache as render
from tests.test_bfcache_render import settings
from tests.tools import tool

pytestmark = pytest.mark.integration

FAST, SLOW1, SLOW2, DB = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
ADDRESSES = {"192.168.1.11": FAST, "192.168.1.101": SLOW1, "192.168.1.102": SLOW2, "192.168.1.12": DB}
FLAKY, BROKEN = 1013, 1017  # fails once / always


def free_port() -> int:
    for port in range(22400, 22500):
        try:
            for address in (FAST, SLOW1, SLOW2, DB):
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port on 127.0.0.2-5")


def write(path: Path, text: str, mode=0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def costs() -> dict[int, int]:
    """Image ID -> cost (ms on the fast node): one plate, a few big
    filesets, many small ones, as the query returns them (largest first)."""
    c = {1000: 400, 1001: 150, 1002: 120, 1003: 100}
    c.update({1000 + i: 5 + (i * 7) % 30 for i in range(4, 40)})
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


@pytest.fixture(scope="module")
def cluster():
    sshd = tool("sshd")
    tool("parallel")
    root = Path(tempfile.mkdtemp(prefix="idr-bfcache-run-"))
    root.chmod(0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key")], check=True)
    client_key = (root / "key.pub").read_text().strip()
    port = free_port()

    # Database host: the coordinator's key may only run the ID query.
    (ids_text,) = [f.content for f in render.database_files(settings()) if f.path.endswith("ids.sh")]
    assert "exec sudo -n -u postgres psql" in ids_text
    ids_text = ids_text.replace("exec sudo -n -u postgres psql", f"exec cat {root}/ids.txt #")
    write(root / "ids.sh", ids_text)
    write(root / "ids.txt", "".join(f"{i}|{c}\n" for i, c in costs().items()), 0o644)

    daemons = []
    for address in (FAST, SLOW1, SLOW2, DB):
        d = root / address
        d.mkdir()
        subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(d / "hostkey")], check=True)
        options = f'command="{root}/ids.sh",restrict ' if address == DB else ""
        write(d / "authorized_keys", f"{options}{client_key}\n", 0o600)
        write(d / "sshd_config", "\n".join([
            f"ListenAddress {address}:{port}", f"HostKey {d}/hostkey", f"PidFile {d}/pid",
            f"AuthorizedKeysFile {d}/authorized_keys", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "MaxStartups 100", "MaxSessions 100", ""]), 0o600)
        daemons.append(subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                        stderr=open(d / "log", "w")))
    deadline = time.time() + 20
    for address in (FAST, SLOW1, SLOW2, DB):
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
    try:
        yield root, port
    finally:
        for p in daemons:
            p.terminate()
        for p in daemons:
            p.wait(timeout=10)


def install(root: Path, port: int):
    """Render the coordinator and node files for this stand-in environment."""
    omero = write(root / "omero", f"""#!/bin/bash
# Stand-in for `omero render ... test --force Image:ID`
id=${{!#}}; id=${{id#Image:}}
node=$PARALLEL_SSHHOST
echo "start $id $node" >> {root}/calls.log
ms=$(awk -v id="$id" -F'|' '$1 == id {{ print $2 }}' {root}/ids.txt)
factor=10; [ "$node" = {FAST} ] && factor=1
sleep "$(awk -v ms="$ms" -v f="$factor" 'BEGIN {{ print ms * f / 1000 }}')"
if [ "$id" = {BROKEN} ] || {{ [ "$id" = {FLAKY} ] && mkdir {root}/flaky-failed 2>/dev/null; }}; then
    echo "fail: Pixel:$id 0.1 java.io.FileNotFoundException"
    echo "fail $id $node" >> {root}/calls.log
    exit 0
fi
echo "ok: Pixel:$id 0.1"
echo "done $id $node" >> {root}/calls.log
""")
    s = settings(sshUser="root", omeroreadonlyCount=2, omeroBin=str(omero),
                 bfcacheSlots='["omeroreadwrite=3", "omeroreadonly=1"]')
    files = {f.path: f.content for f in render.coordinator_files(s)}
    for f in render.node_files(s, s.host("omeroreadwrite")):
        files[f.path] = f.content

    def local(text: str) -> str:
        for public, loopback in ADDRESSES.items():
            text = text.replace(public, loopback)
        for path, name in ((f"{render.LIBEXEC}/render-one.sh", "render-one.sh"),
                           (f"{render.KEY_DIR}/id_ed25519", "key"), (f"{render.KEY_DIR}/known_hosts", "known_hosts"),
                           (f"{render.CONF_DIR}/nodes", "nodes"), (render.STATE_DIR, "state")):
            text = text.replace(path, f"{root}/{name}")
        return text.replace('ssh_cmd="ssh -i', f'ssh_cmd="ssh -p {port} -i')

    write(root / "nodes", local(files[f"{render.CONF_DIR}/nodes"]), 0o644)
    write(root / "run.sh", local(files[f"{render.LIBEXEC}/run.sh"]))
    write(root / "status", local(files[render.STATUS_BIN]))
    write(root / "render-one.sh", files[f"{render.LIBEXEC}/render-one.sh"])
    return s


def joblog(path: Path) -> dict[int, int]:
    """Seq -> exit value of its last entry."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 7:
            out[int(fields[0])] = int(fields[6])
    return out


def calls(root: Path) -> list[tuple[str, int, str]]:
    path = root / "calls.log"
    if not path.exists():
        return []
    return [(a, int(b), c) for a, b, c in (line.split() for line in path.read_text().splitlines())]


def test_killed_run_resumes_retries_and_finishes_each_image_once(cluster):
    root, port = cluster
    install(root, port)
    ids = list(costs())
    state = root / "state" / "1"
    env = {**os.environ, "HOME": str(root)}  # parallel keeps its own files under ~/.parallel

    # First run: killed midway, as a node reboot or `systemctl stop` would.
    first = subprocess.Popen([str(root / "run.sh"), "1"], start_new_session=True, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while len([s for s, rc in joblog(state / "joblog").items() if rc == 0]) < 10:
        assert first.poll() is None, first.stdout.read().decode()
        assert time.time() < deadline, "the first run did not get going"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(0.5)  # remote jobs notice their ssh went away and stop
    done_first = {s for s, rc in joblog(state / "joblog").items() if rc == 0}
    calls_first = len(calls(root))
    assert not (state / "finished").exists()
    assert 10 <= len(done_first) < len(ids)

    # Restart: continues from the joblog.
    second = subprocess.Popen([str(root / "run.sh"), "1"], start_new_session=True, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    assert (state / "finished").exists()
    assert "finished with 1 failed image" in output

    # The queue: the ID list as fetched through the database's forced
    # command, largest first; heavy images pinned to the fast node.
    queue = (state / "queue.txt").read_text().split()
    assert [int(q.split("@")[0]) for q in queue] == ids
    pinned = {int(q.split("@")[0]) for q in queue if q.endswith("@omeroreadwrite")}
    assert 1000 in pinned and 0 < len(pinned) < len(ids)

    # No image completed in the first run was started again.
    again = [i for kind, i, _ in calls(root)[calls_first:] if kind == "start"]
    assert not {ids[s - 1] for s in done_first} & set(again)
    # Every image finished once: exactly one final joblog entry per image.
    final = joblog(state / "joblog")
    assert sorted(final) == list(range(1, len(ids) + 1))
    assert {ids[s - 1] for s, rc in final.items() if rc != 0} == {BROKEN}
    done = Counter(i for kind, i, _ in calls(root) if kind == "done")
    assert set(done) == set(ids) - {BROKEN}
    # Twice only if it was running when the first run was killed.
    assert all(n == 1 for i, n in done.items() if ids.index(i) + 1 in done_first)
    assert all(n <= 2 for n in done.values())

    # The flaky image failed, was retried and is ok; the broken one was tried
    # ATTEMPTS times in each run that reached it, and is reported.
    flaky = [(kind, node) for kind, i, node in calls(root) if i == FLAKY and kind in ("fail", "done")]
    assert flaky[0][0] == "fail" and flaky[-1][0] == "done"
    assert final[ids.index(FLAKY) + 1] == 0
    assert sum(1 for kind, i, _ in calls(root) if kind == "start" and i == BROKEN) >= render.ATTEMPTS

    # Results CSV: image,node,status,seconds; pinned images ran on the fast node.
    rows = [line.split(",") for line in (state / "results.csv").read_text().splitlines()]
    assert all(len(r) == 4 and r[2] in ("ok", "fill", "miss", "fail", "cancel") for r in rows)
    last = {int(r[0]): r for r in rows}
    assert set(last) == set(ids)
    assert last[BROKEN][2] == "fail" and last[FLAKY][2] == "ok"
    assert {last[i][1] for i in pinned} == {FAST}
    assert {r[1] for r in rows} == {FAST, SLOW1, SLOW2}

    status = subprocess.run([str(root / "status"), "1"], capture_output=True, text=True, check=True).stdout
    assert f"done: {len(ids) - 1}/{len(ids)}" in status
    assert "failed: 1" in status and f"image {BROKEN}: fail" in status

    # Finished: running it again starts nothing.
    before = len(calls(root))
    third = subprocess.run([str(root / "run.sh"), "1"], env=env, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0 and "already finished" in third.stdout
    assert len(calls(root)) == before
