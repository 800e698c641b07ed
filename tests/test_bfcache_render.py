"""Bio-Formats cache regeneration: renderers, the host scripts run for real
on scratch directories (with stubbed system commands), and the component
under Pulumi mocks."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components import offline
from components.bfcache import BfCache, BfCacheArgs
from components.render import bfcache as render
from components.render.hostfiles import install_script
from components.settings import build_settings
from tests.tools import tool

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfcacheTestKeyAAAAAAAAAAAAAAAAAAAAAAAAAAA"
RAW = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test", "sshBastion": "203.0.113.10",
       "omeroreadonlyCount": "3", "bfcacheGeneration": "2"}


def settings(**raw):
    values = {**RAW, **{k: str(v) if not isinstance(v, str) else v for k, v in raw.items()}}
    return build_settings("test", values.get, lambda k: "KEY" if k == "sshPrivateKey" else None)


def all_files(s):
    files = render.keygen_files(s) + render.coordinator_files(s) + render.database_files(s) + render.backup_files()
    for node in render.nodes(s):
        host = next(h for h in s.hosts if h.name == node.name)
        files += render.node_files(s, host)
    return files


def write(path: Path, text: str, mode=0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# ------------------------------------------------------------- renderers

def test_nodes_are_readwrite_and_every_readonly_host_with_slots_from_config():
    s = settings(bfcacheSlots='["omeroreadwrite=12", "omeroreadonly=2"]')
    nodes = render.nodes(s)
    assert [(n.name, n.address, n.slots) for n in nodes] == [
        ("test-omeroreadwrite", "192.168.1.11", 12),
        ("test-omeroreadonly-1", "192.168.1.101", 2),
        ("test-omeroreadonly-2", "192.168.1.102", 2),
        ("test-omeroreadonly-3", "192.168.1.103", 2)]
    (nodes_file,) = [f for f in render.coordinator_files(s) if f.path.endswith("/nodes")]
    lines = [l for l in nodes_file.content.splitlines() if not l.startswith("#")]
    assert lines == ["@omeroreadwrite/12/rocky@192.168.1.11"] + [
        f"@omeroreadonly/2/rocky@192.168.1.10{n}" for n in (1, 2, 3)]


def test_every_script_passes_shellcheck(tmp_path):
    shellcheck = tool("shellcheck")
    s = settings()
    scripts = [f for f in all_files(s) if f.content.startswith("#!/bin/bash")]
    scripts.append(render.authorize_script(s, s.host("database"), KEY, render.ids_command()))
    paths = []
    for i, f in enumerate(scripts):
        text = f if isinstance(f, str) else f.content
        paths.append(str(write(tmp_path / f"script{i}.sh", text)))
    assert len(paths) >= 10
    result = subprocess.run([shellcheck, "-s", "bash", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sql_is_plain_and_orders_by_cost():
    sql = render.first_image_sql()
    assert "{{" not in sql and "{%" not in sql
    assert "ORDER BY images DESC" in sql
    (sql_file,) = [f for f in render.database_files(settings()) if f.path.endswith(".sql")]
    assert sql_file.content == sql


def test_run_step_changes_with_generation_only():
    """HostFiles re-runs when its script changes: a bump re-runs the start
    step; unrelated config (nginx) leaves every bfcache script as it was."""
    def scripts(s):
        proxy = s.host("proxy")
        return (install_script(proxy.name, render.coordinator_files(s), render.start_run(s)),
                install_script(proxy.name, render.keygen_files(s), render.keygen_run()))
    base = scripts(settings())
    assert scripts(settings()) == base
    assert scripts(settings(nginxCacheValid="2d", maintenance="true")) == base
    bumped = scripts(settings(bfcacheGeneration=3))
    assert bumped[0] != base[0] and "start.sh 3" in bumped[0]
    assert render.start_run(settings(bfcacheGeneration=3)).endswith("start.sh 3")


def test_public_key_is_taken_from_the_keygen_output():
    assert render.public_key_of(f"noise\n{KEY} idr-bfcache@x\n") == f"{KEY} idr-bfcache@x"
    assert render.public_key_of(None) == ""
    assert render.public_key_of("") == ""


# --------------------------------------------- host scripts run for real

def stubs(tmp_path: Path, hostname: str) -> dict:
    """PATH with `hostname` answering as the target host and systemd stubs
    that log their arguments."""
    bin_dir = tmp_path / "bin"
    write(bin_dir / "hostname", f"#!/bin/sh\necho {hostname}\n")
    for name in ("systemctl", "systemd-run"):
        write(bin_dir / name, f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/systemd.log\n'
                              f'[ "$1" = is-active ] && exit ${{ACTIVE:-3}}\nexit 0\n')
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_authorize_installs_the_key_once_and_replaces_an_old_one(tmp_path):
    s = settings()
    db = s.host("database")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAAother operator\n")
    env = stubs(tmp_path, db.name)

    def run(key):
        text = render.authorize_script(s, db, key, render.ids_command())
        text = text.replace('home=$(getent passwd "$user" | cut -d: -f6)', f"home={home}")
        text = text.replace("user=rocky", "user=root")
        return subprocess.run(["bash", "-s"], input=text, text=True, capture_output=True, env=env)

    for _ in range(2):
        assert run(KEY).returncode == 0
    lines = (home / ".ssh/authorized_keys").read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAother operator"
    assert lines[1] == (f'command="{render.ids_command()}",restrict,from="192.168.1.10" {KEY} '
                        "idr-bfcache@test-proxy")
    assert len(lines) == 2
    new_key = KEY.replace("Test", "Next")
    assert run(new_key + " root@elsewhere").returncode == 0
    lines = (home / ".ssh/authorized_keys").read_text().splitlines()
    assert len(lines) == 2 and new_key in lines[1] and KEY not in lines[1]
    # No key (the keygen step has not run): refuse, change nothing.
    refused = run("")
    assert refused.returncode == 1 and "no coordinator public key" in refused.stderr
    # On the wrong machine nothing happens either.
    wrong = subprocess.run(["bash", "-s"], input=render.authorize_script(s, db, KEY), text=True,
                           capture_output=True, env=stubs(tmp_path / "other", "someone-else"))
    assert wrong.returncode == 1 and "refusing" in wrong.stderr


def test_backup_moves_the_cache_once_per_generation(tmp_path):
    cache = tmp_path / "BioFormatsCache"
    (cache / "data/a").mkdir(parents=True)
    (cache / "data/a/memo").write_text("old")
    (cache / ".top.bfmemo").write_text("old")
    (script_text,) = [f.content for f in render.backup_files()]
    script = write(tmp_path / "backup.sh", script_text.replace("cache=/data/BioFormatsCache", f"cache={cache}"))

    assert subprocess.run([str(script), "1"], check=True, capture_output=True, text=True)
    assert (cache / "backup/generation-1/data/a/memo").read_text() == "old"
    assert (cache / "backup/generation-1/.top.bfmemo").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["backup"]
    # Regenerated files appear; the same generation again moves nothing.
    (cache / "data").mkdir()
    (cache / "data/new").write_text("new")
    again = subprocess.run([str(script), "1"], check=True, capture_output=True, text=True)
    assert "already moved" in again.stdout and (cache / "data/new").exists()
    # The next generation moves them into its own folder, never backup into itself.
    subprocess.run([str(script), "2"], check=True, capture_output=True)
    assert (cache / "backup/generation-2/data/new").read_text() == "new"
    assert not (cache / "backup/generation-2/backup").exists()
    assert (cache / "backup/generation-1/data/a/memo").exists()
    # A third generation drops the oldest backup, and only backup folders.
    (cache / "data").mkdir()
    (cache / "data/third").write_text("3")
    (cache / "backup/generation-notes").mkdir()
    third = subprocess.run([str(script), "3"], check=True, capture_output=True, text=True)
    assert "removing the old backup generation-1" in third.stdout
    assert sorted(p.name for p in (cache / "backup").iterdir() if not p.name.startswith(".")) == [
        "generation-2", "generation-3", "generation-notes"]
    assert (cache / "backup/generation-3/data/third").read_text() == "3"
    assert sorted(p.name for p in cache.iterdir()) == ["backup"]


@pytest.mark.parametrize("output, rc, status, code", [
    ("ok: Pixel:7 1.2 ", 0, "ok", 0),
    ("fill: Pixel:7 30.0 ", 0, "fill", 0),
    ("ok: Pixel:7 1.0\nfail: Pixel:8 2.0 missing file", 0, "fail", 1),
    ("cancel: Pixel:7 2.0", 0, "cancel", 1),
    ("Traceback ... connection refused", 1, "fail", 1),
    ("ok: Pixel:7 1.2", 3, "fail", 1),
])
def test_render_one_reports_one_csv_line_and_fails_for_retry(tmp_path, output, rc, status, code):
    (tmp_path / "output").write_text(output + "\n")
    omero = write(tmp_path / "omero", f"#!/bin/bash\necho \"$*\" > {tmp_path}/args\n"
                                      f"cat {tmp_path}/output\nexit {rc}\n")
    (text,) = [f.content for f in render.node_files(settings(omeroBin=str(omero)), settings().host("omeroreadwrite"))
               if f.path.endswith("render-one.sh")]
    script = write(tmp_path / "render-one.sh", text)
    result = subprocess.run([str(script), "42"], capture_output=True, text=True,
                            env={**os.environ, "PARALLEL_SSHHOST": "192.168.1.11"})
    assert result.returncode == code
    fields = result.stdout.strip().split(",")
    assert fields[:3] == ["42", "192.168.1.11", status] and fields[3].isdigit()
    assert (tmp_path / "args").read_text().split() == \
        ["render", "-s", "localhost", "-u", "public", "-w", "public", "test", "--force", "Image:42"]
    assert subprocess.run([str(script), "42;rm"], capture_output=True).returncode == 2


def coordinator_script(tmp_path: Path, name: str) -> Path:
    (text,) = [f.content for f in render.coordinator_files(settings()) if f.path.endswith(name)]
    return write(tmp_path / name, text.replace(f"state_dir={render.STATE_DIR}", f"state_dir={tmp_path}/state"))


def state(tmp_path: Path, generation: int, ids: list[tuple[int, int]], joblog: list[tuple[int, int]],
          finished=False):
    d = tmp_path / "state" / str(generation)
    d.mkdir(parents=True, exist_ok=True)
    (d / "ids.txt").write_text("".join(f"{i}|{c}\n" for i, c in ids))
    (d / "queue.txt").write_text("".join(f"{i}\n" for i, _ in ids))
    (d / "joblog").write_text("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n" + "".join(
        f"{seq}\troot@x\t0\t1\t0\t0\t{rc}\t0\tcmd\n" for seq, rc in joblog))
    (d / "results.csv").write_text("".join(f"{ids[seq - 1][0]},x,{'ok' if rc == 0 else 'fail'},1\n"
                                           for seq, rc in joblog))
    (d / "started").write_text("1\n")
    if finished:
        (d / "finished").write_text("2\n")
    return d


def test_start_refuses_a_finished_generation_and_starts_a_new_one(tmp_path):
    start = coordinator_script(tmp_path, "start.sh")
    env = stubs(tmp_path, "test-proxy")
    log = tmp_path / "systemd.log"
    ids = [(10, 5), (20, 3), (30, 1)]
    # Every queued image has a final joblog entry (one failed): complete, even
    # without the finished marker (the run was killed while writing it).
    state(tmp_path, 1, ids, [(1, 0), (2, 0), (3, 1)])
    out = subprocess.run([str(start), "1"], capture_output=True, text=True, env=env, check=True)
    assert "not starting it again" in out.stdout and not log.exists()
    state(tmp_path, 4, ids, [(1, 0)], finished=True)
    assert "not starting" in subprocess.run([str(start), "4"], capture_output=True, text=True, env=env).stdout
    assert not log.exists()
    # Half done and stopped: started again (it resumes).
    state(tmp_path, 2, ids, [(1, 0)])
    subprocess.run([str(start), "2"], capture_output=True, text=True, env=env, check=True)
    assert "systemd-run --unit idr-bfcache-2.service" in log.read_text()
    assert f"{render.LIBEXEC}/run.sh 2" in log.read_text()
    # Running: nothing is started twice.
    log.unlink()
    out = subprocess.run([str(start), "2"], capture_output=True, text=True, env={**env, "ACTIVE": "0"}, check=True)
    assert "is running" in out.stdout and "systemd-run" not in log.read_text()
    # A new generation with no state yet starts.
    log.unlink()
    subprocess.run([str(start), "3"], capture_output=True, text=True, env=env, check=True)
    assert "systemd-run --unit idr-bfcache-3.service" in log.read_text()
    assert subprocess.run([str(start), "x"], capture_output=True, env=env).returncode == 2


def test_status_prints_done_total_failures_and_eta(tmp_path):
    status = coordinator_script(tmp_path, "idr-bfcache-status")
    d = state(tmp_path, 5, [(10, 6), (20, 2), (30, 1), (40, 1)], [(1, 0), (3, 1)])
    (d / "started").write_text(f"{int(__import__('time').time()) - 60}\n")
    out = subprocess.run([str(status)], capture_output=True, text=True, env=stubs(tmp_path, "p"), check=True).stdout
    assert "generation 5: stopped" in out
    assert "done: 1/4 images (60.0% of the work)" in out
    assert "failed: 1" in out and "image 30: fail" in out
    eta = int(out.split("eta: ")[1].split("s")[0])
    assert 25 <= eta <= 35  # 60 s for 6 of 10 cost units, 3 units left (1 failed)
    state(tmp_path, 6, [(10, 6)], [(1, 0)], finished=True)
    out = subprocess.run([str(status), "6"], capture_output=True, text=True, env=stubs(tmp_path, "p")).stdout
    assert "done: 1/1" in out and "eta: none, finished" in out


# ------------------------------------------------ the component, mocked

def record(s) -> offline.Recording:
    offline._reset_runtime()
    mocks = offline.IdrMocks()
    recording = offline.Recording("test")
    pulumi.runtime.set_mocks(mocks, project="idr", stack="test", preview=False,
                             monitor=offline.RecordingMonitor(mocks, recording))

    def body():
        BfCache("test-bfcache", BfCacheArgs(settings=s, depends_on=[]))

    try:
        _sync_await(run_pulumi_func(body))
    finally:
        offline._reset_runtime()
    return recording


def test_generation_zero_declares_nothing():
    rec = record(settings(bfcacheGeneration=0))
    assert [r.type for r in rec.resources] == ["idr:bfcache:BfCache"]


def test_component_wires_key_nodes_backup_and_run_in_order():
    s = settings(bfcacheGeneration=7)
    rec = record(s)
    files = {r.name: r for r in rec.of_type("idr:host:HostFiles")}
    assert set(files) == {"test-bfcache-key", "test-bfcache-ids", "test-bfcache-backup", "test-bfcache-run",
                          "test-bfcache-node-omeroreadwrite"} | {
        f"test-bfcache-node-omeroreadonly-{n}" for n in (1, 2, 3)}
    assert files["test-bfcache-run"].inputs["host"] == "test-proxy"
    assert files["test-bfcache-run"].inputs["run"].endswith("start.sh 7")
    assert files["test-bfcache-backup"].inputs["host"] == "test-omeroreadwrite"
    assert files["test-bfcache-ids"].inputs["host"] == "test-database"
    trust = {r.name: r for r in rec.of_type("command:remote:Command") if "-trust-" in r.name}
    assert set(trust) == {"test-bfcache-trust-omeroreadwrite", "test-bfcache-trust-database"} | {
        f"test-bfcache-trust-omeroreadonly-{n}" for n in (1, 2, 3)}
    for r in trust.values():
        assert r.inputs["update"] == "cat > /dev/null"   # a new connection re-runs nothing
        assert any(u.endswith("Command::test-bfcache-key") for u in r.options.depends_on)
    # Offline the key is unknown, so the trust step would refuse, not guess.
    assert "line=''" in trust["test-bfcache-trust-database"].inputs["stdin"]
    # A component in depends_on stands for its children: the install commands.
    run_deps = set(rec.named("test-bfcache-run", "command:remote:Command").options.depends_on)
    assert {r.urn for r in trust.values()} <= run_deps
    for n in files:
        if n not in ("test-bfcache-run", "test-bfcache-key"):
            assert rec.named(n, "command:remote:Command").urn in run_deps
    assert rec.of_type("idr:bfcache:BfCache")[0].inputs == {"generation": 7}
