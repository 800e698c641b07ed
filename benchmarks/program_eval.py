"""Program evaluation time under mocks as the read-only node count grows.

Usage: .venv/bin/python -m benchmarks.program_eval [--repeat N]
Prints, for 1, 8, 32 and 64 omeroreadonly nodes, the best wall time of N runs
of the real program (prod stack file) under Pulumi mocks, the resources
declared, their depends_on entries (what the state stores), and the time per
resource relative to the 1-node run: a ratio that stays near 1 means time
grows no worse than linearly. With a regeneration generation set, so that
every per-node step is declared.
"""
from __future__ import annotations

import argparse
import time

from components.offline import run_stack


def measure(nodes: int, repeat: int) -> tuple[float, int, int]:
    best, count, edges = float("inf"), 0, 0
    for _ in range(repeat):
        start = time.perf_counter()
        recording = run_stack("prod", {"omeroreadonlyCount": str(nodes), "bfcacheGeneration": "1"})
        best = min(best, time.perf_counter() - start)
        count = len(recording.resources)
        edges = sum(len(r.options.depends_on) for r in recording.resources)
    return best, count, edges


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run_stack("prod")  # warm imports
    print(f"{'nodes':>5} {'resources':>9} {'depends_on':>10} {'seconds':>8} {'ms/resource':>11} {'vs 1 node':>9}")
    base = None
    for nodes in (1, 8, 32, 64):
        seconds, count, edges = measure(nodes, args.repeat)
        per = seconds / count
        base = base or per
        print(f"{nodes:>5} {count:>9} {edges:>10} {seconds:>8.2f} {per * 1000:>11.2f} {per / base:>9.2f}")


if __name__ == "__main__":
    main()
