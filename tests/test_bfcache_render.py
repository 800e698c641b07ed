"""Bio-Formats cache regeneration: renderers, the host scripts run for real
on scratch directories (with stubbed system commands), and the component
under Pulumi mocks."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from components import layout, offline
from components.bfcache import BfCache, BfCacheArgs
from components.render import bfcache as render
from components.render.hostfiles import install_script
from tests.support.settings import bfcache_settings as settings
from tests.support.tools import tool

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfcacheTestKeyAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def all_files(s):
    files = (render.keygen_files(s) + render.coordinator_files(s) + render.database_files(s) + render.backup_files()
             + render.forget_files(s))
    for node in render.nodes(s):
        host = next(h for h in layout.hosts(s) if h.name == node.name)
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
    # address name alias role starting-time-per-image slots: the dispatcher's
    # starting values, omeroreadonly ten times slower.
    assert lines == ["192.168.1.11 test-omeroreadwrite omeroreadwrite omeroreadwrite 1 12"] + [
        f"192.168.1.10{n} test-omeroreadonly-{n} omeroreadonly-{n} omeroreadonly {render.SLOWDOWN} 2" for n in (1, 2, 3)]


def test_the_programs_ship_verbatim_and_only_their_config_is_rendered():
    """Every program is the file in components/files/bfcache, identical for
    any settings; what differs between environments is the config."""
    def shipped(s):
        files = render.coordinator_files(s) + render.node_files(s, layout.host(s, "omeroreadwrite"))
        # node-setup.sh is a rendered step script (its host, the version), not a shipped program.
        return {f.path: f.content for f in files
                if not f.path.startswith(render.CONF_DIR) and not f.path.endswith("/node-setup.sh")}
    a, b = shipped(settings()), shipped(settings(bfcacheSlots='["omeroreadwrite=20", "omeroreadonly=3"]',
                                                 omeroBin="/x/omero", sshUser="root", omeroreadonlyCount=1))
    assert a == b
    assert {p.rsplit("/", 1)[1] for p in a} == {p.name for p in render.FILES.iterdir() if p.suffix != ".pyc"
                                                and p.name != "__pycache__"}
    for path, text in a.items():
        assert text == (render.FILES / path.rsplit("/", 1)[1]).read_text()
    # idr-bfcache-start takes exactly the subset kinds the ID query knows.
    start = (render.FILES / "idr-bfcache-start").read_text()
    assert " | ".join(f"--{k}" for k in render.SUBSET_KINDS) + ")" in start


def test_every_script_passes_shellcheck_and_the_dispatcher_is_python_3_9(tmp_path):
    shellcheck = tool("shellcheck")
    paths = []
    for enabled in ("true", "false"):
        s = settings(deploymentEnabled=enabled)
        scripts = [f for f in all_files(s) if f.content.startswith("#!/bin/bash")]
        scripts.append(render.authorize_script(s, layout.host(s, "database"), KEY, render.ids_command()))
        # Generation 0's revoke steps and the coordinator's forget step, as fed to the hosts.
        scripts += [install_script(h.name, [], render.revoke_run(s, h)) for h in render.peers(s)]
        scripts.append(install_script(layout.host(s, "proxy").name, render.forget_files(s),
                                      render.forget_run(s, {h.name: f"id-{h.alias}" for h in render.peers(s)})))
        for i, f in enumerate(scripts):
            text = f if isinstance(f, str) else f.content
            paths.append(str(write(tmp_path / f"script-{enabled}-{i}.sh", text)))
    assert len(paths) >= 40
    result = subprocess.run([shellcheck, "-s", "bash", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    (dispatch,) = [f for f in all_files(settings()) if f.path.endswith("dispatch.py")]
    ast.parse(dispatch.content, feature_version=(3, 9))   # Rocky Linux 9's python3
    # The config files are sourced by bash: checked as scripts too.
    confs = [f for f in all_files(settings()) if f.path in (render.CONF, render.NODE_CONF)]
    assert len(confs) >= 2
    conf_paths = [str(write(tmp_path / f"conf-{i}.sh", "#!/bin/bash\n" + f.content)) for i, f in enumerate(confs)]
    # Assignments only (SC2034: used by the programs that source them).
    result = subprocess.run([shellcheck, "-s", "bash", "-e", "SC2034", *conf_paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sql_is_plain_and_orders_by_cost():
    sql = render.first_image_sql()
    assert "{{" not in sql and "{%" not in sql
    assert "ORDER BY images DESC" in sql
    sql_files = {f.path: f.content for f in render.database_files(settings()) if ".sql" in f.path or ".psql" in f.path}
    assert sql_files[render.SQL_PATH] == sql
    subset = render.subset_sql()
    assert sql_files[render.SUBSET_SQL_PATH] == subset
    assert "{{" not in subset and "ORDER BY images DESC, image" in subset
    for kind in render.SUBSET_KINDS:
        assert f":'kind' = '{kind}'" in subset


def test_run_step_changes_with_generation_only():
    """HostFiles re-runs when its script changes: a bump re-runs the start
    step; unrelated config (nginx) leaves every bfcache script as it was."""
    def scripts(s):
        proxy = layout.host(s, "proxy")
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
    that log their arguments ($ACTIVE: is-active's exit; $UNITS: the active
    units list-units shows)."""
    bin_dir = tmp_path / "bin"
    write(bin_dir / "hostname", f"#!/bin/sh\necho {hostname}\n")
    for name in ("systemctl", "systemd-run"):
        write(bin_dir / name, f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/systemd.log\n'
                              f'[ "$1" = is-active ] && exit ${{ACTIVE:-3}}\n'
                              f'[ "$1" = list-units ] && [ -n "$UNITS" ] && echo "$UNITS loaded active running x"\n'
                              'exit 0\n')
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_authorize_installs_the_key_once_and_replaces_an_old_one(tmp_path):
    s = settings()
    db = layout.host(s, "database")
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
                        "idr-bfcache-coordinator@test-proxy")
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
    # A line an older version wrote (comment idr-bfcache@<proxy>) is replaced
    # too; a line that merely mentions the marker elsewhere is not ours.
    keys = home / ".ssh/authorized_keys"
    mention = "ssh-ed25519 AAAAmention see idr-bfcache-coordinator docs"
    keys.write_text(f"ssh-ed25519 AAAAother operator\n{mention}\n"
                    f'from="192.168.1.10" {KEY} idr-bfcache@test-proxy\n')
    assert run(KEY).returncode == 0
    assert keys.read_text().splitlines() == [
        "ssh-ed25519 AAAAother operator", mention,
        f'command="{render.ids_command()}",restrict,from="192.168.1.10" {KEY} idr-bfcache-coordinator@test-proxy']
    assert oct(keys.stat().st_mode & 0o777) == "0o600"


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
    script = render_one(tmp_path, omero)
    result = subprocess.run([str(script), "42:7"], capture_output=True, text=True,
                            env={**os.environ, "PARALLEL_SSHHOST": "192.168.1.11"})
    assert result.returncode == code
    fields = result.stdout.strip().split(",")
    assert fields[:3] == ["42", "192.168.1.11", status] and float(fields[3]) >= 0 and fields[4] == "7"
    assert (tmp_path / "args").read_text().split() == \
        ["render", "-s", "localhost", "-u", "public", "-w", "public", "test", "--force", "Image:42"]
    assert subprocess.run([str(script), "42;rm"], capture_output=True).returncode == 2


