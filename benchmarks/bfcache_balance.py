"""Cache regeneration wall time on unequal nodes: the page's invocation vs
this project's run vs the lower bound, on two workload shapes. Run by hand:

    .venv/bin/python benchmarks/bfcache_balance.py [--job-seconds 1.2 | --unit-ms MS] [--seed 1] [--shape plates|work]

Time scale: by default the unit is chosen so that the mean job on the fast
node of the work shape takes --job-seconds, 1.2 s as on production's
omeroreadwrite (production measured read-only nodes at 10-15 s per job
against 1.2 s); read-only jobs then take ~12 s, as there. A smaller
--unit-ms (e.g. 8: jobs ~4x shorter than production's) stresses the
per-image overhead, which is then a larger share of each job.

Model (stated, not measured): one omeroreadwrite node with 10 cores and
four omeroreadonly nodes, each ten times slower per job and with one core's
worth of throughput (more jobs at once queue on it: a lock). The image of a
fileset with n images takes (BASE + n) units on the fast node. Shapes:
- plates: a few big plates dominate (four of 1200-3000 images among 396
  small filesets); the bound is the longest job.
- work:   total work dominates (400 filesets, most of 1-60 images, eight
  plates of 96-384); the bound is work / throughput, and per-job overhead
  is what separates a run from it.

Both runs are real GNU parallel; `ssh` is replaced by a local stand-in (the
integration test covers real sshd and connection sharing), `omero` by a
sleep of the image's time.
- page:  parallel --sshloginfile nodes -a ids.txt -j10 'omero render ... test --force'
         (IDs in fileset order, as the page's query returns them)
- ours:  the rendered run.sh, dispatch.py and render-one.sh (slots from the
         config defaults: 10 and 1; node speeds learned, starting from 10x)
- bound: max(longest image on the fast node, total work / total throughput)
Per-job overhead, measured: a job's wall time minus the time of its images
(ours: jobs.csv; the page: its joblog's JobRuntime minus the image's sleep).
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components import layout  # noqa: E402
from components.render import bfcache as render  # noqa: E402
from components.settings import build_settings  # noqa: E402

BASE = 5          # per-image fixed time in units (omero's start-up)
SLOWDOWN = 10
ENV = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/bash", "LC_ALL": "C"}


def plates_workload(rng: random.Random) -> list[int]:
    sizes = [1 + min(300, int(rng.expovariate(1 / 12))) for _ in range(396)]
    for plate in (3000, 2400, 1800, 1200):
        sizes.insert(rng.randrange(len(sizes) + 1), plate)
    return sizes


def work_workload(rng: random.Random) -> list[int]:
    sizes = [rng.randint(1, 60) if rng.random() < 0.8 else rng.randint(1, 12) for _ in range(392)]
    for _ in range(8):
        sizes.insert(rng.randrange(len(sizes) + 1), rng.randint(96, 384))
    return sizes


SHAPES = {"plates": plates_workload, "work": work_workload}


def workload(shape: str, seed: int) -> list[tuple[int, int]]:
    """(image ID, images in fileset) in fileset (import) order."""
    out, image = [], 1
    for n in SHAPES[shape](random.Random(seed)):
        out.append((image, n))
        image += n
    return out


def settings():
    raw = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY bench", "sshBastion": "203.0.113.10",
           "sshUser": "root", "bfcacheGeneration": "1", "deploymentEnabled": "false"}
    return build_settings("bench", raw.get, lambda k: "KEY" if k == "sshPrivateKey" else None)


def write(path: Path, text: str, mode=0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def stand_ins(root: Path, jobs: list[tuple[int, int]], unit_ms: float, fast: str, database: str) -> None:
    # Each image's sleep, precomputed so the stand-in costs one read.
    for kind, factor in (("fast", 1), ("slow", SLOWDOWN)):
        d = root / kind
        d.mkdir()
        for i, n in jobs:
            (d / str(i)).write_text(f"{(BASE + n) * unit_ms * factor / 1000:.4f}\n")
    # ssh: run the remote command here, as that host; the database host
    # answers with the ID list (its forced command); a shared connection
    # (-O, -fN) is a no-op.
    write(root / "ssh", f"""#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -O) exit 0;; -l|-i|-o|-p|-F|-S) shift 2;; -*) shift;; *) break;; esac; done
