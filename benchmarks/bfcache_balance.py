"""Cache regeneration wall time on unequal nodes, with a 0.1 s SSH
handshake: the page's invocation, this project's run before this branch
(main's tree, rendered from git at run time) and now, and the floor (no
dispatcher), against the lower bound, on two workload shapes at two time
units. Run by hand, one command prints every figure (about 7 minutes on an
idle machine, most of it the page's; --run picks runs):

    .venv/bin/python benchmarks/bfcache_balance.py [--seconds-prod 6] [--seconds-stress 4] [--before main]

Model (stated, not measured): one omeroreadwrite node with 10 slots and four
omeroreadonly nodes with 1 slot each, each ten times slower per image and
with one core's worth of throughput (more jobs at once queue on a lock). The
image of a fileset with n images takes (BASE + n) units on the fast node.
`ssh` is a stand-in: a new connection costs a 0.1 s handshake (counted), a
session through a live control master none; masters and stale sockets
behave as OpenSSH's do (a ControlMaster=yes over a stale socket cannot
listen: it leaves an idle background ssh and its sessions connect on their
own). `omero` is a sleep of the image's time that logs when it ran.
Units:
- prod:   the unit at which the mean fast-node image of the work shape takes
          1.2 s, as production's omeroreadwrite (read-only nodes ~12 s);
- stress: 8 ms (images ~4x shorter): per-image overhead weighs more.
Shapes, sized so that the lower bound is about --seconds-prod/--seconds-stress:
- plates: a few big plates dominate; the bound is the longest image;
- work:   the number of filesets dominates; the bound is work / throughput.
Runs:
- page:   parallel --sshloginfile nodes -a ids -j10 'omero render ... test --force'
- before: run.sh of the tree at --before (default main), rendered from git
- after:  run.sh of this tree
- floor:  no dispatcher at all: an oracle's plan (the exact image times) run
          by bash, every connection opened at once, each node's lanes in one
          session as soon as its master listens (not waiting for the ID
          list, which a run must have), nothing recorded. What this machine
          and model allow; no run can know the plan in advance.
- bound:  max(longest image on the fast node, total work / total throughput)
Figures: wall / bound; start-up (run start to the first image on every
node); per-image overhead (a lane's gap between one omero's end and the
next's start, fast node; the page: its job's runtime minus the omero call);
the end (last omero end to the run's exit); handshakes (new connections) and
background ssh processes left, for a fresh run and for a rerun after a
SIGKILL of every process of the run midway. Last, GNU parallel's own start-up
(no handshake, trivial jobs): what the dispatcher saves by owning its lanes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = 5          # per-image fixed time in units (omero's start-up)
SLOWDOWN = 10
HANDSHAKE = 0.1
ENV = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/bash", "LC_ALL": "C"}
MASTER_TAG = "bfcache-bench-master"

# Renders a tree's regeneration files (its own components/) as JSON: run in
# that tree, so the before is main's code exactly as it is in git.
RENDER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from components.render import bfcache as render
from components.settings import build_settings
raw = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY bench", "sshBastion": "203.0.113.10",
       "sshUser": "root", "bfcacheGeneration": "1", "deploymentEnabled": "false", "omeroBin": "/opt/bench/omero"}
s = build_settings("bench", raw.get, lambda k: "KEY" if k == "sshPrivateKey" else None)
from components import layout
# The layout's function, or (a tree before the settings redesign) Settings' method.
host = (lambda role: layout.host(s, role)) if hasattr(layout, "host") else s.host
files = render.coordinator_files(s) + render.node_files(s, host("omeroreadwrite"))
print(json.dumps({"files": {f.path: f.content for f in files},
                  "paths": [render.LIBEXEC, render.CONF_DIR, render.CONTROL_DIR, render.STATE_DIR, render.KEY_DIR,
                            getattr(render, "METRICS_FILE", "/nonexistent")],
                  "nodes": [[n.address, n.role, n.slots] for n in render.nodes(s)],
                  "database": host("database").fixed_ip}))
"""


def plates_workload(rng: random.Random, seconds: float, unit: float) -> list[int]:
    k = max(0.02, (seconds / unit - BASE) / 3000)
    sizes = [1 + min(int(300 * k), int(rng.expovariate(1 / 12))) for _ in range(max(10, round(396 * k)))]
    for plate in (3000, 2400, 1800, 1200):
        sizes.insert(rng.randrange(len(sizes) + 1), max(1, round(plate * k)))
    return sizes


