#!/usr/bin/python3
"""Dispatcher of a Bio-Formats cache run, on the coordinator (the proxy).

    dispatch.py run DIR [--retry-failures]

One process owns the whole run: it opens the nodes' shared SSH connections
(control masters) in parallel while the ID list is fetched, starts every
lane of a node (one SSH session through the node's master, running
render-one.sh, which reads image after image from its stdin) as soon as that
node's master is up, hands out the largest fileset within the first second,
and records each image's result line in results.csv as it arrives (a killed
run loses no finished image; a rerun repeats at most what was in flight).
Exit 0 when every image has a result (failures included), 75 when no node
could be reached for GIVE_UP seconds, 2 on bad input.

Choosing: each node's time per cost unit (cost = images in the fileset +
JOB_BASE) is learned from its own results in this run; the nodes file's
value (omeroreadonly 10x slower) is only the starting value, worth
PRIOR_WEIGHT cost units of evidence. Nodes whose lanes are within FAST_CLASS
of the fastest take the largest filesets first; a slower node takes the
largest fileset it finishes before the rest of the run is projected to end
(larger ones are pinned to faster nodes), so no big fileset runs alone on a
slow node at the end; "the end" is when all work, handed out or not, is
projected to be done, or the longest queued work, if later. A lane asks for
its next request LEAD seconds before what it holds is projected to end (up
to AHEAD short requests queued at its node): the next image is there when
one ends, and no work is committed to a lane earlier than that.

State: `State` is the run's whole in-memory state; `load` is its one reader
(ids.txt and results.csv) and `Run.result`, appending to results.csv, its
one writer. Config: bfcache.conf (shell `key=value`, also sourced by the
shell scripts) and the nodes file, both rendered per host by
components/render/bfcache.py; this file is shipped verbatim.
Python 3.9 (Rocky Linux 9), standard library only.
"""
from __future__ import annotations

import math
import os
import re
import selectors
import shlex
import subprocess
import sys
import time
from collections import deque
from typing import IO, Deque, Dict, List, NamedTuple, Optional, Tuple

CONF = os.environ.get("BFCACHE_CONF", "/etc/idr-bfcache/bfcache.conf")

JOB_BASE = 5             # a fileset's fixed start-up, in images of it
PRIOR_WEIGHT = 20.0      # cost units of evidence the starting speed counts for
FAST_CLASS = 2.0         # lanes at most this much slower than the fastest take the largest
OVERHEAD_PRIOR = 0.005   # seconds between two images of a lane, before any is measured
OVERHEAD_WEIGHT = 3.0    # images of evidence the overhead's starting value counts for
OVERHEAD_SHARE = 0.02    # a request need not be longer than overhead / OVERHEAD_SHARE
DOWN_SECONDS = 30        # a node whose connection failed gets no work for this long
GIVE_UP = 300            # no node reachable and no result for this long: exit 75
AHEAD = 2                # requests queued at a lane: the next starts without a round trip...
AHEAD_SECONDS = 2.0      # ...when what is queued is this short (never behind a long fileset)
LEAD = 0.05              # seconds before a lane's queue ends that its next request is sent (not earlier:
                         # work queued at a lane is committed to it, and at the end that is the ragged tail)
METRICS_EVERY = 1.0      # seconds between two metrics files while results arrive
RATE_WINDOW = 300.0      # seconds of results a node's rate is measured over
CONFIG_EVERY = 2.0       # seconds between two looks at the nodes file (a changed node list)

DONE = ("ok", "fill", "miss")
FAILED = ("fail", "cancel")
RESULT = re.compile(rb"^([0-9]+),([^,\s]+),(ok|fill|miss|fail|cancel),([0-9]+\.?[0-9]*),([0-9]*)\n$")
ID_LINE = re.compile(r"^[0-9]+\|[0-9]+$")
SUBSET_LISTS = ("filesets", "images")

Record = Tuple[int, int]          # (image ID, images in its fileset)


def cost(images: int) -> int:
    return images + JOB_BASE


# --- config -------------------------------------------------------------------

# Plain classes, not dataclasses: importing dataclasses (and inspect) would
# add ~13 ms before the first connection starts.
class Node:
    __slots__ = ("address", "name", "alias", "role", "prior", "slots")

    def __init__(self, address: str, name: str, alias: str, role: str, prior: float, slots: int):
        self.address, self.name, self.alias, self.role = address, name, alias, role
        self.prior = prior          # starting time per image, relative to omeroreadwrite
        self.slots = slots