def render_one(tmp_path: Path, omero: Path, password_file: str = render.PUBLIC_PASSWORD_FILE) -> Path:
    """render-one.sh as shipped, reading its rendered node.conf from tmp_path."""
    s = settings(omeroBin=str(omero))
    files = {f.path: f.content for f in render.node_files(s, layout.host(s, "omeroreadwrite"))}
    write(tmp_path / "node.conf", files[render.NODE_CONF].replace(render.PUBLIC_PASSWORD_FILE, password_file), 0o644)
    return write(tmp_path / "render-one.sh", files[f"{render.LIBEXEC}/render-one.sh"].replace(
        render.NODE_CONF, str(tmp_path / "node.conf")))


# What the dispatcher sends and render-one accepts: ID[:IMAGES], 1-18 and 1-9
# digits. render-one checks it with a glob (a regex costs ~0.4 ms an image).
IMAGE_ITEM = re.compile(r"[0-9]{1,18}(:[0-9]{1,9})?")


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.one_of(
    st.from_regex(IMAGE_ITEM, fullmatch=True),
    st.text(alphabet="0123456789:a -;", max_size=30),
    st.integers(min_value=0, max_value=10**20).map(str),
    st.tuples(st.integers(0, 10**19), st.integers(0, 10**10)).map(lambda t: f"{t[0]}:{t[1]}")), max_size=12))