def work_workload(rng: random.Random, seconds: float, unit: float) -> list[int]:
    throughput = 10 + 4 / SLOWDOWN
    n = max(20, round(seconds * throughput / (35.5 * unit)))
    # Plates no longer than half the bound: the number of filesets dominates.
    scale = min(1.0, (seconds / 2 / unit - BASE) / 384)
    sizes = [rng.randint(1, 60) if rng.random() < 0.8 else rng.randint(1, 12) for _ in range(n - max(2, n // 50))]
    for _ in range(max(2, n // 50)):
        sizes.insert(rng.randrange(len(sizes) + 1), max(1, round(rng.randint(96, 384) * scale)))
    return sizes


SHAPES = {"plates": plates_workload, "work": work_workload}


def prod_unit(seed: int) -> float:
    """Seconds per unit at which the mean fast-node image of the (full-size)
    work shape takes 1.2 s."""
    rng = random.Random(seed)
    sizes = [rng.randint(1, 60) if rng.random() < 0.8 else rng.randint(1, 12) for _ in range(392)]
    sizes += [rng.randint(96, 384) for _ in range(8)]
    return 1.2 / (sum(BASE + n for n in sizes) / len(sizes))


def write(path: Path, text: str, mode=0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


SSH = r"""#!/bin/bash
# Stand-in ssh: a new connection costs a handshake; a session through a live
# master none. Masters: a process whose pid is in the ControlPath file.
cp='' master=auto op='' fork='' noexec=''
while [ $# -gt 0 ]; do
    case "$1" in
        -O) op=$2; shift 2 ;;
        -o) case "$2" in
                ControlPath=*) cp=${2#ControlPath=} ;;
                ControlMaster=*) master=${2#ControlMaster=} ;;
            esac
            shift 2 ;;
        -S) cp=$2; shift 2 ;;
        -F | -l | -i | -p) shift 2 ;;
        -M) master=yes; shift ;;
        -f) fork=1; shift ;;
        -N) noexec=1; shift ;;
        -fN | -Nf) fork=1 noexec=1; shift ;;
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=${1#*@}; shift
[ "${1:-}" = -- ] && shift
[ "$cp" = none ] && cp=''
cp=${cp//%C/$host}
live() {
    # The master named in the file runs (not a zombie: its argv is the tag).
    local argv=()
    [ -n "$cp" ] && [ -s "$cp" ] && read -r pid < "$cp" && [ -n "$pid" ] || return 1
    mapfile -d '' -t argv < "/proc/$pid/cmdline" 2> /dev/null
    [ "${argv[0]:-}" = @TAG@ ]
}
case "$op" in
    check) live; exit ;;
    exit) if live; then kill "$pid"; fi; rm -f "$cp"; exit 0 ;;
esac
if ! live; then
    [ "${BENCH_HANDSHAKE:-1}" = 0 ] || sleep @HANDSHAKE@
    echo "$host" >> @ROOT@/handshakes
    if [ -n "$cp" ] && [ "$master" != no ]; then
        if [ -e "$cp" ] && [ "$master" = yes ]; then
            # OpenSSH: a stale socket is only unlinked by ControlMaster=auto;
            # `yes` cannot listen and stays an idle connection.
            if [ -n "$noexec" ]; then
                if [ -n "$fork" ]; then setsid -f bash -c 'exec -a @TAG@ sleep 100000' < /dev/null > /dev/null 2>&1; exit 0; fi
                exec -a @TAG@ sleep 100000
            fi
        else
            [ "$master" = auto ] && rm -f "$cp"
            if [ -n "$noexec" ] && [ -z "$fork" ]; then
                echo $$ > "$cp"
                exec -a @TAG@ sleep 100000
            fi
            # A master in the background (-f, or auto with ControlPersist).
            setsid -f bash -c 'echo $$ > "$1"; exec -a @TAG@ sleep 100000' _ "$cp" < /dev/null > /dev/null 2>&1
            [ -n "$noexec" ] && exit 0
        fi
    fi
fi
[ $# -gt 0 ] || exit 0
if [ "$host" = @DATABASE@ ]; then exec cat @ROOT@/ids-sorted.txt; fi
export BENCH_NODE=$host
exec bash -c "$*"
"""

# The stand-in omero, in C when a compiler is there: its process start is
# then ~0.3 ms, so the gap between two images on a lane is what the run
# itself spends (a bash stand-in's own start, ~1-3 ms, would count too).
OMERO_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

/* /proc/<p>/<name> into buf (NULs as spaces); its length, or -1. */
static long proc_file(long p, const char *name, char *buf, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/%s", p, name);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
    buf[n] = 0;
    return (long)n;
}

static long parent(long p) {
    char buf[1024];
    long pp = 0;
    char *e = proc_file(p, "stat", buf, sizeof buf) < 0 ? NULL : strrchr(buf, ')');
    if (e) sscanf(e + 2, "%*c %ld", &pp);
    return pp;
}

static int render_one(long p) {
    char buf[4096];
    return proc_file(p, "cmdline", buf, sizeof buf) > 0 && strstr(buf, "render-one") != NULL;
}

int main(int argc, char **argv) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_REALTIME, &t0);
    const char *root = getenv("BENCH_ROOT"), *node = getenv("BENCH_NODE"), *fast = getenv("BENCH_FAST");
    const char *id = argv[argc - 1];
    if (!strncmp(id, "Image:", 6)) id += 6;
    long lane = 0, p = getppid();
    for (int k = 0; k < 8 && p > 1; k++) {
        if (render_one(p)) lane = p;
        else if (lane) break;
        p = parent(p);
    }
    int is_fast = !strcmp(node, fast);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", root, is_fast ? "fast" : "slow", id);
    double secs = 0;
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%lf", &secs) != 1) return 2;
    fclose(f);
    int lock = -1;
    if (!is_fast) {
        /* A slow node: one image at a time however many are sent. */
        snprintf(path, sizeof path, "%s/lock-%s", root, node);
        lock = open(path, O_CREAT | O_WRONLY, 0644);
        flock(lock, LOCK_EX);
    }
    struct timespec d = {(time_t)secs, (long)((secs - (time_t)secs) * 1e9)};
    nanosleep(&d, NULL);
    if (lock >= 0) close(lock);
    printf("ok: Pixel:%s %.4f\n", id, secs);
    fflush(stdout);
    clock_gettime(CLOCK_REALTIME, &t1);
    char line[256];
    int n = snprintf(line, sizeof line, "%ld.%06ld %ld.%06ld %s %ld %s\n", (long)t0.tv_sec, t0.tv_nsec / 1000,
                     (long)t1.tv_sec, t1.tv_nsec / 1000, node, lane, id);
    snprintf(path, sizeof path, "%s/omero.log", root);
    int log = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    return write(log, line, n) == n ? 0 : 1;
}
"""

OMERO_SH = r"""#!/bin/bash
t0=$EPOCHREALTIME
id=${!#}; id=${id#Image:}
# The lane: the topmost render-one.sh above (its $(...) subshells too), with
# bash builtins only (the page: none).
lane=0 p=$PPID n=0
while [ "$p" -gt 1 ] && [ "$n" -lt 8 ]; do
    mapfile -d '' -t argv < /proc/$p/cmdline 2>/dev/null
    case "${argv[*]}" in
        *render-one*) lane=$p ;;
        *) [ "$lane" = 0 ] || break ;;
    esac
    read -r _ _ _ p _ < /proc/$p/stat 2>/dev/null || break
    n=$((n + 1))
done
if [ "$BENCH_NODE" = "$BENCH_FAST" ]; then
    read -r secs < "$BENCH_ROOT/fast/$id"
    sleep "$secs"
else
    read -r secs < "$BENCH_ROOT/slow/$id"
    exec 9> "$BENCH_ROOT/lock-$BENCH_NODE"
    flock 9
    sleep "$secs"
fi
echo "ok: Pixel:$id $secs"
echo "$t0 $EPOCHREALTIME $BENCH_NODE $lane $id" >> "$BENCH_ROOT/omero.log"
"""


FLOOR = r"""#!/bin/bash
# floor.sh ROOT DATABASE MASTER_TAG NODE...: connections at once, then per node one
# session as soon as its master listens; waits with `read -t` on a FIFO
# nobody writes (no process per poll).
root=$1 database=$2 tag=$3; shift 3
"$root/ssh" -o ControlPath=none "root@$database" ids > /dev/null &
for node in "$@"; do
    "$root/ssh" -o "ControlPath=$root/cm/$node" -o ControlMaster=yes -o ControlPersist=no -N "root@$node" &
done
exec 3<> "$root/tick"
for node in "$@"; do
    (
        # Listening: the pid file is written, and its process is the
        # master (the stand-in writes the file just before it becomes it).
        until [ -s "$root/cm/$node" ] && read -r pid < "$root/cm/$node" \
            && mapfile -d '' -t argv < "/proc/$pid/cmdline" && [ "${argv[0]:-}" = "$tag" ]; do
            read -r -t 0.002 -u 3 _
        done
        "$root/ssh" -o "ControlPath=$root/cm/$node" -o ControlMaster=no "root@$node" -- "$root/floor-node.sh $root $node"
    ) &
    sessions+=($!)
done
wait "${sessions[@]}"
for node in "$@"; do "$root/ssh" -o "ControlPath=$root/cm/$node" -O exit "root@$node"; done
wait
"""

FLOOR_NODE = r"""#!/bin/bash
# floor-node.sh ROOT NODE: each lane of the node a bash running its planned
# images one after the other (named render-one: the omero stand-in finds its
# lane by that name, so the floor's gaps per image are measured too).
root=$1 node=$2
for lane in "$root/lane-$node"-*; do
    bash -c '# render-one of the floor
        while read -r id; do
            "$0" render -s localhost -u public -w public test --force "Image:$id" < /dev/null > /dev/null
        done' "$root/omero" < "$lane" &
done
wait
"""


def omero_standin(directory: Path) -> tuple[Path, str]:
    """The stand-in omero: compiled C if `cc` is there, else bash."""
    source = write(directory / "omero.c", OMERO_C, 0o644)
    binary = directory / "omero"
    if subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], capture_output=True).returncode == 0:
        return binary, "C"
    return write(binary, OMERO_SH), "bash"


class Bench:
    def __init__(self, shape: str, label: str, unit: float, seconds: float, seed: int, trees: dict, omero: Path):
        self.shape, self.label, self.unit, self.trees, self.omero = shape, label, unit, trees, omero
        self.sizes = SHAPES[shape](random.Random(seed), seconds, unit)
        self.jobs, image = [], 1
        for n in self.sizes:
            self.jobs.append((image, n))
            image += n
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bfcache-bench-{shape}-{label}-"))
        any_tree = next(iter(trees.values()))
        self.nodes = any_tree["nodes"]
        self.fast = self.nodes[0][0]
        self.database = any_tree["database"]
        lanes = sum(s for a, r, s in self.nodes if r == "omeroreadwrite")
        slow = sum(1 for a, r, s in self.nodes if r != "omeroreadwrite")
        self.throughput = lanes + slow / SLOWDOWN
        work = sum(BASE + n for n in self.sizes)
        self.longest = (BASE + max(self.sizes)) * unit
        self.balanced = work * unit / self.throughput
        self.bound = max(self.longest, self.balanced)

    def root(self, name: str) -> Path:
        root = self.tmp / name
        root.mkdir()
        for kind, factor in (("fast", 1), ("slow", SLOWDOWN)):
            d = root / kind
            d.mkdir()
            for i, n in self.jobs:
                (d / str(i)).write_text(f"{(BASE + n) * self.unit * factor:.4f}\n")
        write(root / "ids-sorted.txt", "".join(f"{i}|{n}\n" for i, n in sorted(self.jobs, key=lambda r: (-r[1], r[0]))),
              0o644)
        tag = f"{MASTER_TAG}-{root.name}-{os.getpid()}"
        write(root / "ssh", SSH.replace("@ROOT@", str(root)).replace("@DATABASE@", self.database)
              .replace("@HANDSHAKE@", str(HANDSHAKE)).replace("@TAG@", tag))
        os.symlink(self.omero, root / "omero")
        (root / "handshakes").touch()
        (root / "omero.log").touch()
        return root

    def env(self, root: Path) -> dict:
        return {**ENV, "HOME": str(root), "PATH": f"{root}:{ENV['PATH']}", "BENCH_ROOT": str(root),
                "BENCH_FAST": self.fast}

    def calls(self, root: Path) -> list[tuple[float, float, str, int, int]]:
        out = []
        for line in (root / "omero.log").read_text().splitlines():
            a, b, node, lane, image = line.split()
            out.append((float(a), float(b), node, int(lane), int(image)))
        return out

    def figures(self, root: Path, t0: float, t_end: float, wall: float) -> dict:
        calls = self.calls(root)
        first = {}
        for a, _, node, _, _ in calls:
            first[node] = min(first.get(node, a), a)
        # Every node that got an image (the fit rule may leave a slow node
        # without one, when nothing it could take would end in time).
        start = max(first.values()) - t0
        gaps, by_lane = [], {}
        for c in calls:
            if c[2] == self.fast and c[3]:
                by_lane.setdefault(c[3], []).append(c)
        for lane in by_lane.values():
            lane.sort()
            gaps += [b[0] - a[1] for a, b in zip(lane, lane[1:])]
        return dict(wall=wall, ratio=wall / self.bound, ratio_hs=wall / (self.bound + HANDSHAKE), start=start, nodes=len(first),
                    overhead=statistics.mean(gaps) if gaps else float("nan"),
                    overhead_median=statistics.median(gaps) if gaps else float("nan"),
                    end=t_end - max(b for _, b, *_ in calls), images=len(calls),
                    handshakes=len((root / "handshakes").read_text().split()), left=leftover(root))

    # -- the floor: no dispatcher at all
    def schedule(self) -> dict[tuple[str, int], list[int]]:
        """An oracle's plan (the exact image times, which no run knows):
        largest fileset first, each to the lane where it ends earliest."""
        lanes = [(a, k, 1 if r == "omeroreadwrite" else SLOWDOWN) for a, r, n in self.nodes for k in range(n)]
        ends = {(a, k): 0.0 for a, k, _ in lanes}
        plan: dict[tuple[str, int], list[int]] = {(a, k): [] for a, k, _ in lanes}
        for image, n in sorted(self.jobs, key=lambda j: -j[1]):
            a, k, f = min(lanes, key=lambda lane: ends[lane[:2]] + (BASE + n) * self.unit * lane[2])
            ends[(a, k)] += (BASE + n) * self.unit * f
            plan[(a, k)].append(image)
        return plan

    def floor(self) -> dict:
        """What this machine and model allow without any run-time work: the
        oracle's plan, bash only, every connection opened at once (the ID
        list's too), each node's lanes started in one session as soon as its
        master listens, nothing recorded."""
        root = self.root("floor")
        for (a, k), images in self.schedule().items():
            write(root / f"lane-{a}-{k}", "".join(f"{i}\n" for i in images), 0o644)
        write(root / "floor-node.sh", FLOOR_NODE)
        write(root / "floor.sh", FLOOR)
        os.mkfifo(root / "tick")
        (root / "cm").mkdir(mode=0o700)
        t0 = time.time()
        subprocess.run(["bash", str(root / "floor.sh"), str(root), self.database, f"{MASTER_TAG}-{root.name}-{os.getpid()}",
                        *[a for a, _, _ in self.nodes]],
                       check=True, stdout=subprocess.DEVNULL, cwd=root, env=self.env(root))
        t_end = time.time()
        f = self.figures(root, t0, t_end, t_end - t0)
        kill_leftovers(root)
        return f

    # -- the page
    def page(self) -> dict:
        root = self.root("page")
        write(root / "page-nodes", "".join(f"root@{a}\n" for a, _, _ in self.nodes), 0o644)
        write(root / "page-ids", "".join(f"{i}\n" for i, _ in self.jobs), 0o644)
        t0 = time.time()
        subprocess.run(["parallel", "--sshloginfile", str(root / "page-nodes"), "--ssh", str(root / "ssh"),
                        "-a", str(root / "page-ids"), "-j10", "--joblog", str(root / "page-joblog"),
                        f"{root}/omero render -s localhost -u public -w public test --force"],
                       check=True, stdout=subprocess.DEVNULL, cwd=root, env=self.env(root))
        t_end = time.time()
        f = self.figures(root, t0, t_end, t_end - t0)
        # Per image: the job's runtime minus its omero call (fast node).
        spent = {image: b - a for a, b, node, _, image in self.calls(root) if node == self.fast}
        over = []
        for line in (root / "page-joblog").read_text().splitlines()[1:]:
            fields = line.split("\t")
            image = int(fields[-1].split()[-1].split("Image:")[-1])
            if image in spent:
                over.append(float(fields[3]) - spent[image])
        f["overhead"] = statistics.mean(over) if over else float("nan")
        f["overhead_median"] = statistics.median(over) if over else float("nan")
        return f

    # -- this project's run, of one tree
    def install(self, root: Path, tree: dict) -> Path:
        libexec, conf_dir, control_dir, state_dir, key_dir, metrics = tree["paths"]

        def local(text: str) -> str:
            for path, name in ((metrics, "metrics/idr_bfcache.prom"), (f"{libexec}/", ""), (f"{conf_dir}/", "conf-"),
                               (control_dir, "cm"), (state_dir, "state"), (f"{key_dir}/", "key-"),
                               ("/opt/bench/omero", "omero")):
                text = text.replace(path, f"{root}/{name}")
            return text

        for path, content in tree["files"].items():
            if path.startswith(f"{libexec}/") or path.startswith(f"{conf_dir}/"):
                target = Path(local(path))
                if target.parent == root and not target.name.endswith("node-setup.sh"):
                    write(target, local(content))
        (root / "state").mkdir()
        (root / "cm").mkdir(mode=0o700)
        # Compiled before the clock starts, as `run.sh --check` does before
        # every start (start.sh, idr-bfcache-start); the same for every tree.
        if (root / "dispatch.py").exists():
            subprocess.run(["/usr/bin/python3", "-I", "-m", "py_compile", str(root / "dispatch.py")], check=True)
        return root / "run.sh"

    def ours(self, name: str) -> dict:
        root = self.root(name)
        run = self.install(root, self.trees[name])
        t0 = time.time()
        subprocess.run([str(run), "1"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
                       env=self.env(root))
        t_end = time.time()
        f = self.figures(root, t0, t_end, t_end - t0)
        f.update({f"resumed_{k}": v for k, v in self.resumed(name).items()})
        kill_leftovers(root)
        return f

    def resumed(self, name: str) -> dict:
        """Killed (SIGKILL of every process of the run) once about 40% of
        the images have results, then run again: that rerun's handshakes and
        what ssh it leaves."""
        root = self.root(name + "-resumed")
        run = self.install(root, self.trees[name])
        p = subprocess.Popen([str(run), "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
                             env=self.env(root), start_new_session=True)
        results = root / "state/1/results.csv"
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 0.4 * len(self.jobs):
                break
            time.sleep(0.01)
        # Its session (every process the run started) and any master that
        # left it (the stand-in's -f masters, as OpenSSH's, call setsid).
        subprocess.run(["pkill", "-KILL", "-s", str(p.pid)])
        for pid in masters_of(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        time.sleep(0.2)
        before = len((root / "handshakes").read_text().split())
        left_by_kill = leftover(root)
        subprocess.run([str(run), "1"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
                       env=self.env(root))
        out = dict(handshakes=len((root / "handshakes").read_text().split()) - before,
                   left=leftover(root) - left_by_kill)
        kill_leftovers(root)
        return out


def masters_of(root: Path) -> list[int]:
    """Stand-in ssh masters of `root` still alive (their argv[0] is the tag)."""
    tag = f"{MASTER_TAG}-{root.name}-{os.getpid()}".encode()
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0] == tag:
                out.append(int(cmdline.parent.name))
        except OSError:
            continue
    return out


def leftover(root: Path) -> int:
    return len(masters_of(root))


def kill_leftovers(root: Path) -> None:
    for pid in masters_of(root):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def render_tree(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", RENDER, str(tree)], capture_output=True, text=True, check=True,
                         cwd=tree)
    return json.loads(out.stdout)


def parallel_startup() -> float:
    """GNU parallel alone: its start to a job running on every one of five
    nodes (10 + 4 x 1 slots), no handshake, trivial jobs."""
    root = Path(tempfile.mkdtemp(prefix="bfcache-bench-parallel-"))
    write(root / "ssh", SSH.replace("@ROOT@", str(root)).replace("@DATABASE@", "none").replace("@HANDSHAKE@", "0")
          .replace("@TAG@", "x"))
    (root / "handshakes").touch()
    write(root / "nodes", "10/root@n0\n1/root@n1\n1/root@n2\n1/root@n3\n1/root@n4\n", 0o644)
    t0 = time.time()
    subprocess.run(["parallel", "--sshloginfile", str(root / "nodes"), "--ssh", str(root / "ssh"), "-N0",
                    "-a", "/dev/stdin", f'echo "$BENCH_NODE $EPOCHREALTIME" >> {root}/log'],
                   input="\n".join("0" * 14) + "\n", text=True, check=True, stdout=subprocess.DEVNULL,
                   env={**ENV, "HOME": str(root), "BENCH_HANDSHAKE": "0"})
    first = {}
    for line in (root / "log").read_text().splitlines():
        node, t = line.split()
        first[node] = min(first.get(node, float(t)), float(t))
    return max(first.values()) - t0 if len(first) == 5 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds-prod", type=float, default=6.0, help="lower bound of each prod-unit workload (s)")
    ap.add_argument("--seconds-stress", type=float, default=4.0, help="lower bound of each 8 ms workload (s)")
    ap.add_argument("--before", default="main", help="git revision whose tree is the before (default main)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append")
    ap.add_argument("--unit", choices=["prod", "stress"], action="append")
    ap.add_argument("--run", choices=["page", "before", "after", "floor"], action="append",
                    help="only these runs (default all; the page takes ~10x the bound)")
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bfcache-bench-before-") as before_dir:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "components"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", before_dir], input=archive, check=True)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                                text=True, check=True).stdout.strip()
        trees = {"before": render_tree(Path(before_dir)), "after": render_tree(ROOT)}
    omero, omero_kind = omero_standin(Path(tempfile.mkdtemp(prefix="bfcache-bench-omero-")))
    units = {"prod": (prod_unit(args.seed), args.seconds_prod), "stress": (0.008, args.seconds_stress)}
    print(f"nodes: 1 x omeroreadwrite (10 slots), 4 x omeroreadonly ({SLOWDOWN}x slower, 1 slot, one image at a "
          f"time); ssh handshake {HANDSHAKE} s per new connection; before = {args.before} ({commit}), after = "
          f"this tree; seed {args.seed}; omero stand-in in {omero_kind}")
    rows = []
    for shape in args.shape or ["plates", "work"]:
        for label in args.unit or ["prod", "stress"]:
            unit, seconds = units[label]
            b = Bench(shape, label, unit, seconds, args.seed, trees, omero)
            runs = {"page": b.page, "before": lambda: b.ours("before"), "after": lambda: b.ours("after"),
                    "floor": b.floor}
            rows.append((b, {name: go() for name, go in runs.items() if not args.run or name in args.run}))
    print(f"{'shape':6} {'unit':>9} {'bound s':>7} {'run':6} {'wall s':>7} {'/bound':>6} {'/b+hs':>6} {'start s':>7} "
          f"{'nodes':>5} {'ovh/img ms':>10} {'(median)':>8} {'end s':>6} {'hs':>3} {'left':>4} {'resumed hs':>10} {'left':>4}")
    for b, runs in rows:
        for name, f in runs.items():
            resumed = (f"{f['resumed_handshakes']:10d} {f['resumed_left']:4d}" if "resumed_handshakes" in f
                       else f"{'':10} {'':4}")
            print(f"{b.shape:6} {b.label + ' %.1fms' % (b.unit * 1000):>9} {b.bound:7.2f} {name:6} {f['wall']:7.2f} "
                  f"{f['ratio']:6.3f} {f['ratio_hs']:6.3f} {f['start']:7.3f} {f['nodes']:5d} "
                  f"{f['overhead'] * 1000:10.2f} {f['overhead_median'] * 1000:8.2f} "
                  f"{f['end']:6.3f} {f['handshakes']:3d} {f['left']:4d} {resumed}")
    for b, _ in rows:
        print(f"{b.shape} {b.label}: {len(b.sizes)} filesets, {sum(b.sizes)} images, bound = max(longest image "
              f"{b.longest:.2f} s, work/throughput {b.balanced:.2f} s)")
    print("floor: the oracle's plan in bash, no dispatcher (what this machine and model allow at this size)")
    print("/b+hs: wall over the bound plus one handshake (no image can start before a connection is up); "
          "/bound is the issue's figure")
    print("start: run start to the first image on each of `nodes` nodes (those that got one); ovh/img: a lane's gap "
          "between one omero's end and the next's start, fast node (the page: job runtime minus the omero call); "
          "end: last omero end to the run's exit")
    print("hs: handshakes (the ID list's included: ours fetch it once per run); left: background ssh left after the "
          "run; resumed: the rerun after a SIGKILL of every process of a run at ~40%")
    print(f"GNU parallel alone (no handshake, trivial jobs): a job on every node {parallel_startup():.3f} s after "
          f"its start")
    print(f"benchmark took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