class Config:
    def __init__(self, state_dir: str, control_dir: str, ssh_config: str, nodes_file: str, ssh_user: str,
                 database_login: str, render_one: str, max_sessions: int, metrics_file: str, ssh: str = "ssh"):
        self.state_dir, self.control_dir, self.ssh_config, self.nodes_file = state_dir, control_dir, ssh_config, \
            nodes_file
        self.ssh_user, self.database_login, self.render_one = ssh_user, database_login, render_one
        self.max_sessions, self.metrics_file, self.ssh = max_sessions, metrics_file, ssh


def read_conf(path: str) -> Dict[str, str]:
    """bfcache.conf: `key=value` lines, values shell-quoted (bash sources it)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            words = shlex.split(value)
            out[key] = words[0] if words else ""
    return out


def config(path: str = CONF) -> Config:
    c = read_conf(path)
    return Config(state_dir=c["state_dir"], control_dir=c["control_dir"], ssh_config=c["ssh_config"],
                  nodes_file=c["nodes_file"], ssh_user=c["ssh_user"], database_login=c["database_login"],
                  render_one=c["render_one"], max_sessions=int(c["max_sessions"]), metrics_file=c["metrics_file"],
                  ssh=c.get("ssh", "ssh"))


def read_nodes(path: str) -> Dict[str, Node]:
    """The nodes file: `address name alias role prior slots` a line, in order."""
    out = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 6 and not fields[0].startswith("#"):
                address, name, alias, role, prior, slots = fields
                out[address] = Node(address, name, alias, role, float(prior), int(slots))
    return out


# --- state ----------------------------------------------------------------------

class State:
    """What is left of a run and what it has learned. `plan` holds the
    images still to do, largest fileset first; `taken[i]` is 1 once plan[i]
    is handed out (0 again if its lane died before its result)."""

    def __init__(self, plan: List[Record], taken: bytearray, index: Dict[int, int], remaining: int = 0,
                 left: float = 0.0, planned: int = 0):
        self.plan, self.taken, self.index = plan, taken, index
        self.head = 0                    # no untaken record before it
        self.remaining = remaining       # untaken records
        self.left = left                 # cost units of the untaken records
        self.speed: Dict[str, List[float]] = {}      # node -> [seconds, cost units] done
        self.overhead = [0.0, 0.0]       # seconds between images, count
        self.planned = planned           # images of the whole run (ids.txt)
        self.done: Dict[int, str] = {}   # image -> last status, this run
        self.per_node: Dict[str, List[int]] = {}     # node -> [ok results, failed results]

    @classmethod
    def of(cls, pending: List[Record]) -> "State":
        pending = sorted(pending, key=lambda r: (-r[1], r[0]))
        return cls(plan=pending, taken=bytearray(len(pending)), index={r[0]: i for i, r in enumerate(pending)},
                   remaining=len(pending), left=float(sum(cost(n) for _, n in pending)), planned=len(pending))

    def learn(self, node: str, status: str, seconds: float, images: Optional[int]) -> None:
        counts = self.per_node.setdefault(node, [0, 0])
        counts[0 if status in DONE else 1] += 1
        if status in DONE and images is not None:
            s = self.speed.setdefault(node, [0.0, 0.0])
            s[0] += seconds
            s[1] += cost(images)

    def give_back(self, batch: List[Record]) -> None:
        """A lane ended before these results: they are to do again."""
        for image, images in batch:
            i = self.index[image]
            if self.taken[i]:
                self.taken[i] = 0
                self.remaining += 1
                self.left += cost(images)
                self.head = min(self.head, i)

    def images_left(self) -> int:
        return self.planned - sum(1 for s in self.done.values() if s in DONE)


def parse_result(line: bytes) -> Optional[Tuple[int, str, str, float, Optional[int]]]:
    m = RESULT.match(line)
    if not m:
        return None
    return (int(m.group(1)), m.group(2).decode(), m.group(3).decode(), float(m.group(4)),
            int(m.group(5)) if m.group(5) else None)


def load(directory: str, retry: bool) -> State:
    """The one reader: the run's ID list and every result so far. To do: each
    image without an ok/fill/miss result (retrying: whose last result is
    fail or cancel). Speeds are learned afresh in each invocation (a node
    may have changed); counts per node are the run's."""
    ids: List[Record] = []
    with open(os.path.join(directory, "ids.txt")) as f:
        for line in f:
            image, images = line.strip().split("|")
            ids.append((int(image), int(images)))
    last: Dict[int, str] = {}
    per_node: Dict[str, List[int]] = {}
    try:
        with open(os.path.join(directory, "results.csv"), "rb") as results:
            for raw in results:
                r = parse_result(raw)
                if r:
                    last[r[0]] = r[2]
                    per_node.setdefault(r[1], [0, 0])[0 if r[2] in DONE else 1] += 1
    except FileNotFoundError:
        pass
    wanted = (lambda s: s in FAILED) if retry else (lambda s: s not in DONE)
    state = State.of([r for r in ids if wanted(last.get(r[0]))])
    state.planned = len(ids)
    state.done = {i: last[i] for i, _ in ids if i in last}
    state.per_node = per_node
    return state


