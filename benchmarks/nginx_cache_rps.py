"""Requests per second for a cached thumbnail through the rendered proxy config
against the same request straight to the stub OMERO.web, in one run.

    .venv/bin/python -m benchmarks.nginx_cache_rps [--seconds 5] [--connections 32]
        [--backend-delay 0] [--client auto|wrk|python]

Loopback only: real nginx with the rendered files (rewritten as in the tests:
tmp paths, 127.0.0.1 ports, upstreams on the stub), the stub from
tests/integration/nginx_fixtures.py. Each measurement is bounded in time.
`wrk` (Debian package wrk) is used when present, else a threaded Python client;
the same client measures both sides.
"""
from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.integration.nginx_fixtures import ProxyUnderTest, make_cert

THUMB = "/webgateway/render_thumbnail/101/96/"


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--backend-delay", type=float, default=0.0,
                        help="seconds the stub takes per thumbnail (a real render is ~0.05-0.5 s)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    measure = rps_wrk if client == "wrk" else rps_python

    with tempfile.TemporaryDirectory(prefix="idr-bench-") as tmp:
        tmp = Path(tmp)
        proxy = ProxyUnderTest(tmp / "nginx", make_cert(tmp)).start()
        try:
            if args.backend_delay:
                proxy.state.delays[THUMB] = args.backend_delay
            proxied = f"http://127.0.0.1:{proxy.nginx.port('http')}{THUMB}"
            direct = f"http://{proxy.ro.address}{THUMB}"
            status, headers, _ = proxy.get("http", THUMB)          # fill the cache
            assert status == 200
            assert dict(proxy.get("http", THUMB)[1]).get("X-Cache-Status") == "HIT"
            backend_before = proxy.state.count(THUMB)
            cached = measure(proxied, args.seconds, args.connections)
            assert proxy.state.count(THUMB) == backend_before, "the cached run reached the backend"
            straight = measure(direct, args.seconds, args.connections)
        finally:
            proxy.stop()

    print(f"client={client} connections={args.connections} seconds={args.seconds} "
          f"backend_delay={args.backend_delay}s")
    print(f"cached thumbnail through nginx : {cached:10.0f} req/s")
    print(f"same request, stub backend     : {straight:10.0f} req/s")
    print(f"ratio                          : {cached / straight:10.1f}x")


if __name__ == "__main__":
    main()
