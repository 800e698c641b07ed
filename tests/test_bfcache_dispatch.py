"""The dispatcher itself, imported as the module that ships
(components/files/bfcache/dispatch.py): its state loaded by its own reader
from a fabricated ID list and results, and `choose` asked for one lane at a
time. Every number here is exact: what the real run
(tests/integration/test_bfcache_run.py) can only show through timing, this
shows deterministically."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from components.files.bfcache import dispatch
from components.render import bfcache as render
from tests.support.settings import bfcache_settings as settings

# The cluster of the real-run test: omeroreadwrite with 3 lanes, two
# omeroreadonly nodes with 1 lane each (starting value: 10x slower).
CLUSTER = settings(omeroreadonlyCount=2, bfcacheSlots='["omeroreadwrite=3", "omeroreadonly=1"]')
RW, RO1, RO2 = (n.address for n in render.nodes(CLUSTER))

# Still to do, largest first: a plate and a big fileset for the fast lanes,
# X (what a slow node takes with the starting value's 10x) and smaller ones.
PLATE, BIG, X, MID, Y, SMALL, TINY = (101, 1200), (102, 400), (103, 40), (104, 20), (105, 10), (106, 5), (107, 1)
PENDING = [PLATE, BIG, X, MID, Y, SMALL, TINY]


def nodes(tmp_path: Path) -> dict:
    """The rendered nodes file, read by the dispatcher's own reader."""
    files = {f.path: f.content for f in render.coordinator_files(CLUSTER)}
    path = tmp_path / "nodes"
    path.write_text(files[f"{render.CONF_DIR}/nodes"])
    every = dispatch.read_nodes(str(path))
    assert [(n.address, n.alias, n.prior, n.slots) for n in every.values()] == [
        (RW, "omeroreadwrite", 1.0, 3), (RO1, "omeroreadonly-1", 10.0, 1), (RO2, "omeroreadonly-2", 10.0, 1)]
    return every


class Run:
    """A run directory whose earlier invocation left these results: ten
    filesets of 95 images (100 cost units each) on rw at 1 s a unit, one on
    ro2 at 10 s a unit (its starting value), one on ro1 in `ro1_seconds`."""

    def __init__(self, tmp_path: Path, every: dict, ro1_seconds: float):
        self.every, self.dir = every, tmp_path / "run"
        self.dir.mkdir(parents=True)
        done = [(i, RW, 100.0) for i in range(1, 11)] + [(11, RO1, ro1_seconds), (12, RO2, 1000.0)]
        (self.dir / "ids.txt").write_text("".join(f"{i}|95\n" for i, _, _ in done)
                                          + "".join("%d|%d\n" % r for r in PENDING))
        self.results = "".join(f"{i},{node},ok,{seconds:.3f},95\n" for i, node, seconds in done)
        (self.dir / "results.csv").write_text(self.results)

    def plan(self) -> dispatch.State:
        """The dispatcher's reader on the run directory: a new invocation
        (nothing handed out), speeds learned from the results so far."""
        self.state = dispatch.load(str(self.dir), retry=False)
        for line in self.results.encode().splitlines(keepends=True):
            _, node, status, seconds, images = dispatch.parse_result(line)
            self.state.learn(node, status, seconds, images)
        return self.state

    def choose(self, state: dispatch.State, node: str, ahead: float = 0.0):
        return dispatch.choose(state, node, self.every, {}, 0.0, ahead)

    def untaken(self, record) -> bool:
        return self.state.taken[PENDING.index(record)] == 0


def cost(record) -> int:
    return record[1] + 5     # JOB_BASE


