"""Requests per second for a cached thumbnail through the rendered proxy config,
against its ceiling (the same bytes served by the same nginx as a static file),
against the same request straight to the stub OMERO.web, and with the
monitoring's log exporter at work (mtail tailing the access log with the
program's idr-nginx.mtail, scraped every `--scrape-interval` seconds), in one run.

    .venv/bin/python -m benchmarks.nginx_cache_rps [--seconds 5] [--rounds 5] [--connections 32]
        [--body-bytes 4096] [--backend-delay 0] [--client auto|wrk|python] [--scrape-interval 1]

Loopback only: real nginx with the rendered files (rewritten as in the tests:
tmp paths, 127.0.0.1 ports, upstreams on the stub), the stub from
tests/support/nginx.py. The static ceiling is one extra server
added to the test copy only, in the same http block (same workers, sendfile,
logging, headers). The three are measured in turn, `--rounds` times (static
and cached back to back, in alternating order), and the medians are
reported: of each rate, and of each round's cached/static ratio, so a
neighbour's load on the machine hits both sides alike. The exporter's cost
is the median of each round's (cached with mtail) / (cached) ratio, mtail
started before and stopped after its measurement (it reads only new lines),
at the scheduling policy its unit gives it (CPUSchedulingPolicy=, else
Nice=), and how long it took to count the last line after the measurement
(its catch-up) is reported. Its noise floor is
the same ratio for a second measurement of the cached thumbnail without
mtail (A/A), taken in the same rounds: mtail's cost is measurable when
its median ratio falls below the A/A ratios' lower quartile.
`wrk` (Debian package wrk) is used when present, else a threaded Python
client; the same client measures all three.
"""
from __future__ import annotations

import argparse
import http.client
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from components.render import monitoring
from components.render import nginx as render
from tests.support.nginx import ProxyUnderTest, free_port, make_cert
from tests.support.tools import tool

THUMB = "/webgateway/render_thumbnail/101/96/"
STATIC = "/ceiling/thumbnail"
TARGET = 0.8          # cached / static: what the cache costs over serving a file


def rps_wrk(url: str, seconds: float, connections: int) -> float:
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", url],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} failed responses\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def rps_python(url: str, seconds: float, connections: int) -> float:
    host, port, path = re.match(r"http://([^:/]+):(\d+)(/.*)", url).groups()
    deadline = time.monotonic() + seconds
    counts = [0] * connections
    errors = []

    def worker(i):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            while time.monotonic() < deadline:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(resp.status)
                    return
                counts[i] += 1
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{url}: failed with HTTP {errors[0]}")
    return sum(counts) / (time.monotonic() - started)


def add_static_server(proxy: ProxyUnderTest, root: Path, port: int) -> None:
    """The ceiling: a server in the test copy of idr.conf serving files from
    `root`, with the public servers' headers (so the answers weigh the same)."""
    conf = proxy.nginx.files[render.IDR_CONF]
    conf.write_text(conf.read_text() + f"""
# benchmark only: the same bytes as a static file
server {{
    listen 127.0.0.1:{port};
    add_header X-Cache-Status $upstream_cache_status always;
    add_header Access-Control-Allow-Origin "*" always;
    root {root};
    default_type text/plain;
}}
""")