def test_render_one_runs_exactly_the_well_formed_image_items_of_its_lane(tmp_path, items):
    """Every line of a lane is checked before omero sees it: the well-formed
    ones run (one result each, in order), every other one is refused on
    stderr and the lane goes on."""
    omero = write(tmp_path / "omero", "#!/bin/sh\necho 'ok: Pixel:1 0.1'\n")
    script = render_one(tmp_path, omero)
    out = subprocess.run([str(script)], input="".join(f"{i}\n" for i in items), capture_output=True, text=True,
                         env={**os.environ, "BFCACHE_BATCH": "-", "BFCACHE_NODE": "n1"}, timeout=60)
    good = [i for i in items if IMAGE_ITEM.fullmatch(i)]
    assert out.returncode == 0, out.stderr
    assert [line.split(",")[0] for line in out.stdout.splitlines()] == [i.split(":")[0] for i in good]
    assert out.stderr.count("not an image ID") == len(items) - len(good)


def test_render_one_takes_a_lane_of_images_on_stdin_one_line_each_as_it_finishes(tmp_path):
    """BFCACHE_BATCH=-: image after image from stdin (the dispatcher's lane);
    a result line leaves as soon as its image is done, before the next is read;
    omero gets no stdin (it would eat the queue)."""
    omero = write(tmp_path / "omero", f"#!/bin/bash\nid=${{!#}}\necho \"${{id#Image:}} $(cat | wc -c)\" >> {tmp_path}/calls\n"
                                      "echo 'ok: Pixel:1 0.1'\n")
    script = render_one(tmp_path, omero)
    p = subprocess.Popen([str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PARALLEL_SSHHOST": "n1", "BFCACHE_BATCH": "-"})
    p.stdin.write("5:3\n")
    p.stdin.flush()
    assert p.stdout.readline().split(",")[:3] == ["5", "n1", "ok"]        # before any more input
    p.stdin.write("6:1\nbad;id\n7:2\n")
    p.stdin.close()
    rest = p.stdout.read().splitlines()
    assert p.wait() == 0
    assert [line.split(",")[0] for line in rest] == ["6", "7"]
    assert (tmp_path / "calls").read_text().split("\n")[:3] == ["5 0", "6 0", "7 0"]
    # A batch in the environment: the same lines.
    out = subprocess.run([str(script)], capture_output=True, text=True,
                         env={**os.environ, "PARALLEL_SSHHOST": "n1", "BFCACHE_BATCH": "8:1,9:4"})
    assert [line.split(",")[4] for line in out.stdout.splitlines()] == ["1", "4"]


def coordinator_script(tmp_path: Path, name: str, s=None) -> Path:
    """A coordinator program as shipped, reading its rendered bfcache.conf
    from tmp_path (state there; run.sh a stand-in)."""
    files = {f.path: f.content for f in render.coordinator_files(s or settings())}
    (text,) = [content for path, content in files.items() if path.endswith(name)]
    conf = files[render.CONF].replace(f"state_dir={render.STATE_DIR}\n", f"state_dir={tmp_path}/state\n")
    # run.sh stands in: it logs its arguments; `--check` answers $READY.
    conf = conf.replace(f"run_script={render.LIBEXEC}/run.sh\n", f"run_script={tmp_path}/run.sh\n")
    write(tmp_path / "bfcache.conf", conf, 0o644)
    text = text.replace(render.CONF, str(tmp_path / "bfcache.conf"))
    write(tmp_path / "run.sh", f'#!/bin/bash\necho "run.sh $*" >> {tmp_path}/run.log\n'
                               f'[ "$1" = --check ] && {{ [ "${{READY:-0}}" = 1 ] && echo "waiting for omero on n1: ..."; '
                               f'exit "${{READY:-0}}"; }}\nexit 0\n')
    return write(tmp_path / name, text)


def state(tmp_path: Path, run, ids: list[tuple[int, int]], done: list[tuple[int, str]], finished=False):
    """A run's state: ids.txt, and results.csv with a line per (image, status)."""
    d = tmp_path / "state" / str(run)
    d.mkdir(parents=True, exist_ok=True)
    (d / "ids.txt").write_text("".join(f"{i}|{c}\n" for i, c in ids))
    cost = dict(ids)
    (d / "results.csv").write_text("".join(f"{i},10.0.0.{i % 3},{st},{cost[i] * (10 if i % 3 else 1)}.0,{cost[i]}\n"
                                           for i, st in done))
    (d / "started").write_text("1\n")
    if finished:
        (d / "finished").write_text("2\n")
    return d


def test_start_refuses_a_finished_generation_waits_for_nodes_and_starts_a_new_one(tmp_path):
    start = coordinator_script(tmp_path, "start.sh")
    env = stubs(tmp_path, "test-proxy")
    log = tmp_path / "systemd.log"
    ids = [(10, 5), (20, 3), (30, 1)]
    # Every image has a result line (one failed): complete, even without the
    # finished marker (the run was killed while writing it).
    state(tmp_path, 1, ids, [(10, "ok"), (20, "ok"), (30, "fail")])
    out = subprocess.run([str(start), "1"], capture_output=True, text=True, env=env, check=True)
    assert "not starting it again" in out.stdout and not log.exists()
    state(tmp_path, 4, ids, [(10, "ok")], finished=True)
    assert "not starting" in subprocess.run([str(start), "4"], capture_output=True, text=True, env=env).stdout
    assert not log.exists()
    # Half done and stopped, but a node waits for omero: its one line, exit 0, nothing started.
    state(tmp_path, 2, ids, [(10, "ok")])
    out = subprocess.run([str(start), "2"], capture_output=True, text=True, env={**env, "READY": "1"})
    assert out.returncode == 0 and out.stdout.splitlines() == ["waiting for omero on n1: ..."]
    assert "systemd-run" not in log.read_text()
    # Unreachable node: the step fails.
    assert subprocess.run([str(start), "2"], capture_output=True, env={**env, "READY": "2"}).returncode == 2
    # Ready: started again (it resumes).
    subprocess.run([str(start), "2"], capture_output=True, text=True, env=env, check=True)
    assert "systemd-run --unit idr-bfcache-2.service" in log.read_text()
    assert f"{tmp_path}/run.sh 2" in log.read_text()
    # Running: nothing is started twice.
    log.unlink()
    out = subprocess.run([str(start), "2"], capture_output=True, text=True, env={**env, "ACTIVE": "0"}, check=True)
    assert "is running" in out.stdout and "systemd-run" not in log.read_text()
    # A new generation with no state yet starts.
    log.unlink()
    subprocess.run([str(start), "3"], capture_output=True, text=True, env=env, check=True)
    assert "systemd-run --unit idr-bfcache-3.service" in log.read_text()
    assert subprocess.run([str(start), "x"], capture_output=True, env=env).returncode == 2


def test_bfcache_start_runs_a_subset_or_the_failures_of_a_finished_run(tmp_path):
    start = coordinator_script(tmp_path, "idr-bfcache-start")
    env = stubs(tmp_path, "test-proxy")
    log = tmp_path / "systemd.log"

    def go(*args, **extra):
        return subprocess.run([str(start), *args], capture_output=True, text=True, env={**env, **extra})

    # One screen: its own run, state and unit.
    out = go("--screen", "1101")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "state/screen-1101/subset").read_text() == "screen\n1101\n"
    assert f"systemd-run --unit idr-bfcache-screen-1101.service" in log.read_text()
    assert f"{tmp_path}/run.sh screen-1101" in log.read_text()
    assert "idr-bfcache-status screen-1101" in out.stdout
    # A file of image IDs (sorted, blank lines dropped), with a name.
    (tmp_path / "ids").write_text("7\n\n3\n5\n")
    assert go("--images", str(tmp_path / "ids"), "--name", "failed-hcs").returncode == 0
    assert (tmp_path / "state/failed-hcs/subset").read_text() == "images\n3\n5\n7\n"
    # Refused: bad IDs, a numeric name (generations), two subsets, another subset under a used name.
    (tmp_path / "bad").write_text("7\nImage:3\n")
    assert go("--images", str(tmp_path / "bad")).returncode == 2
    assert go("--plate", "5", "--name", "12").returncode == 2
    assert go("--plate", "5", "--dataset", "6").returncode == 2
    assert go("--plate", "5", "--name", "failed-hcs").returncode == 2
    # Nodes waiting: nothing starts.
    log.unlink()
    assert go("--dataset", "9", READY="1").returncode == 1
    # Another run active: refused.
    busy = go("--dataset", "9", UNITS="idr-bfcache-7.service")
    assert busy.returncode == 1 and "another run is active (idr-bfcache-7.service" in busy.stderr
    assert "systemd-run" not in log.read_text()

    # Retry: only a finished run, only if something failed; default the newest generation.
    state(tmp_path, 6, [(10, 5), (20, 3)], [(10, "ok"), (20, "cancel")], finished=True)
    state(tmp_path, 5, [(10, 5)], [(10, "fail"), (10, "ok")], finished=True)
    out = go("--retry-failures")
    assert out.returncode == 0 and "retrying the 1 failed image(s) of run 6" in out.stdout
    assert f"{tmp_path}/run.sh --retry-failures 6" in log.read_text()
    assert "no failed image" in go("--retry-failures", "5").stdout
    state(tmp_path, 7, [(10, 5)], [(10, "fail")])
    assert go("--retry-failures", "7").returncode == 2   # not finished: start it again instead
    # A finished subset is not run again; its failures can be retried.
    state(tmp_path, "plate-5", [(10, 5)], [(10, "fail")], finished=True)
    (tmp_path / "state/plate-5/subset").write_text("plate\n5\n")
    assert "retries its failures" in go("--plate", "5").stdout


def test_status_prints_done_total_failures_eta_and_speeds(tmp_path):
    status = coordinator_script(tmp_path, "idr-bfcache-status")
    d = state(tmp_path, 5, [(10, 6), (20, 2), (30, 1), (40, 1)], [(10, "ok"), (30, "fail")])
    (d / "started").write_text(f"{int(__import__('time').time()) - 60}\n")
    out = subprocess.run([str(status)], capture_output=True, text=True, env=stubs(tmp_path, "p"), check=True).stdout
    assert "generation 5: stopped" in out
    # Work counts images + 5 per fileset: 11 of 30 units done, 6 failed.
    assert "done: 1/4 images (36.7% of the work)" in out
    assert "failed: 1" in out and "image 30: fail" in out
    eta = int(out.split("eta: ")[1].split("s")[0])
    assert 60 <= eta <= 75  # 60 s for 11 units, 13 units left
    assert "speed: 10.0.0.1 5.455 s per cost unit" in out   # 60 s / 11 units
    state(tmp_path, 6, [(10, 6)], [(10, "ok")], finished=True)
    out = subprocess.run([str(status), "6"], capture_output=True, text=True, env=stubs(tmp_path, "p")).stdout
    assert "done: 1/1" in out and "eta: none, finished" in out
    d = state(tmp_path, "dataset-3", [(10, 6)], [])
    (d / "subset").write_text("dataset\n3\n")
    out = subprocess.run([str(status), "dataset-3"], capture_output=True, text=True, env=stubs(tmp_path, "p")).stdout
    assert "run dataset-3 (subset: dataset): stopped" in out and "done: 0/1" in out


# ------------------------------------------------ the component, mocked

def instance_ids(s) -> dict:
    return {h.name: f"instance-of-{h.name}" for h in layout.hosts(s)}


def record(s) -> offline.Recording:
    return offline.run_mocked(lambda: BfCache("test-bfcache", BfCacheArgs(
        settings=s, depends_on=[], instance_ids=instance_ids(s))), "test")


def test_generation_zero_declares_only_the_revoke_step_of_every_node_and_the_database():
    s = settings(bfcacheGeneration=0)
    rec = record(s)
    files = {r.name: r for r in rec.of_type("idr:host:HostFiles")}
    peers = ["omeroreadwrite", "omeroreadonly-1", "omeroreadonly-2", "omeroreadonly-3", "database"]
    assert set(files) == {f"test-bfcache-revoke-{alias}" for alias in peers}
    assert {r.type for r in rec.resources} == {"idr:bfcache:BfCache", "idr:host:HostFiles", "command:remote:Command"}
    for alias in peers:
        host = next(h for h in layout.hosts(s) if h.alias == alias)
        step = files[f"test-bfcache-revoke-{alias}"]
        assert step.inputs["host"] == host.name and step.inputs["files"] == []
        cmd = rec.named(f"test-bfcache-revoke-{alias}", "command:remote:Command")
        assert cmd.inputs["stdin"] == install_script(host.name, [], render.revoke_run(s, host))
        # Runs once; again only on a new server or a changed script. No delete.
        assert cmd.inputs["triggers"][1:] == [f"instance-of-{host.name}"]
        assert "delete" not in cmd.inputs and cmd.inputs["update"] == "cat > /dev/null"
        assert cmd.inputs["connection"]["host"] == host.fixed_ip


def test_component_wires_key_nodes_backup_and_run_in_order():
    s = settings(bfcacheGeneration=7)
    rec = record(s)
    files = {r.name: r for r in rec.of_type("idr:host:HostFiles")}
    assert set(files) == {"test-bfcache-key", "test-bfcache-ids", "test-bfcache-backup", "test-bfcache-run",
                          "test-bfcache-forget", "test-bfcache-node-omeroreadwrite"} | {
        f"test-bfcache-node-omeroreadonly-{n}" for n in (1, 2, 3)}
    assert files["test-bfcache-forget"].inputs["host"] == "test-proxy"
    assert not [r for r in rec.resources if "-revoke-" in r.name]
    assert files["test-bfcache-run"].inputs["host"] == "test-proxy"
    assert files["test-bfcache-run"].inputs["run"].endswith("start.sh 7")
    assert files["test-bfcache-backup"].inputs["host"] == "test-omeroreadwrite"
    assert files["test-bfcache-ids"].inputs["host"] == "test-database"
    trust = {r.name: r for r in rec.of_type("command:remote:Command") if "-trust-" in r.name}
    assert set(trust) == {"test-bfcache-trust-omeroreadwrite", "test-bfcache-trust-database"} | {
        f"test-bfcache-trust-omeroreadonly-{n}" for n in (1, 2, 3)}
    for r in trust.values():
        assert r.inputs["update"] == "cat > /dev/null"   # a new connection re-runs nothing
        # No delete: generation 0 revokes with its own steps (a delete would
        # also run on a replacement, after the new step's create).
        assert "delete" not in r.inputs
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
    assert files["test-bfcache-ids"].inputs["run"] == render.database_run()


def test_a_deployment_generation_bump_reruns_the_steps_that_wait_for_its_software():
    def triggers(**raw):
        rec = record(settings(bfcacheGeneration=7, **raw))
        return {r.name: r.inputs["triggers"] for r in rec.of_type("command:remote:Command")}
    base, bumped = triggers(deploymentGeneration=4), triggers(deploymentGeneration=5)
    waiting = {"test-bfcache-ids", "test-bfcache-run"} | {
        f"test-bfcache-node-{n}" for n in ["omeroreadwrite"] + [f"omeroreadonly-{i}" for i in (1, 2, 3)]}
    assert {n for n in base if base[n] != bumped[n]} == waiting
    for n in waiting:
        assert 4 in base[n] and 5 in bumped[n]


# ---------------------------------------- deployment software: wait or fail

def node_setup(tmp_path: Path, omero: Path, enabled: str) -> Path:
    s = settings(omeroBin=str(omero), deploymentEnabled=enabled, omeroCliRenderVersion="0.8.1")
    (text,) = [f.content for f in render.node_files(s, layout.host(s, "omeroreadwrite")) if f.path.endswith("node-setup.sh")]
    return write(tmp_path / "node-setup.sh", text.replace(f"ready_file={render.NODE_READY}",
                                                         f"ready_file={tmp_path}/ready/node-ready"))


def test_missing_omero_fails_the_node_step_or_waits_on_one_line(tmp_path):
    missing = tmp_path / "no/omero"
    failed = subprocess.run([str(node_setup(tmp_path, missing, "true"))], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.splitlines() == [f"bfcache: {missing} is missing on test-omeroreadwrite: IDR's deployment "
                                          "playbooks have not installed OMERO.server here"]
    waiting = subprocess.run([str(node_setup(tmp_path, missing, "false"))], capture_output=True, text=True)
    assert waiting.returncode == 0 and waiting.stderr == ""
    assert waiting.stdout.splitlines() == ["waiting for omero on test-omeroreadwrite: install it, then bump "
                                           "idr:deploymentGeneration and run pulumi up"]
    assert not (tmp_path / "ready").exists()


def test_missing_psql_fails_the_database_step_or_waits_on_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool_name in ("bash", "env"):
        os.symlink(subprocess.run(["which", tool_name], capture_output=True, text=True).stdout.strip(),
                   bin_dir / tool_name)
    for enabled, rc, stream, line in (
            ("true", 1, "stderr", "bfcache: psql is missing on test-database: IDR's deployment playbooks have not "
                                  "installed PostgreSQL here"),
            ("false", 0, "stdout", "waiting for psql on test-database: install it, then bump idr:deploymentGeneration "
                                   "and run pulumi up")):
        s = settings(deploymentEnabled=enabled)
        (text,) = [f.content for f in render.database_files(s) if f.path.endswith("db-setup.sh")]
        out = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env={"PATH": str(bin_dir)})
        assert out.returncode == rc and getattr(out, stream).splitlines() == [line]
    (bin_dir / "psql").symlink_to("/bin/true")
    out = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env={"PATH": str(bin_dir)})
    assert out.returncode == 0 and "can answer the ID query" in out.stdout