def test_a_slowed_node_leaves_to_faster_lanes_what_it_would_take_at_an_equal_speed(tmp_path, capsys):
    every = nodes(tmp_path)
    module = dispatch
    assert module.PRIOR_WEIGHT == 20.0 and module.JOB_BASE == 5
    total = sum(cost(r) for r in PENDING)

    # Equal learned speeds (ro1 as fast as ro2): both would take X.
    equal = Run(tmp_path / "equal", every, ro1_seconds=1000.0)
    state = equal.plan()
    assert state.plan == PENDING and state.remaining == len(PENDING)   # the done images are not planned again
    assert state.planned == 12 + len(PENDING) and state.images_left() == len(PENDING)
    assert state.speed == {RW: [1000.0, 1000.0], RO1: [1000.0, 100.0], RO2: [1000.0, 100.0]}
    assert module.speeds(state, every) == pytest.approx({RW: 1.0, RO1: 10.0, RO2: 10.0})
    left = total / (3 / 1.0 + 1 / 10.0 + 1 / 10.0)       # seconds until the unhanded work is done
    for node in (RO1, RO2):
        source, batch, note, took = equal.choose(equal.plan(), node)
        assert (source, batch, took) == ("fit", [X], pytest.approx(cost(X) * 10.0))
        assert note == "10 s/unit, %.4g s left, 0 s longest, 450 s planned, 0 s ahead, 10 s/unit start" % left

    # ro1's results: four times slower than ro2. Its speed is that measure
    # blended with the starting value (base x 10, base now 2 s a unit),
    # worth PRIOR_WEIGHT cost units.
    slowed = Run(tmp_path / "slowed", every, ro1_seconds=4000.0)
    state = slowed.plan()
    assert state.speed[RO1] == [4000.0, 100.0]
    base = (1000 + 4000 + 1000) / (1000 * 1 + 100 * 10 + 100 * 10)
    w = module.PRIOR_WEIGHT
    f = {RW: (1000 + w * base * 1) / (1000 + w), RO1: (4000 + w * base * 10) / (100 + w),
         RO2: (1000 + w * base * 10) / (100 + w)}
    assert module.speeds(state, every) == pytest.approx(f)
    assert f[RO1] == pytest.approx(36.667, rel=1e-4) and f[RO2] == pytest.approx(11.667, rel=1e-4)
    left = total / (3 / f[RW] + 1 / f[RO1] + 1 / f[RO2])

    # ro1 takes the largest fileset it finishes, at its learned speed,
    # before the rest is done: Y, not X (nor MID); X stays (pinned).
    source, batch, note, took = slowed.choose(state, RO1)
    assert (source, batch) == ("fit", [Y])
    assert took == pytest.approx(cost(Y) * f[RO1])
    assert note == "%.4g s/unit, %.4g s left, 0 s longest, %.4g s planned, 0 s ahead, %.4g s/unit start" % (
        f[RO1], left, cost(Y) * f[RO1], base * 10)
    assert cost(Y) * f[RO1] <= left < cost(MID) * f[RO1] < cost(X) * f[RO1]
    assert cost(X) * 10.0 <= total / 3.2                  # at the equal speeds, X fitted
    assert slowed.untaken(X) and slowed.untaken(MID) and not slowed.untaken(Y)
    # X goes to a faster lane: ro2 (learned 11.67 s a unit) takes it next,
    # the fast node's lanes take from the head.
    assert slowed.choose(state, RO2)[:2] == ("fit", [X])
    assert slowed.choose(state, RW)[:2] == ("head", [PLATE])
    assert slowed.untaken(MID) and slowed.untaken(BIG)


def test_what_a_lane_has_queued_counts_against_what_it_may_take(tmp_path):
    every = nodes(tmp_path)
    run = Run(tmp_path, every, ro1_seconds=4000.0)
    state = run.plan()
    f = dispatch.speeds(state, every)
    left = sum(cost(r) for r in PENDING) / sum(every[a].slots / f[a] for a in f)
    # ro2 with work queued that ends when only 30 cost units' time is left:
    # X (45) no longer fits, MID (25) does.
    ahead = left - 30 * f[RO2]
    source, batch, note, took = run.choose(state, RO2, ahead)
    assert (source, batch) == ("fit", [MID])
    assert note.split(", ")[4] == "%.4g s ahead" % ahead
    # Nothing fits in what is left after the queue: the lane waits.
    assert run.choose(run.plan(), RO2, left)[:2] == ("idle", [])