# --- the decision ---------------------------------------------------------------

class Choice(NamedTuple):
    source: str              # head, fit, idle or drained
    batch: List[Record]
    note: str                # the log's note (idle: seconds to wait, as text)
    took: float              # seconds planned (idle: seconds to wait)


def starts(state: State, nodes: Dict[str, Node]) -> Dict[str, float]:
    """Each node's starting value in seconds per cost unit: its prior times
    one omeroreadwrite lane as measured over all nodes so far."""
    measured = [(state.speed[a], nodes[a].prior) for a in nodes if a in state.speed]
    seconds = sum(t for (t, _), _ in measured)
    scaled = sum(c * prior for (_, c), prior in measured)
    base = seconds / scaled if scaled > 0 else 1.0   # one omeroreadwrite lane
    return {a: base * n.prior for a, n in nodes.items()}


def speeds(state: State, nodes: Dict[str, Node]) -> Dict[str, float]:
    """Seconds per cost unit of one lane of each node: measured, pulled
    towards the starting value while a node has few results."""
    out = {}
    for a, start in starts(state, nodes).items():
        t, c = state.speed.get(a, (0.0, 0.0))
        out[a] = (t + PRIOR_WEIGHT * start) / (c + PRIOR_WEIGHT)
    return out


def first_at_most(state: State, lo: int, hi: int, most: float) -> int:
    """First index in [lo, hi) whose cost is at most `most` (costs descend)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(state.plan[mid][1]) <= most:
            hi = mid
        else:
            lo = mid + 1
    return lo


def choose(state: State, node: str, nodes: Dict[str, Node], down: Dict[str, float], now: float,
           ahead: float = 0.0, busy: float = 0.0, longest: float = 0.0) -> Choice:
    """The next request for a lane of `node` that has `ahead` seconds of work
    queued; `busy`: cost units handed out and not done, all lanes; `longest`:
    seconds until the lane with the most queued work is done. Marks what it
    hands out as taken."""
    if state.remaining <= 0:
        return Choice("drained", [], "", 0.0)
    live = [a for a in nodes if nodes[a].slots > 0 and down.get(a, 0) <= now]
    if node not in live:
        return Choice("idle", [], "5", 5.0)
    f = speeds(state, nodes)
    rate = sum(nodes[a].slots / f[a] for a in live)     # cost units per second, all lanes
    left = (state.left + busy) / rate                    # seconds until all work is done, spread over all lanes
    s, n = state.overhead
    overhead = (s + OVERHEAD_WEIGHT * OVERHEAD_PRIOR) / (n + OVERHEAD_WEIGHT)
    # A request's length: long enough that the overhead is a small share of
    # it, but no longer than sqrt(2 x time left x overhead), which minimises
    # time lost to overheads plus the ragged end of the last requests.
    target = min(overhead / OVERHEAD_SHARE, math.sqrt(2 * left * overhead))
    mine = f[node]
    total = len(state.plan)
    while state.head < total and state.taken[state.head]:
        state.head += 1
    if mine <= FAST_CLASS * min(f[a] for a in live):
        # The fastest lanes: the largest filesets first.
        source, i, limit = "head", state.head, target
    else:
        # A slower lane: the largest fileset it finishes (after what it has
        # queued) before the rest is done; larger ones are left (pinned) to
        # faster lanes.
        room = max(left, longest) - ahead
        source, limit = "fit", min(target, room)
        i = first_at_most(state, state.head, total, room / mine)
    batch: List[Record] = []
    took = 0.0
    while i < total:
        if not state.taken[i]:
            image, images = state.plan[i]
            t = cost(images) * mine
            if batch and took + t > limit:
                break
            batch.append((image, images))
            took += t
            state.taken[i] = 1
        i += 1
    if not batch:
        wait = min(max(left * 0.05, 0.2), 10.0)
        return Choice("idle", [], "%.3g" % wait, wait)
    state.remaining -= len(batch)
    state.left -= sum(cost(images) for _, images in batch)
    # The log shows what the fit rule used (its room: max(left, longest) -
    # ahead) and the starting value (what the node's own results changed).
    return Choice(source, batch, "%.4g s/unit, %.4g s left, %.4g s longest, %.4g s planned, %.4g s ahead, "
                  "%.4g s/unit start" % (mine, left, longest, took, ahead, starts(state, nodes)[node]), took)


# --- processes ------------------------------------------------------------------

# A master gets SIGTERM when the dispatcher dies, however it dies (kill -9
# included), so no ssh outlives the run. setpriv (util-linux) sets it before
# exec: a preexec_fn doing it would make Popen fork the whole interpreter
# (~2 ms a master, one after the other, before any handshake begins).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--")


class Master:
    """A node's shared connection number `group` (one per max_sessions lanes)."""

    def __init__(self, run: "Run", node: Node, group: int):
        self.run, self.node, self.group = run, node, group
        self.path = os.path.join(run.conf.control_dir, "%s-%d" % (node.address, group))
        self.proc: Optional[subprocess.Popen] = None
        self.check: Optional[subprocess.Popen] = None
        self.ready = False
        self.reused = False
        self.retry_at = 0.0             # after a failure: when to try again

    def options(self) -> List[str]:
        return ["-F", self.run.conf.ssh_config, "-o", "ControlPath=" + self.path]

    def start(self) -> None:
        """A socket left by an earlier run is asked (`ssh -O check`, no
        connection): alive, it is reused; stale, it is replaced."""
        self.ready = False
        if os.path.exists(self.path):
            self.check = subprocess.Popen([self.run.conf.ssh, *self.options(), "-O", "check",
                                           self.run.login(self.node)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        else:
            self.open()

    def open(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.proc = subprocess.Popen(
            [*DIE_WITH_PARENT, self.run.conf.ssh, *self.options(), "-o", "ControlMaster=yes", "-o",
             "ControlPersist=no", "-N", self.run.login(self.node)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def poll(self) -> Optional[bool]:
        """True once usable, False if it failed, None while connecting."""
        if self.ready:
            return True
        if self.check is not None:
            rc = self.check.poll()
            if rc is None:
                return None
            self.check = None
            if rc == 0:
                self.ready = self.reused = True
                return True
            self.open()
        if self.proc is None or self.proc.poll() is not None:
            return False
        if os.path.exists(self.path):   # ssh listens once the login succeeded
            self.ready = True
            return True
        return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        elif self.ready and self.reused:
            subprocess.run([self.run.conf.ssh, *self.options(), "-O", "exit", self.run.login(self.node)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ready = False


class Lane:
    """One session on a node running render-one.sh, image after image."""

    def __init__(self, run: "Run", node: Node, number: int, master: Master):
        self.node, self.number, self.master = node, number, master
        remote = "BFCACHE_NODE=%s BFCACHE_BATCH=- %s" % (shlex.quote(node.address), shlex.quote(run.conf.render_one))
        # No preexec_fn (Popen can then vfork): a lane's ssh needs no
        # death signal, it ends with the dispatcher on its own (its stdin
        # closes, its next result line meets a closed pipe).
        self.proc = subprocess.Popen(
            [run.conf.ssh, *master.options(), "-o", "ControlMaster=no", run.login(node), "--", remote],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self.stdin: IO[bytes] = self.proc.stdin
        self.out = self.proc.stdout.fileno()
        self.buffer = b""
        self.queue: List[List] = []      # requests at the node, oldest first: [set of images, seconds, batch]
        self.closing = False              # stdin closed: no more work
        self.retired = False              # its node left the list or has fewer slots: no new work
        self.next_ask = 0.0
        self.since = 0.0                  # when the lane's current image began (time.time())
        self.last: Optional[float] = None
        self.started = time.monotonic()
        self.images = self.got = 0
        self.work = 0.0

    def queued(self) -> float:
        return sum(q[1] for q in self.queue)

    def projected(self, now: float, per_unit: float) -> float:
        """Seconds until what the lane holds is projected to be done, at the
        node's speed as known now (a request's own plan may be from before
        any result)."""
        if not self.queue:
            return 0.0
        return max(0.0, sum(cost(n) for _, n in self.outstanding()) * per_unit - (now - self.since))

    def wants(self) -> bool:
        room = not self.queue or (len(self.queue) < AHEAD and self.queued() <= AHEAD_SECONDS)
        return not self.closing and not self.retired and room

    def send(self, batch: List[Record], took: float) -> bool:
        try:
            os.write(self.stdin.fileno(), "".join("%d:%d\n" % r for r in batch).encode())
        except (BrokenPipeError, OSError):
            return False
        self.queue.append([{image for image, _ in batch}, took, list(batch)])
        self.images += len(batch)
        return True

    def close_input(self) -> None:
        if not self.closing:
            self.closing = True
            try:
                self.stdin.close()
            except OSError:
                pass

    def outstanding(self) -> List[Record]:
        return [r for q in self.queue for r in q[2] if r[0] in q[0]]


# --- the run ----------------------------------------------------------------------

class Run:
    def __init__(self, conf: Config, directory: str, retry: bool):
        self.conf, self.dir, self.retry = conf, directory, retry
        self.name = os.path.basename(os.path.normpath(directory))
        self.nodes: Dict[str, Node] = {}
        self.nodes_mtime = 0.0
        self.masters: Dict[Tuple[str, int], Master] = {}
        self.lanes: List[Lane] = []
        self.down: Dict[str, float] = {}
        self.state: Optional[State] = None
        self.selector = selectors.DefaultSelector()
        self.rates: Dict[str, Deque[float]] = {}
        self.last_result: Dict[str, float] = {}
        self.metrics_at = 0.0
        self.dirty = True
        self.progress = time.monotonic()
        self.results_fd = -1

    def login(self, node: Node) -> str:
        return "%s@%s" % (self.conf.ssh_user, node.address)

    def log(self, text: str) -> None:
        print("bfcache: " + text, file=sys.stderr, flush=True)

    # -- the ID list, fetched while the masters connect
    def fetch_ids(self) -> Optional[subprocess.Popen]:
        ids = os.path.join(self.dir, "ids.txt")
        if os.path.exists(ids) and os.path.getsize(ids) > 0:
            return None
        command, stdin = ["ids"], None
        subset = os.path.join(self.dir, "subset")
        if os.path.exists(subset) and os.path.getsize(subset):
            with open(subset) as f:
                lines = f.read().splitlines()
            kind = lines[0]
            if kind in SUBSET_LISTS:
                command, stdin = ["ids", kind], "".join(x + "\n" for x in lines[1:])
            else:
                command = ["ids", kind, lines[1] if len(lines) > 1 else ""]
        out = open(os.path.join(self.dir, "ids.tmp"), "wb")
        proc = subprocess.Popen([self.conf.ssh, "-F", self.conf.ssh_config, "-o", "ControlMaster=no", "-o",
                                 "ControlPath=none", self.conf.database_login, *command],
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=out)
        out.close()
        if stdin is not None and proc.stdin is not None:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        return proc

    def ids_fetched(self, proc: subprocess.Popen) -> bool:
        proc.wait()
        tmp = os.path.join(self.dir, "ids.tmp")
        with open(tmp) as f:
            lines = f.read().splitlines()
        if proc.returncode != 0 or not lines or not all(ID_LINE.match(x) for x in lines):
            self.log("the ID list from %s is empty or malformed" % self.conf.database_login)
            return False
        os.replace(tmp, os.path.join(self.dir, "ids.txt"))
        return True

    # -- nodes, masters, lanes
    def refresh_nodes(self, now: float) -> None:
        """The node list, again when its file changed: a new node gets
        masters and lanes; a node gone or with fewer slots loses lanes once
        their work is done."""
        try:
            mtime = os.stat(self.conf.nodes_file).st_mtime
        except FileNotFoundError:
            return
        if mtime == self.nodes_mtime:
            return
        self.nodes_mtime = mtime
        self.nodes = read_nodes(self.conf.nodes_file)
        for lane in self.lanes:
            node = self.nodes.get(lane.node.address)
            if node is None or lane.number >= node.slots:
                lane.retired = True
        for node in self.nodes.values():
            for group in range(math.ceil(node.slots / self.conf.max_sessions)):
                if (node.address, group) not in self.masters:
                    master = Master(self, node, group)
                    self.masters[(node.address, group)] = master
                    master.start()

    def tend_masters(self, now: float) -> bool:
        """Start lanes on masters that came up; True while one connects."""
        connecting = False
        for (address, group), master in list(self.masters.items()):
            node = self.nodes.get(address)
            if node is None:
                continue
            if not master.ready and master.proc is None and master.check is None:
                continue        # failed: started again at its retry_at
            ok = master.poll()
            if ok is None:
                connecting = True
            elif ok is False:
                self.down[address] = now + DOWN_SECONDS
                self.log("no connection to %s (%s); no work for it for %d s" % (node.name, address, DOWN_SECONDS))
                master.proc = None
                master.retry_at = now + DOWN_SECONDS
            elif self.down.get(address, 0) <= now:
                # Its lanes, and again any that ended (a lost session) once
                # the node is no longer down.
                self.start_lanes(node, master)
        return connecting

    def start_lanes(self, node: Node, master: Master) -> None:
        """Before the ID list is in too: a lane is then ready (its session
        open, render-one.sh started) when the first hand-out comes."""
        if self.state is not None and self.state.remaining <= 0:
            return
        have = {lane.number for lane in self.lanes if lane.node.address == node.address}
        first = master.group * self.conf.max_sessions
        for number in range(first, min(node.slots, first + self.conf.max_sessions)):
            if number in have:
                continue
            lane = Lane(self, node, number, master)
            self.lanes.append(lane)
            self.selector.register(lane.out, selectors.EVENT_READ, lane)
            if self.state is not None:
                self.feed(lane, time.time())

    def feed(self, lane: Lane, now: float) -> None:
        """Keep the lane's queue at the node filled; close its input once
        the run has nothing more for it."""
        assert self.state is not None
        if lane.retired and not lane.queue:
            lane.close_input()
        while lane.wants() and lane.next_ask <= now:
            f = speeds(self.state, self.nodes)
            projected = lane.projected(now, f[lane.node.address]) if lane.node.address in f else 0.0
            if projected > LEAD:
                lane.next_ask = now + projected - LEAD
                return
            held = {other: other.projected(now, f[other.node.address]) for other in self.lanes
                    if other.queue and other.node.address in f}
            busy = sum(t / f[other.node.address] for other, t in held.items())
            longest = max(held.values(), default=0.0)
            choice = choose(self.state, lane.node.address, self.nodes, self.down, now, projected, busy, longest)
            if choice.source == "drained":
                if not lane.queue:
                    lane.close_input()
                lane.next_ask = now + 1.0      # not again at once: work comes back only from a lost lane
                return
            if choice.source == "idle":
                lane.next_ask = now + choice.took
                if not lane.queue and self.state.remaining <= 0:
                    lane.close_input()
                return
            with open(os.path.join(self.dir, "dispatch.log"), "a") as log:
                log.write("%.3f %s %s %d %s %s\n" % (now, lane.node.address, choice.source, len(choice.batch),
                                                      ",".join("%d:%d" % b for b in choice.batch), choice.note))
            if not lane.queue:
                lane.since = now
            if not lane.send(choice.batch, choice.took):
                self.state.give_back(choice.batch)
                return

    def result(self, lane: Lane, line: bytes, now: float) -> None:
        """The one writer: a result line to results.csv (one write per
        line: lanes' lines never mix), then what it teaches."""
        assert self.state is not None
        r = parse_result(line)
        if r is None:
            sys.stderr.buffer.write(line[:300])
            return
        image, node, status, seconds, images = r
        os.write(self.results_fd, line)
        self.state.learn(lane.node.address, status, seconds, images)
        self.state.done[image] = status
        mono = time.monotonic()
        if lane.last is not None:
            # Between two images on the node: what batching must keep small.
            self.state.overhead[0] += max(0.0, mono - lane.last - seconds)
            self.state.overhead[1] += 1
        lane.work += seconds
        lane.got += 1
        for q in lane.queue:
            if image in q[0]:
                q[0].discard(image)
                q[1] = max(0.0, q[1] - seconds)
                break
        lane.queue = [q for q in lane.queue if q[0]]
        lane.last = mono if lane.queue else None
        lane.since = now                # its next image begins
        lane.next_ask = 0.0
        self.rates.setdefault(lane.node.address, deque()).append(now)
        self.last_result[lane.node.address] = now
        self.progress = mono
        self.dirty = True

    def lane_ended(self, lane: Lane, now: float) -> None:
        assert self.state is not None
        self.selector.unregister(lane.out)
        lane.close_input()
        rc = lane.proc.wait()
        lost = lane.outstanding()
        self.state.give_back(lost)
        if lost:
            for other in self.lanes:
                other.next_ask = 0.0
        self.lanes.remove(lane)
        with open(os.path.join(self.dir, "jobs.csv"), "a") as jobs:
            jobs.write("%s,%d,%d,%d,%.3f,%.3f,%d\n" % (lane.node.address, lane.number, lane.images, lane.got,
                                                       time.monotonic() - lane.started, lane.work, rc))
        if lost or rc == 255:
            # The node or its connection went away: no work for it for a
            # while; what the lane held goes to the other lanes.
            self.down[lane.node.address] = now + DOWN_SECONDS
            self.log("lane %d of %s ended (exit %d) with %d image(s) outstanding; no work for it for %d s"
                     % (lane.number, lane.node.name, rc, len(lost), DOWN_SECONDS))
            if lane.master.proc is not None and lane.master.proc.poll() is not None:
                lane.master.ready = False
                lane.master.proc = None
                lane.master.retry_at = now + DOWN_SECONDS

    # -- metrics (node_exporter textfile collector)
    def metrics(self, now: float, running: bool) -> None:
        assert self.state is not None
        st = self.state
        started = now
        try:
            with open(os.path.join(self.dir, "started")) as f:
                started = float(f.read().strip() or now)
        except (FileNotFoundError, ValueError):
            pass
        run = 'run="%s"' % self.name
        f_ = speeds(st, self.nodes) if self.nodes else {}
        live = [a for a in self.nodes if self.down.get(a, 0) <= now and self.nodes[a].slots > 0]
        rate = sum(self.nodes[a].slots / f_[a] for a in live) if live else 0.0
        outstanding = sum(cost(n) for lane in self.lanes for _, n in lane.outstanding())
        end = now + (st.left + outstanding) / rate if rate > 0 else now
        lines = []

        def metric(name: str, kind: str, text: str, rows: List[Tuple[str, float]]) -> None:
            lines.append("# HELP idr_bfcache_%s %s\n# TYPE idr_bfcache_%s %s\n" % (name, text, name, kind))
            lines.extend("idr_bfcache_%s{%s} %s\n" % (name, labels, repr(float(value))) for labels, value in rows)

        per = [(a, n) for a, n in self.nodes.items()] + [
            (a, None) for a in st.per_node if a not in self.nodes]

        def node_labels(a: str, n: Optional[Node]) -> str:
            return '%s,node="%s"' % (run, n.alias if n else a)

        metric("running", "gauge", "1 while the run has images left, 0 once it finished.", [(run, 1 if running else 0)])
        metric("start_timestamp_seconds", "gauge", "When the run started.", [(run, started)])
        metric("images_planned", "gauge", "Images in the run.", [(run, st.planned)])
        metric("images_left", "gauge", "Images of the run without an ok, fill or miss result.",
               [(run, st.images_left())])
        metric("images_done_total", "counter", "Images rendered OK on the node.",
               [(node_labels(a, n), st.per_node.get(a, [0, 0])[0]) for a, n in per])
        metric("images_failed_total", "counter", "Image attempts that failed on the node (fail or cancel).",
               [(node_labels(a, n), st.per_node.get(a, [0, 0])[1]) for a, n in per])
        window = []
        for a, n in per:
            q = self.rates.get(a, deque())
            while q and q[0] < now - RATE_WINDOW:
                q.popleft()
            window.append((node_labels(a, n), len(q) / RATE_WINDOW))
        metric("rate_images_per_second", "gauge", "The node's results per second over the last %d s." % RATE_WINDOW,
               window)
        metric("last_result_timestamp_seconds", "gauge", "Time of the node's last result (ok or failed).",
               [(node_labels(a, n), self.last_result[a]) for a, n in per if a in self.last_result])
        metric("estimated_end_timestamp_seconds", "gauge", "When the run is projected to end.",
               [(run, end if running else now)])
        path = self.conf.metrics_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            f.write("".join(lines))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        self.metrics_at = now
        self.dirty = False

    # -- the loop
    def run(self) -> int:
        os.makedirs(self.conf.control_dir, mode=0o700, exist_ok=True)
        now = time.time()
        # The masters connect while the ID list is fetched.
        # The ID list first: its connection is as slow as a master's.
        ids = self.fetch_ids()
        self.refresh_nodes(now)
        # Lanes start on each master as it comes up, while the list comes in.
        while ids is not None and ids.poll() is None and self.tend_masters(time.time()):
            time.sleep(0.002)
        if ids is not None and not self.ids_fetched(ids):
            self.close()
            return 1
        self.state = load(self.dir, self.retry)
        self.log("run %s%s: %d images" % (self.name, " (retrying failures)" if self.retry else "",
                                           self.state.remaining))
        self.results_fd = os.open(os.path.join(self.dir, "results.csv"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                  0o640)
        try:
            return self.loop()
        finally:
            self.close()

    def loop(self) -> int:
        assert self.state is not None
        checked = 0.0
        while True:
            now = time.time()
            if now - checked >= CONFIG_EVERY:
                self.refresh_nodes(now)
                checked = now
            for master in self.masters.values():
                if not master.ready and master.proc is None and master.check is None \
                        and master.retry_at <= now and master.node.address in self.nodes:
                    master.start()
            connecting = self.tend_masters(now) if self.state.remaining > 0 else False
            for lane in list(self.lanes):
                self.feed(lane, now)
            if self.state.remaining <= 0 and not any(lane.queue for lane in self.lanes):
                break
            if self.dirty and now - self.metrics_at >= METRICS_EVERY:
                self.metrics(now, True)
            if not self.lanes and not connecting and time.monotonic() - self.progress > GIVE_UP:
                self.log("run %s: no node reachable for %d s; %d image(s) left: run again to continue"
                         % (self.name, GIVE_UP, self.state.remaining))
                self.metrics(now, True)
                return 75
            waits = [lane.next_ask - now for lane in self.lanes if lane.wants()]
            timeout = max(0.0, min([METRICS_EVERY, CONFIG_EVERY] + waits))
            if connecting:
                timeout = min(timeout, 0.005)
            if not self.lanes and not connecting:
                timeout = min(timeout, 1.0)
            if self.selector.get_map():
                events = self.selector.select(timeout)
            else:
                time.sleep(timeout)
                events = []
            now = time.time()
            for key, _ in events:
                lane = key.data
                data = os.read(lane.out, 65536)
                if not data:
                    self.lane_ended(lane, now)
                    continue
                lane.buffer += data
                *lines, lane.buffer = lane.buffer.split(b"\n")
                for line in lines:
                    self.result(lane, line + b"\n", now)
                self.feed(lane, now)
        self.metrics(time.time(), False)
        return 0

    def close(self) -> None:
        """Every lane's input closed (render-one ends), then the masters."""
        for lane in self.lanes:
            lane.close_input()
        for lane in self.lanes:
            try:
                lane.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                lane.proc.kill()
        for master in self.masters.values():
            if master.check is not None:
                master.check.kill()
            master.close()
        for master in self.masters.values():
            if master.proc is not None:
                try:
                    master.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    master.proc.kill()
        if self.results_fd >= 0:
            os.close(self.results_fd)
            self.results_fd = -1


def main(argv: List[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "run" and argv[2:] in ([], ["--retry-failures"]):
        return Run(config(), argv[1], argv[2:] == ["--retry-failures"]).run()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
