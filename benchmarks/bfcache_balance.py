"""Cache regeneration wall time on unequal nodes: the page's invocation vs
this project's run.sh vs the lower bound. Run by hand:

    .venv/bin/python benchmarks/bfcache_balance.py [--unit-ms 8] [--seed 1]

Model (stated, not measured): one omeroreadwrite node with 10 cores and
four omeroreadonly nodes, each ten times slower per job and with one core's
worth of throughput (more jobs at once queue on it: a lock). A job of a
fileset with n images takes (BASE + n) units on the fast node. IDR-like skew:
four plates of thousands of images among hundreds of small filesets, in
import (fileset) order for the page.

Both runs are real GNU parallel; `ssh` is replaced by a local stand-in (the
integration test covers real sshd), `omero` by a sleep of the job's time.
- page:  parallel --sshloginfile nodes -a ids.txt -j10 'omero render ... test --force'
- ours:  the rendered run.sh (slots from config defaults: 10 and 1, largest
         first, heavy images pinned to omeroreadwrite, dynamic dispatch)
- bound: max(longest job on the fast node, total work / total throughput)
"""
from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from pathlib import Path

import sys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.render import bfcache as render  # noqa: E402
from components.settings import build_settings  # noqa: E402

BASE = 5          # per-job overhead in units (login, startup)
PLATES = (3000, 2400, 1800, 1200)
SMALL = 396
SLOWDOWN = 10


def workload(seed: int) -> list[tuple[int, int]]:
    """(image ID, images in fileset) in fileset (import) order."""
    rng = random.Random(seed)
    sizes = [1 + min(300, int(rng.expovariate(1 / 12))) for _ in range(SMALL)]
    for plate in PLATES:
        sizes.insert(rng.randrange(len(sizes) + 1), plate)
    out, image = [], 1
    for n in sizes:
        out.append((image, n))
        image += n
    return out


def settings():
    raw = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY bench", "sshBastion": "203.0.113.10",
           "sshUser": "root", "bfcacheGeneration": "1"}
    return build_settings("bench", raw.get, lambda k: "KEY" if k == "sshPrivateKey" else None)


def write(path: Path, text: str, mode=0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def stand_ins(root: Path, unit_ms: float, fast: str, database: str) -> None:
    # ssh: run the remote command here, as that host; the database host
    # answers with the ID list (its forced command).
    write(root / "ssh", f"""#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -l|-i|-o|-p) shift 2;; -*) shift;; *) break;; esac; done
host=${{1#*@}}; shift; [ "${{1:-}}" = "--" ] && shift
if [ "$host" = {database} ]; then exec sort -t'|' -k2,2nr -k1,1n {root}/ids.txt; fi
export BENCH_NODE=$host
exec bash -c "$*"
""")
    write(root / "omero", f"""#!/bin/bash
id=${{!#}}; id=${{id#Image:}}
n=$(awk -v id="$id" -F'|' '$1 == id {{ print $2; exit }}' {root}/ids.txt)
secs=$(awk -v n="$n" 'BEGIN {{ printf "%.4f", ({BASE} + n) * {unit_ms} / 1000 }}')
if [ "$BENCH_NODE" = {fast} ]; then
    sleep "$secs"
else
    # A slow node: ten times slower, one job at a time however many are sent.
    exec 9> "{root}/lock-$BENCH_NODE"
    flock 9
    sleep "$(awk -v s="$secs" 'BEGIN {{ print s * {SLOWDOWN} }}')"
fi
echo "ok: Pixel:$id $secs"
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unit-ms", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    s = settings()
    nodes = render.nodes(s)
    fast = s.host("omeroreadwrite").fixed_ip
    database = s.host("database").fixed_ip
    root = Path(tempfile.mkdtemp(prefix="bfcache-bench-"))
    jobs = workload(args.seed)
    write(root / "ids.txt", "".join(f"{i}|{n}\n" for i, n in jobs), 0o644)
    stand_ins(root, args.unit_ms, fast, database)
    u = args.unit_ms / 1000

    fast_lanes = s.bfcache_slots["omeroreadwrite"]
    slow_nodes = len([n for n in nodes if n.role == "omeroreadonly"])
    throughput = fast_lanes + slow_nodes / SLOWDOWN   # units per unit time
    work = sum(BASE + n for _, n in jobs)
    bound = max((BASE + max(n for _, n in jobs)) * u, work * u / throughput)

    # The page: IDs in fileset order, -j10 on every node, no slot weights.
    write(root / "page-nodes", "".join(f"root@{n.address}\n" for n in nodes), 0o644)
    write(root / "page-ids", "".join(f"{i}\n" for i, _ in jobs), 0o644)
    t0 = time.monotonic()
    subprocess.run(["parallel", "--sshloginfile", str(root / "page-nodes"), "--ssh", str(root / "ssh"),
                    "-a", str(root / "page-ids"), "--results", str(root / "out.csv"), "-j10",
                    f"{root}/omero render -s localhost -u public -w public test --force"],
                   check=True, stdout=subprocess.DEVNULL, cwd=root, env={"HOME": str(root), "PATH": "/usr/bin:/bin", "SHELL": "/bin/bash"})
    page = time.monotonic() - t0

    # Ours: the rendered run.sh and render-one.sh, paths pointed here.
    files = {f.path: f.content for f in render.coordinator_files(s)}
    (render_one,) = [f.content for f in render.node_files(s, s.host("omeroreadwrite")) if f.path.endswith("render-one.sh")]
    write(root / "render-one.sh", render_one.replace(s.omero_bin, f"{root}/omero"))
    run = files[f"{render.LIBEXEC}/run.sh"]
    for path, local in ((f"{render.LIBEXEC}/render-one.sh", "render-one.sh"), (f"{render.CONF_DIR}/nodes", "nodes"),
                        (render.STATE_DIR, "state"), (f"{render.KEY_DIR}/id_ed25519", "key"),
                        (f"{render.KEY_DIR}/known_hosts", "known_hosts")):
        run = run.replace(path, f"{root}/{local}")
    run = run.replace('ssh_cmd="ssh -i', f'ssh_cmd="{root}/ssh -i')
    write(root / "run.sh", run)
    write(root / "nodes", files[f"{render.CONF_DIR}/nodes"], 0o644)
    t0 = time.monotonic()
    subprocess.run([str(root / "run.sh"), "1"], check=True, stdout=subprocess.DEVNULL, cwd=root,
                   env={"HOME": str(root), "PATH": "/usr/bin:/bin", "SHELL": "/bin/bash"})
    ours = time.monotonic() - t0
    pinned = sum(1 for line in (root / "state/1/queue.txt").read_text().split() if "@" in line)

    print(f"workload: {len(jobs)} filesets, {sum(n for _, n in jobs)} images, plates {PLATES}, "
          f"unit {args.unit_ms} ms, seed {args.seed}")
    print(f"nodes: 1 x omeroreadwrite ({fast_lanes} cores), {slow_nodes} x omeroreadonly "
          f"({SLOWDOWN}x slower, 1 core); ours pinned {pinned} heavy images to omeroreadwrite")
    print(f"lower bound: {bound:8.2f} s  = max(longest {(BASE + max(n for _, n in jobs)) * u:.2f} s, "
          f"work/throughput {work * u / throughput:.2f} s)")
    print(f"page -j10:   {page:8.2f} s  = {page / bound:.2f} x bound")
    print(f"ours:        {ours:8.2f} s  = {ours / bound:.2f} x bound  ({page / ours:.1f}x faster than the page)")


if __name__ == "__main__":
    main()