def test_the_end_counts_the_work_other_lanes_hold_and_the_longest_of_it(tmp_path):
    """A slow lane's room is until the whole run is projected to end: the
    unhanded work plus what the lanes hold (`busy`, cost units), spread over
    every lane, or the lane holding the longest work (`longest`, seconds),
    if later; not until the unhanded work alone is done."""
    every = nodes(tmp_path)
    run = Run(tmp_path, every, ro1_seconds=4000.0)
    state = run.plan()
    f = dispatch.speeds(state, every)
    rate = sum(every[a].slots / f[a] for a in f)
    left = sum(cost(r) for r in PENDING) / rate
    # Queued work ends when only 30 units' time is left: MID fits, X not...
    ahead = left - 30 * f[RO2]
    assert run.choose(run.plan(), RO2, ahead)[:2] == ("fit", [MID])
    # ...unless the other lanes hold 20 units' worth of time of all lanes more.
    busy = 20 * f[RO2] * rate
    source, batch, note, took = dispatch.choose(run.plan(), RO2, every, {}, 0.0, ahead, busy)
    assert (source, batch) == ("fit", [X])
    assert note.split(", ")[1] == "%.4g s left" % ((sum(cost(r) for r in PENDING) + busy) / rate)
    # A lane holding a long fileset makes the end later too: X fits again.
    longest = ahead + cost(X) * f[RO2] + 0.5
    assert dispatch.choose(run.plan(), RO2, every, {}, 0.0, ahead, 0.0, longest)[:2] == ("fit", [X])
    assert dispatch.choose(run.plan(), RO2, every, {}, 0.0, ahead, 0.0, longest - 1.5)[:2] == ("fit", [MID])


def test_the_fast_class_takes_from_the_head_until_drained(tmp_path):
    run = Run(tmp_path, nodes(tmp_path), ro1_seconds=4000.0)
    state = run.plan()
    handed = []
    for _ in PENDING:
        source, batch, *_ = run.choose(state, RW)
        assert source == "head"
        handed += batch
    # Largest first, each once (each is longer than a request's target).
    assert handed == PENDING
    assert state.remaining == 0 and state.left == 0
    assert run.choose(state, RW)[:2] == ("drained", [])
    assert run.choose(state, RO1)[:2] == ("drained", [])


# --- the first hand-out, failures, subsets ------------------------------------

def run_dir(tmp_path: Path, ids: list[tuple[int, int]], results: str = "") -> Path:
    d = tmp_path / "run"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ids.txt").write_text("".join(f"{i}|{n}\n" for i, n in ids))
    (d / "results.csv").write_text(results)
    return d


def test_the_first_hand_out_is_the_largest_fileset_to_the_fast_node_and_a_slow_node_takes_what_fits(tmp_path):
    """A fresh run, nothing learned: whichever lane asks first, the plate
    goes to a fast lane and never to a slow node (the starting values)."""
    every = nodes(tmp_path)
    d = run_dir(tmp_path, [(i, 3) for i in range(1, 40)] + [PLATE, BIG] + [(200 + i, 30) for i in range(20)])
    state = dispatch.load(str(d), retry=False)
    assert state.plan[:2] == [PLATE, BIG] and state.planned == state.remaining == 61
    slow = dispatch.choose(state, RO1, every, {}, 0.0)
    assert slow.source == "fit" and PLATE not in slow.batch and BIG not in slow.batch
    assert dispatch.choose(state, RW, every, {}, 0.0)[:2] == ("head", [PLATE])
    assert dispatch.choose(state, RW, every, {}, 0.0)[:2] == ("head", [BIG])
    # A node that is down gets nothing; the others still do.
    assert dispatch.choose(state, RO2, every, {RO2: 10.0}, 0.0).source == "idle"


def test_resume_plans_what_has_no_ok_result_and_retrying_exactly_the_failures(tmp_path):
    every = nodes(tmp_path)
    ids = [(1, 50), (2, 40), (3, 30), (4, 20), (5, 10)]
    results = (f"1,{RW},ok,1.0,50\n2,{RW},fail,1.0,40\n3,{RO1},cancel,9.0,30\n"
               f"3,{RO1},ok,9.0,30\n4,{RO2},miss,2.0,20\nnot a result\n")
    d = run_dir(tmp_path, ids, results)
    resumed = dispatch.load(str(d), retry=False)
    assert resumed.plan == [(2, 40), (5, 10)] and resumed.images_left() == 2
    assert resumed.per_node == {RW: [1, 1], RO1: [1, 1], RO2: [1, 0]}
    retried = dispatch.load(str(d), retry=True)
    assert retried.plan == [(2, 40)]
    # What a lane held when it died is handed out again, once.
    first = dispatch.choose(retried, RW, every, {}, 0.0)
    assert first.batch == [(2, 40)] and retried.remaining == 0
    retried.give_back(first.batch)
    retried.give_back(first.batch)
    assert retried.remaining == 1 and retried.left == 45
    assert dispatch.choose(retried, RW, every, {}, 0.0).batch == [(2, 40)]


