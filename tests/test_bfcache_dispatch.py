"""The dispatcher's decision itself: the rendered dispatch.py loaded as a
module, its plan made by its own `plan` from a fabricated ID list and
results, and `choose` asked for one lane at a time. Every number here is
exact: what the real run (tests/integration/test_bfcache_run.py) can only
show through timing, this shows deterministically."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from components.render import bfcache as render
from tests.test_bfcache_render import settings

# The cluster of the real-run test: omeroreadwrite with 3 lanes, two
# omeroreadonly nodes with 1 lane each (starting value: 10x slower).
CLUSTER = settings(omeroreadonlyCount=2, bfcacheSlots='["omeroreadwrite=3", "omeroreadonly=1"]')
RW, RO1, RO2 = (n.address for n in render.nodes(CLUSTER))

# Still to do, largest first: a plate and a big fileset for the fast lanes,
# X (what a slow node takes with the starting value's 10x) and smaller ones.
PLATE, BIG, X, MID, Y, SMALL, TINY = (101, 1200), (102, 400), (103, 40), (104, 20), (105, 10), (106, 5), (107, 1)
PENDING = [PLATE, BIG, X, MID, Y, SMALL, TINY]


def dispatcher(tmp_path: Path):
    """The rendered dispatch.py as a fresh module, its node list and node
    info (rendered too) in tmp_path."""
    files = {f.path: f.content for f in render.coordinator_files(CLUSTER)}
    path = tmp_path / "dispatch_under_test.py"
    path.write_text(files[f"{render.LIBEXEC}/dispatch.py"])
    spec = importlib.util.spec_from_file_location("dispatch_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, attribute in (("nodes", "NODES_FILE"), ("node-info", "NODE_INFO")):
        (tmp_path / name).write_text(files[f"{render.CONF_DIR}/{name}"])
        setattr(module, attribute, str(tmp_path / name))
    assert module.nodes() == {RW: ("test-omeroreadwrite", 1.0, 3), RO1: ("test-omeroreadonly-1", 10.0, 1),
                              RO2: ("test-omeroreadonly-2", 10.0, 1)}
    return module


class Run:
    """A run directory whose earlier invocation left these results: ten
    filesets of 95 images (100 cost units each) on rw at 1 s a unit, one on
    ro2 at 10 s a unit (its starting value), one on ro1 in `ro1_seconds`."""

    def __init__(self, tmp_path: Path, module, ro1_seconds: float):
        self.module, self.dir = module, tmp_path / "run"
        self.dir.mkdir(parents=True)
        done = [(i, RW, 100.0) for i in range(1, 11)] + [(11, RO1, ro1_seconds), (12, RO2, 1000.0)]
        (self.dir / "ids.txt").write_text("".join(f"{i}|95\n" for i, _, _ in done)
                                          + "".join("%d|%d\n" % r for r in PENDING))
        self.results = "".join(f"{i},{node},ok,{seconds:.3f},95\n" for i, node, seconds in done)
        (self.dir / "results.csv").write_text(self.results)

    def plan(self) -> dict:
        """dispatch.py plan: a new pass (nothing handed out); its state."""
        self.module.plan(str(self.dir), len(self.results), False)
        return json.loads((self.dir / "dispatch.json").read_text())

    def choose(self, state: dict, node: str, ahead: float = 0.0):
        with open(self.dir / "plan", "rb") as plan, open(self.dir / "taken", "r+b") as taken:
            return self.module.choose(state, plan, taken, node, self.module.nodes(), {}, 0.0, ahead)

    def untaken(self, record) -> bool:
        return (self.dir / "taken").read_bytes()[PENDING.index(record)] == 0


def cost(record) -> int:
    return record[1] + 5     # JOB_BASE


def test_a_slowed_node_leaves_to_faster_lanes_what_it_would_take_at_an_equal_speed(tmp_path, capsys):
    module = dispatcher(tmp_path)
    assert module.PRIOR_WEIGHT == 20.0 and module.JOB_BASE == 5
    total = sum(cost(r) for r in PENDING)

    # Equal learned speeds (ro1 as fast as ro2): both would take X.
    equal = Run(tmp_path / "equal", module, ro1_seconds=1000.0)
    state = equal.plan()
    assert capsys.readouterr().out == f"{len(PENDING)}\n"   # the done images are not planned again
    assert state["speed"] == {RW: [1000.0, 1000.0], RO1: [1000.0, 100.0], RO2: [1000.0, 100.0]}
    assert module.speeds(state, module.nodes()) == pytest.approx({RW: 1.0, RO1: 10.0, RO2: 10.0})
    left = total / (3 / 1.0 + 1 / 10.0 + 1 / 10.0)       # seconds until the unhanded work is done
    for node in (RO1, RO2):
        source, batch, note, took = equal.choose(equal.plan(), node)
        assert (source, batch, took) == ("fit", [X], pytest.approx(cost(X) * 10.0))
        assert note == "10 s/unit, %.4g s left, 450 s planned, 0 s ahead, 10 s/unit start" % left

    # ro1's results: four times slower than ro2. Its speed is that measure
    # blended with the starting value (base x 10, base now 2 s a unit),
    # worth PRIOR_WEIGHT cost units.
    slowed = Run(tmp_path / "slowed", module, ro1_seconds=4000.0)
    state = slowed.plan()
    assert state["speed"][RO1] == [4000.0, 100.0]
    base = (1000 + 4000 + 1000) / (1000 * 1 + 100 * 10 + 100 * 10)
    w = module.PRIOR_WEIGHT
    f = {RW: (1000 + w * base * 1) / (1000 + w), RO1: (4000 + w * base * 10) / (100 + w),
         RO2: (1000 + w * base * 10) / (100 + w)}
    assert module.speeds(state, module.nodes()) == pytest.approx(f)
    assert f[RO1] == pytest.approx(36.667, rel=1e-4) and f[RO2] == pytest.approx(11.667, rel=1e-4)
    left = total / (3 / f[RW] + 1 / f[RO1] + 1 / f[RO2])

    # ro1 takes the largest fileset it finishes, at its learned speed,
    # before the rest is done: Y, not X (nor MID); X stays (pinned).
    source, batch, note, took = slowed.choose(state, RO1)
    assert (source, batch) == ("fit", [Y])
    assert took == pytest.approx(cost(Y) * f[RO1])
    assert note == "%.4g s/unit, %.4g s left, %.4g s planned, 0 s ahead, %.4g s/unit start" % (
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
    module = dispatcher(tmp_path)
    run = Run(tmp_path, module, ro1_seconds=4000.0)
    state = run.plan()
    f = module.speeds(state, module.nodes())
    left = sum(cost(r) for r in PENDING) / sum(module.nodes()[a][2] / f[a] for a in f)
    # ro2 with work queued that ends when only 30 cost units' time is left:
    # X (45) no longer fits, MID (25) does.
    ahead = left - 30 * f[RO2]
    source, batch, note, took = run.choose(state, RO2, ahead)
    assert (source, batch) == ("fit", [MID])
    assert note.split(", ")[3] == "%.4g s ahead" % ahead
    # Nothing fits in what is left after the queue: the lane waits.
    assert run.choose(run.plan(), RO2, left)[:2] == ("idle", [])


def test_the_fast_class_takes_from_the_head_until_drained(tmp_path):
    module = dispatcher(tmp_path)
    run = Run(tmp_path, module, ro1_seconds=4000.0)
    state = run.plan()
    handed = []
    for _ in PENDING:
        source, batch, *_ = run.choose(state, RW)
        assert source == "head"
        handed += batch
    # Largest first, each once (each is longer than a request's target).
    assert handed == PENDING
    assert state["remaining"] == 0 and state["left"] == 0
    assert run.choose(state, RW) == ("drained", [], 0, 0.0)
    assert run.choose(state, RO1) == ("drained", [], 0, 0.0)