host=${{1#*@}}; shift; [ "${{1:-}}" = "--" ] && shift
[ $# -gt 0 ] || exit 0
if [ "$host" = {database} ]; then exec sort -t'|' -k2,2nr -k1,1n {root}/ids.txt; fi
export BENCH_NODE=$host
exec bash -c "$*"
""")
    write(root / "omero", f"""#!/bin/bash
id=${{!#}}; id=${{id#Image:}}
if [ "$BENCH_NODE" = {fast} ]; then
    read -r secs < {root}/fast/$id
    sleep "$secs"
else
    # A slow node: ten times slower, one job at a time however many are sent.
    read -r secs < {root}/slow/$id
    exec 9> "{root}/lock-$BENCH_NODE"
    flock 9
    sleep "$secs"
fi
echo "ok: Pixel:$id $secs"
""")


def run_page(root: Path, nodes, jobs) -> tuple[float, float]:
    write(root / "page-nodes", "".join(f"root@{n.address}\n" for n in nodes), 0o644)
    write(root / "page-ids", "".join(f"{i}\n" for i, _ in jobs), 0o644)
    t0 = time.monotonic()
    subprocess.run(["parallel", "--sshloginfile", str(root / "page-nodes"), "--ssh", str(root / "ssh"),
                    "-a", str(root / "page-ids"), "--results", str(root / "out.csv"), "-j10",
                    "--joblog", str(root / "page-joblog"),
                    f"{root}/omero render -s localhost -u public -w public test --force"],
                   check=True, stdout=subprocess.DEVNULL, cwd=root, env={**ENV, "HOME": str(root)})
    wall = time.monotonic() - t0
    # Overhead: JobRuntime minus the image's own sleep (slow nodes also
    # wait for their lock: counted on the fast node only).
    fast = nodes[0].address
    over = []
    for line in (root / "page-joblog").read_text().splitlines()[1:]:
        f = line.split("\t")
        if f[1].endswith(fast):
            image = f[-1].split("Image:")[-1] if "Image:" in f[-1] else f[-1].split()[-1]
            over.append(float(f[3]) - float((root / "fast" / image).read_text()))
    return wall, sum(over) / len(over) if over else float("nan")


def run_ours(root: Path, s) -> tuple[float, float, int, int]:
    files = {f.path: f.content for f in render.coordinator_files(s)}
    (render_one,) = [f.content for f in render.node_files(s, layout.host(s, "omeroreadwrite"))
                     if f.path.endswith("render-one.sh")]
    write(root / "render-one.sh", render_one.replace(s.omero_bin, f"{root}/omero"))

    def local(text: str) -> str:
        for path, name in ((f"{render.LIBEXEC}/render-one.sh", "render-one.sh"),
                           (f"{render.LIBEXEC}/dispatch.py", "dispatch.py"),
                           (f"{render.LIBEXEC}/ssh.sh", "ssh.sh"), (f"{render.CONF_DIR}/", "conf-"), (render.CONTROL_DIR, "cm"),
                           (render.STATE_DIR, "state"), (f"{render.KEY_DIR}/", "key-")):
            text = text.replace(path, f"{root}/{name}")
        return text

    for path, name in ((f"{render.LIBEXEC}/run.sh", "run.sh"), (f"{render.LIBEXEC}/dispatch.py", "dispatch.py"),
                       (f"{render.LIBEXEC}/ssh.sh", "ssh.sh"),
                       (f"{render.CONF_DIR}/nodes", "conf-nodes"), (f"{render.CONF_DIR}/node-info", "conf-node-info"),
                       (f"{render.CONF_DIR}/ssh_config", "conf-ssh_config")):
        write(root / name, local(files[path]))
    (root / "state").mkdir()
    t0 = time.monotonic()
    subprocess.run([str(root / "run.sh"), "1"], check=True, stdout=subprocess.DEVNULL, cwd=root,
                   env={**ENV, "HOME": str(root), "PATH": f"{root}:{ENV['PATH']}"})
    wall = time.monotonic() - t0
    jobs = [line.split(",") for line in (root / "state/1/jobs.csv").read_text().splitlines()]
    ran = [j for j in jobs if int(j[3]) > 0]
    overhead = sum(float(j[4]) - float(j[5]) for j in ran) / len(ran)
    images = sum(int(j[3]) for j in ran)
    return wall, overhead, len(ran), images


def bench(shape: str, seed: int, unit_ms: float) -> dict:
    s = settings()
    nodes = render.nodes(s)
    fast = layout.host(s, "omeroreadwrite").fixed_ip
    root = Path(tempfile.mkdtemp(prefix=f"bfcache-bench-{shape}-"))
    jobs = workload(shape, seed)
    write(root / "ids.txt", "".join(f"{i}|{n}\n" for i, n in jobs), 0o644)
    stand_ins(root, jobs, unit_ms, fast, layout.host(s, "database").fixed_ip)
    u = unit_ms / 1000
    lanes = s.bfcache_slots["omeroreadwrite"]
    slow_nodes = len([n for n in nodes if n.role == "omeroreadonly"])
    throughput = lanes + slow_nodes / SLOWDOWN
    work = sum(BASE + n for _, n in jobs)
    longest = (BASE + max(n for _, n in jobs)) * u
    bound = max(longest, work * u / throughput)
    page, page_overhead = run_page(root, nodes, jobs)
    ours, overhead, n_jobs, n_images = run_ours(root, s)
    return dict(shape=shape, filesets=len(jobs), images=sum(n for _, n in jobs), bound=bound, longest=longest,
                mean_job=work * u / len(jobs),
                balanced=work * u / throughput, page=page, page_overhead=page_overhead, ours=ours,
                overhead=overhead, jobs=n_jobs, job_images=n_images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job-seconds", type=float, default=1.2,
                    help="mean fast-node job of the work shape (production: 1.2 s); sets the unit")
    ap.add_argument("--unit-ms", type=float, help="the unit itself, instead of --job-seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append")
    args = ap.parse_args()
    shapes = args.shape or ["plates", "work"]
    if args.unit_ms is None:
        work = workload("work", args.seed)
        args.unit_ms = args.job_seconds * 1000 / (sum(BASE + n for _, n in work) / len(work))
    print(f"nodes: 1 x omeroreadwrite (10 slots), 4 x omeroreadonly ({SLOWDOWN}x slower, 1 slot, one job at a "
          f"time); unit {args.unit_ms:.2f} ms, seed {args.seed}")
    rows = [bench(shape, args.seed, args.unit_ms) for shape in shapes]
    # Overhead: page per job (= per image); ours per job (a lane's session:
    # its start, and every gap between two of its images) and per image.
    print(f"{'shape':7} {'bound s':>8} {'page s':>8} {'page/b':>6} {'ours s':>8} {'ours/b':>6} "
          f"{'page ovh/job':>12} {'ours jobs':>9} {'img/job':>7} {'ovh/job':>8} {'ovh/img':>8}")
    for r in rows:
        print(f"{r['shape']:7} {r['bound']:8.2f} {r['page']:8.2f} {r['page'] / r['bound']:6.2f} {r['ours']:8.2f} "
              f"{r['ours'] / r['bound']:6.3f} {r['page_overhead'] * 1000:9.1f} ms {r['jobs']:9d} "
              f"{r['job_images'] / r['jobs']:7.1f} {r['overhead'] * 1000:5.0f} ms "
              f"{r['overhead'] * r['jobs'] / r['job_images'] * 1000:5.1f} ms")
    for r in rows:
        print(f"{r['shape']}: {r['filesets']} filesets, {r['images']} images, mean fast-node job {r['mean_job']:.2f} s; "
              f"bound = max(longest image {r['longest']:.2f} s, work/throughput {r['balanced']:.2f} s)")


if __name__ == "__main__":
    main()