def test_a_subset_is_fetched_with_its_kind_and_ids_and_a_bad_list_is_refused(tmp_path):
    """fetch_ids as the dispatcher runs it, over a stand-in `ssh` that
    records its arguments and stdin and answers as ids.sh would."""
    ssh = tmp_path / "ssh"
    ssh.write_text(f"""#!/bin/bash
printf '%s\\n' "$*" > {tmp_path}/args
cat > {tmp_path}/stdin
cat {tmp_path}/answer
""")
    ssh.chmod(0o755)
    conf = dispatch.Config(state_dir=str(tmp_path), control_dir=str(tmp_path / "cm"), ssh_config="cfg",
                           nodes_file=str(tmp_path / "nodes"), ssh_user="rocky", database_login="rocky@db",
                           render_one="r", max_sessions=10, metrics_file=str(tmp_path / "m.prom"), ssh=str(ssh))
    for subset, args, stdin in (("images\n7\n3\n", "ids images", "7\n3\n"), ("dataset\n51\n", "ids dataset 51", ""),
                                (None, "ids", "")):
        d = tmp_path / "run"
        for p in d.glob("*"):
            p.unlink()
        d.mkdir(exist_ok=True)
        if subset:
            (d / "subset").write_text(subset)
        (tmp_path / "answer").write_text("7|2\n3|1\n")
        run = dispatch.Run(conf, str(d), retry=False)
        assert run.ids_fetched(run.fetch_ids())
        assert (tmp_path / "args").read_text().split()[-len(args.split()):] == args.split()
        assert "ControlPath=none" in (tmp_path / "args").read_text()
        assert (tmp_path / "stdin").read_text() == stdin
        assert (d / "ids.txt").read_text() == "7|2\n3|1\n"
        assert run.fetch_ids() is None          # fetched once per run
    (d / "ids.txt").unlink()
    (tmp_path / "answer").write_text("7|2\nERROR: relation\n")
    run = dispatch.Run(conf, str(d), retry=False)
    assert not run.ids_fetched(run.fetch_ids()) and not (d / "ids.txt").exists()


def test_the_config_both_bash_and_the_dispatcher_read(tmp_path):
    files = {f.path: f.content for f in render.coordinator_files(CLUSTER)}
    path = tmp_path / "bfcache.conf"
    path.write_text(files[render.CONF])
    conf = dispatch.config(str(path))
    assert conf.max_sessions == render.MAX_SESSIONS and conf.metrics_file == render.METRICS_FILE
    assert conf.nodes_file == f"{render.CONF_DIR}/nodes" and conf.ssh_user == "rocky"
    # bash sources the same file to the same values.
    out = os.popen(f"bash -c '. {path}; printf \"%s|\" \"$ready\" \"$waiting_omero\" \"$max_sessions\"'").read()
    values = dispatch.read_conf(str(path))
    assert out == f"{values['ready']}|{values['waiting_omero']}|{values['max_sessions']}|"
    assert values["ready"] == render.ready_marker(CLUSTER)


def test_measured_speeds_decide_who_takes_the_largest_and_what_a_slow_node_may_take():
    plan = [(1, 400), (2, 200), (3, 100)] + [(10 + i, 60 - i) for i in range(60)]
    every = {a: dispatch.Node(a, a, a, "r", prior, lanes) for a, (prior, lanes) in
             {"rw": (1, 10), "ro1": (10, 1), "ro2": (10, 1)}.items()}

    def state(speed=None):
        s = dispatch.State.of(plan)
        s.speed = {a: list(v) for a, v in (speed or {}).items()}
        return s

    def choose(node, s):
        return dispatch.choose(s, node, every, {}, 0.0)

    # Starting values: the fast node takes the largest; a slow one the largest
    # it finishes before the rest is done (the plates stay with the fast node).
    assert choose("rw", state()).batch[0] == (1, 400)
    source, batch, *_ = choose("ro1", state())
    assert source == "fit" and batch[0][1] < 100
    first_fit = batch[0][1]
    # Measured: ro1 is 4x slower than assumed, ro2 as assumed; rw's lanes 1 s a unit.
    measured = {"rw": (1000.0, 1000.0), "ro1": (4000.0, 100.0), "ro2": (1000.0, 100.0)}
    slow1 = choose("ro1", state(measured)).batch
    slow2 = choose("ro2", state(measured)).batch
    assert slow1[0][1] < slow2[0][1] <= first_fit
    assert dispatch.speeds(state(measured), every)["ro1"] > 3 * dispatch.speeds(state(measured), every)["ro2"]
    # Measured the other way round: a read-only node faster per lane than
    # omeroreadwrite takes the largest filesets.
    swapped = {"rw": (3000.0, 1000.0), "ro1": (100.0, 100.0)}
    assert choose("ro1", state(swapped))[:2] == ("head", [(1, 400)])
    # Everything handed out: drained.
    empty = state()
    empty.remaining = 0
    assert choose("rw", empty).source == "drained"