class Exporter:
    """mtail on the access log as the proxy runs it, and a scraper thread
    standing in for Prometheus (more often than its 15 s: a bound)."""

    def __init__(self, tmp: Path, log: Path, scrape_interval: float, probe_port: int):
        progs = tmp / "mtail-progs"
        progs.mkdir(exist_ok=True)
        (progs / monitoring.MTAIL_PROGRAM).write_text((monitoring.FILES / monitoring.MTAIL_PROGRAM).read_text())
        self.port = free_port()
        self.proc = subprocess.Popen([*unit_scheduling()[0], tool("mtail"), "--progs", str(progs),
                                      "--logs", str(log), "--address", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.interval, self.scrapes, self.stopping = scrape_interval, 0, threading.Event()
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(self.port, "/metrics")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("mtail did not start")
            time.sleep(0.1)
        # mtail reads the log from its end once it has opened it: wait for that.
        while self.lines_seen() == 0:
            get(probe_port, "/about/")
            if time.monotonic() > deadline:
                raise SystemExit("mtail counts no line of the access log")
            time.sleep(0.1)
        self.thread = threading.Thread(target=self._scrape, daemon=True)
        self.thread.start()

    def _scrape(self):
        while not self.stopping.wait(self.interval):
            get(self.port, "/metrics")
            self.scrapes += 1

    def lines_seen(self) -> float:
        body = get(self.port, "/metrics")[2].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("idr_nginx_requests_total{"))

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def unit_scheduling() -> tuple[list[str], str]:
    """How the proxy's mtail unit schedules mtail (CPUSchedulingPolicy=idle,
    else its Nice=), as a command prefix, so mtail runs here as it runs
    there; and a label."""
    unit = (monitoring.FILES / "idr-mtail.service").read_text()
    if re.search(r"^CPUSchedulingPolicy=idle$", unit, re.M):
        return ["chrt", "--idle", "0"], "SCHED_IDLE"
    found = re.search(r"^Nice=(-?\d+)$", unit, re.M)
    nice = int(found[1]) if found else 0
    return ["nice", "-n", str(nice)], f"nice {nice}"


def log_lines(log: Path) -> int:
    with log.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def catch_up(exporter: Exporter, made: float, ended: float, limit: float = 60.0) -> tuple[float, float]:
    """Lines mtail counted once it stops counting more (or has them all), and
    the seconds from the load's end (`ended`, monotonic) to then."""
    last, still = exporter.lines_seen(), 0
    while time.monotonic() - ended < limit and last < made and still < 5:
        time.sleep(0.1)
        seen = exporter.lines_seen()
        still = still + 1 if seen == last else 0
        last = seen
    return last, time.monotonic() - ended


def get(port: int, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body-bytes", type=int, default=4096,
                        help="size of the thumbnail's body (an IDR 96px JPEG thumbnail is a few kB)")
    parser.add_argument("--backend-delay", type=float, default=0.0,
                        help="seconds the stub takes per thumbnail (a real render is ~0.05-0.5 s)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes of mtail during its measurement (Prometheus: 15)")
    args = parser.parse_args(argv)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    measure = rps_wrk if client == "wrk" else rps_python

    results = {"static": [], "cached": [], "backend": [], "exporter": [], "again": []}
    counted = []      # requests mtail counted / requests made, per round
    caught_up = []    # seconds from the measurement's end to mtail's last line
    with tempfile.TemporaryDirectory(prefix="idr-bench-") as tmp:
        tmp = Path(tmp)
        proxy = ProxyUnderTest(tmp / "nginx", make_cert(tmp))
        static_port, static_root = free_port(), tmp / "static"
        add_static_server(proxy, static_root, static_port)
        try:
            proxy.start()
            proxy.state.padding = max(0, args.body_bytes - len(f"{THUMB} v1 from omeroreadonly\n"))
            if args.backend_delay:
                proxy.state.delays[THUMB] = args.backend_delay
            http_port = proxy.nginx.port("http")
            status, _h, body = get(http_port, THUMB)                # fill the cache
            assert status == 200
            status, headers, cached_body = get(http_port, THUMB)
            assert headers.get("X-Cache-Status") == "HIT" and cached_body == body
            # The ceiling serves exactly the bytes the cache does.
            (static_root / STATIC.lstrip("/")).parent.mkdir(parents=True)
            (static_root / STATIC.lstrip("/")).write_bytes(cached_body)
            status, _h, static_body = get(static_port, STATIC)
            assert status == 200 and static_body == cached_body
            urls = {"static": f"http://127.0.0.1:{static_port}{STATIC}",
                    "cached": f"http://127.0.0.1:{http_port}{THUMB}",
                    "backend": f"http://{proxy.ro.address}{THUMB}"}
            log = proxy.tmp / "log" / "access.log"
            for n in range(args.rounds):
                pair = ("static", "cached") if n % 2 == 0 else ("cached", "static")
                # The A/A control ("again") and mtail's run swap places each round.
                order = (*pair, "exporter", "again", "backend") if n % 2 == 0 else \
                    ("again", "exporter", *pair, "backend")
                for what in order:
                    before = proxy.state.count(THUMB)
                    if what == "exporter":
                        exporter = Exporter(tmp, log, args.scrape_interval, http_port)
                        warm = exporter.lines_seen()
                        proxy.flush_logs()
                        lines_before = log_lines(log)
                        rate = measure(urls["cached"], args.seconds, args.connections)
                        ended = time.monotonic()
                        proxy.flush_logs()                  # the buffered log's last lines
                        made = log_lines(log) - lines_before
                        seen, seconds = catch_up(exporter, warm + made, ended)
                        counted.append((seen - warm) / made if made else 0)
                        caught_up.append(seconds)
                        exporter.stop()
                        results[what].append(rate)
                    else:
                        results[what].append(measure(urls["cached" if what == "again" else what], args.seconds,
                                                     args.connections))
                    if what in ("cached", "exporter", "again"):
                        assert proxy.state.count(THUMB) == before, "the cached run reached the backend"
        finally:
            proxy.stop()

    median = {what: statistics.median(values) for what, values in results.items()}
    print(f"client={client} connections={args.connections} seconds={args.seconds} rounds={args.rounds} "
          f"body={len(cached_body)} B backend_delay={args.backend_delay}s")
    print(f"{'':34} {'req/s (median)':>14}   each round")
    for what, label in (("static", "static file, same nginx (ceiling)"), ("cached", "cached thumbnail through nginx"),
                        ("exporter", "cached, mtail tailing the log"), ("again", "cached again (A/A control)"),
                        ("backend", "same request, stub backend")):
        rounds = " ".join(f"{v:.0f}" for v in results[what])
        print(f"{label:34} {median[what]:14.0f}   {rounds}")
    ratios = [c / s for c, s in zip(results["cached"], results["static"])]
    ratio = statistics.median(ratios)
    print(f"{'cached / static':34} {ratio:14.2f}   {' '.join(f'{r:.2f}' for r in ratios)}   "
          f"target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}")
    print(f"{'cached / backend':34} {median['cached'] / median['backend']:13.1f}x")
    # Each round's pair measured back to back; the exporter's measurement is
    # paired with that round's cached one.
    exporter_ratios = [e / c for e, c in zip(results["exporter"], results["cached"])]
    control = [a / c for a, c in zip(results["again"], results["cached"])]
    print(f"{'cached again / cached (A/A)':34} {statistics.median(control):14.2f}   "
          f"{' '.join(f'{r:.2f}' for r in control)}   (the noise floor)")
    low_quartile = statistics.quantiles(control, n=4)[0] if len(control) > 1 else control[0]
    verdict = (f"measurable: below the A/A rounds' lower quartile {low_quartile:.2f}"
               if statistics.median(exporter_ratios) < low_quartile
               else f"not measurable: at or above the A/A rounds' lower quartile {low_quartile:.2f}")
    print(f"{'cached with mtail / cached':34} {statistics.median(exporter_ratios):14.2f}   "
          f"{' '.join(f'{r:.2f}' for r in exporter_ratios)}   (scrape every {args.scrape_interval}s, mtail at "
          f"{unit_scheduling()[1]}; cost {verdict})")
    print(f"{'lines mtail counted / requests':34} {statistics.median(counted):14.2f}   "
          f"{' '.join(f'{r:.2f}' for r in counted)}")
    print(f"{'mtail catch-up after the run (s)':34} {statistics.median(caught_up):14.2f}   "
          f"{' '.join(f'{r:.2f}' for r in caught_up)}   (its last line counted after the load ended)")


if __name__ == "__main__":
    main()