def wheel(directory: Path, version: str) -> Path:
    """A minimal wheel of `omero-cli-render` VERSION (for a local, offline index)."""
    name = f"omero_cli_render-{version}"
    path = directory / f"{name}-py3-none-any.whl"
    files = {f"omero_cli_render_stub/__init__.py": f"VERSION = {version!r}\n",
             f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: omero-cli-render\nVersion: {version}\n",
             f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{name}.dist-info/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{name}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def test_node_setup_installs_exactly_the_pinned_omero_cli_render_and_marks_the_node_ready(tmp_path):
    """Real pip into a real virtualenv (omero next to its python, as OMERO's
    venv has it), from a local index holding an older and a newer release."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    omero = write(venv / "bin/omero", "#!/bin/sh\nexit 0\n")
    index = tmp_path / "index"
    index.mkdir()
    for version in ("0.8.0", "0.8.1", "0.9.0"):
        wheel(index, version)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def installed():
        out = subprocess.run([str(venv / "bin/python"), "-m", "pip", "show", "omero-cli-render"],
                             capture_output=True, text=True)
        return next((l.split()[1] for l in out.stdout.splitlines() if l.startswith("Version:")), None)

    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "omero-cli-render==0.9.0"],
                   check=True, env=env)
    script = node_setup(tmp_path, omero, "true")
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert installed() == "0.8.1"
    assert (tmp_path / "ready/node-ready").read_text() == "omero-cli-render 0.8.1\n"
    # Run again: nothing to install (pip would fail without the index).
    out = subprocess.run([str(script)], capture_output=True, text=True, env={**env, "PIP_FIND_LINKS": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert installed() == "0.8.1"


# ---------------------------------------- the public user's password

def test_jobs_log_in_as_public_with_the_password_the_deployment_wrote(tmp_path):
    """render-one reads the password the post-install step wrote
    (components/playbooks/postinstall.yml, the same default path), and
    OMERO.web's default 'public' only where that file is absent."""
    playbook = yaml.safe_load((Path(render.__file__).parent.parent / "playbooks/postinstall.yml").read_text())
    assert render.PUBLIC_PASSWORD_FILE in playbook[1]["vars"]["password_file"]
    s = settings()
    files = {f.path: f.content for f in render.node_files(s, layout.host(s, "omeroreadwrite"))}
    assert f"public_password_file={render.PUBLIC_PASSWORD_FILE}\n" in files[render.NODE_CONF]
    assert "-w public" not in files[f"{render.LIBEXEC}/render-one.sh"]
    omero = write(tmp_path / "omero", '#!/bin/sh\nprintf "%s\\n" "$*" >> "$(dirname "$0")/calls"\necho "ok: $*"\n')
    password_file = tmp_path / "public-password"
    script = render_one(tmp_path, omero, str(password_file))
    for content, expected in ((None, "public"), ("s3cret pass\n", "s3cret pass")):
        if content is not None:
            password_file.write_text(content)
        (tmp_path / "calls").unlink(missing_ok=True)
        out = subprocess.run([str(script), "42"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "calls").read_text() == f"render -s localhost -u public -w {expected} test --force Image:42\n"


def test_omeros_output_is_a_file_on_tmpfs_of_the_lane_alone_and_removed_when_the_lane_ends(tmp_path):
    """Each image truncates and rewrites omero's output file: on tmpfs (where
    there is one), mode 0600, one file for the whole lane, gone at its end."""
    assert Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)
    omero = write(tmp_path / "omero", f"""#!/bin/bash
out=$(readlink /proc/$$/fd/1)
echo "$out $(stat -f -c %T "$out") $(stat -c %a "$out")" >> {tmp_path}/outs
echo "ok: Pixel:1 0.1"
""")
    script = render_one(tmp_path, omero)
    out = subprocess.run([str(script), "1", "2", "3"], capture_output=True, text=True,
                         env={**os.environ, "BFCACHE_NODE": "n1"})
    assert out.returncode == 0, out.stderr
    assert [line.split(",")[:3] for line in out.stdout.splitlines()] == [[i, "n1", "ok"] for i in ("1", "2", "3")]
    seen = {tuple(line.split()) for line in (tmp_path / "outs").read_text().splitlines()}
    assert len(seen) == 1, seen
    ((path, fs, mode),) = seen
    assert path.startswith("/dev/shm/bfcache-render-one.") and fs == "tmpfs" and mode == "600"
    assert not Path(path).exists()


def test_a_hung_omero_is_stopped_after_job_timeout_and_the_lane_goes_on(tmp_path):
    """The lane's watchdog (no `timeout` per image): an omero running longer
    than job_timeout_seconds is stopped, its image fails, the next runs."""
    omero = write(tmp_path / "omero", f'#!/bin/bash\ncase "${{!#}}" in Image:1) exec sleep 30 ;; esac\necho "ok: x"\n')
    script = render_one(tmp_path, omero)
    conf = tmp_path / "node.conf"
    conf.write_text(conf.read_text().replace(f"job_timeout_seconds={render.JOB_TIMEOUT_SECONDS}\n",
                                             "job_timeout_seconds=1\n").replace("attempts=3\n", "attempts=1\n"))
    t0 = time.monotonic()
    out = subprocess.run([str(script), "1", "2"], capture_output=True, text=True, timeout=25,
                         env={**os.environ, "BFCACHE_NODE": "n1"})
    assert [line.split(",")[:3] for line in out.stdout.splitlines()] == [["1", "n1", "fail"], ["2", "n1", "ok"]]
    assert out.returncode == 1 and "ran longer than 1 s: stopped" in out.stderr
    assert time.monotonic() - t0 < 10


# ---------------------------------------- a running environment

def test_new_shipped_programs_on_a_running_prod_rerun_only_the_regeneration_install_steps(monkeypatch):
    """prod regenerating (generation 1), deployed with other versions of the
    shipped programs, then updated: the coordinator's run step and each
    node's step run again (they install the files; start.sh refuses a
    finished generation and leaves a running one alone) and nothing else
    changes: no server, volume, port or rule, no other step."""
    from components.hostfiles import TYPE as HOSTFILES
    from components.offline import run_stack
    real = render.shipped

    def older(name, path):
        f = real(name, path)
        return type(f)(f.path, f.content + "# an older version\n", f.mode)

    monkeypatch.setattr(render, "shipped", older)
    first = run_stack("prod", {"bfcacheGeneration": "1"})
    monkeypatch.setattr(render, "shipped", real)
    after = run_stack("prod", {"bfcacheGeneration": "1"}, deployed=first.outputs)
    changed = {(r.type, r.name) for r in after.resources
               if (b := first.by_urn(r.urn)) is None or b.inputs != r.inputs}
    steps = {"prod-bfcache-run"} | {r.name for r in after.resources if r.name.startswith("prod-bfcache-node-")}
    assert len(steps) == 6   # the coordinator, omeroreadwrite and prod's four omeroreadonly
    assert changed == {(t, n) for t in (HOSTFILES, "command:remote:Command") for n in steps}


def test_a_reinstalled_program_is_a_new_file_a_running_lane_keeps_reading_the_old_one(tmp_path):
    """The install step (install(1)) replaces a file by a new one: a bash
    running render-one.sh reads its script as it goes, and keeps the old
    text, never a mix of the two."""
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    path = f"{render.LIBEXEC}/render-one.sh"
    env = {**os.environ, "IDR_ROOT": str(tmp_path)}
    old = render.HostFile(path, "#!/bin/bash\n# old\n", "0755")
    subprocess.run(["bash", "-c", install_script(host, [old])], check=True, env=env)
    with open(f"{tmp_path}{path}") as running:
        subprocess.run(["bash", "-c", install_script(host, [render.shipped("render-one.sh", path)])], check=True,
                       env=env)
        assert running.read() == old.content
        assert os.fstat(running.fileno()).st_ino != os.stat(f"{tmp_path}{path}").st_ino
    assert Path(f"{tmp_path}{path}").read_text() == (render.FILES / "render-one.sh").read_text()