def test_lanes_share_a_master_up_to_max_sessions_and_more_lanes_open_more_masters_at_once(tmp_path):
    """Run's own masters and lanes over a stand-in `ssh` (a master creates its
    ControlPath and waits; a lane reads its images and answers nothing):
    12 lanes of a node with MaxSessions 10 are two masters, opened together,
    each lane on the master of its group; closing ends every one of them."""
    ssh = tmp_path / "ssh"
    ssh.write_text(f"""#!/bin/bash
echo "$$ $*" >> {tmp_path}/calls
for a; do case "$a" in ControlPath=*) cp=${{a#ControlPath=}} ;; esac; done
case " $* " in
    *" -N "*) echo "start $EPOCHREALTIME" >> {tmp_path}/masters; sleep 0.2
              echo "up $EPOCHREALTIME" >> {tmp_path}/masters; echo $$ > "$cp"; exec sleep 30 ;;
    *) exec cat > /dev/null ;;
esac
""")
    ssh.chmod(0o755)
    (tmp_path / "nodes").write_text("10.0.0.1 rw omeroreadwrite omeroreadwrite 1 12\n10.0.0.2 ro omeroreadonly-1 omeroreadonly 10 1\n")
    conf = dispatch.Config(state_dir=str(tmp_path), control_dir=str(tmp_path / "cm"), ssh_config="cfg",
                           nodes_file=str(tmp_path / "nodes"), ssh_user="rocky", database_login="rocky@db",
                           render_one="/x/render-one.sh", max_sessions=10, metrics_file=str(tmp_path / "m.prom"),
                           ssh=str(ssh))
    (tmp_path / "cm").mkdir()
    d = run_dir(tmp_path, [(i, 1) for i in range(1, 200)])
    run = dispatch.Run(conf, str(d), retry=False)
    run.state = dispatch.load(str(d), retry=False)
    run.results_fd = os.open(str(d / "results.csv"), os.O_WRONLY | os.O_APPEND)
    run.refresh_nodes(time.time())
    while run.tend_masters(time.time()):
        time.sleep(0.005)
    assert sorted(run.masters) == [("10.0.0.1", 0), ("10.0.0.1", 1), ("10.0.0.2", 0)]
    # Opened at once: every master's login started before the first one was up.
    events = [line.split() for line in (tmp_path / "masters").read_text().splitlines()]
    starts, ups = [float(t) for e, t in events if e == "start"], [float(t) for e, t in events if e == "up"]
    assert len(starts) == len(ups) == 3 and max(starts) < min(ups)
    groups = sorted((lane.node.alias, lane.number, lane.master.group) for lane in run.lanes)
    assert groups == [("omeroreadonly-1", 0, 0)] + [("omeroreadwrite", n, n // 10) for n in range(12)]
    lane = next(lane for lane in run.lanes if lane.number == 11)
    assert lane.queue                      # work handed out as soon as the lane started
    calls = (tmp_path / "calls").read_text().splitlines()
    assert sum("ControlMaster=yes" in c for c in calls) == 3
    assert all("ControlMaster=no" in c and "BFCACHE_BATCH=- /x/render-one.sh" in c
               for c in calls if "render-one" in c)
    procs = [m.proc for m in run.masters.values()] + [lane.proc for lane in run.lanes]
    run.close()
    assert all(p.poll() is not None for p in procs)
