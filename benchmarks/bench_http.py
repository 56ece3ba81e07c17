"""The web layer alone, for choosing it: Starlette vs FastAPI (both on uvicorn) answering a POST of a
nuScenes-size scan (1.35 MB) with a feature-size body (13 MB of float32), no model in between.

Each framework runs in its own server process on a free localhost port; --clients threads send
--requests requests; prints requests/s, p50 / p99 and the server's peak RSS, side by side.

    python benchmarks/bench_http.py [--requests 200] [--clients 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import free_port, post, rss_mb  # noqa: E402

APPS = {
    "starlette": """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
ANSWER = bytes(13 * 2**20)
async def embed(request):
    await request.body()
    return Response(ANSWER, media_type="application/x-npy")
async def ready(request):
    return Response(b"ok")
app = Starlette(routes=[Route("/v1/embed", embed, methods=["POST"]), Route("/readyz", ready)])
""",
    "fastapi": """
from fastapi import FastAPI, Request
from fastapi.responses import Response
ANSWER = bytes(13 * 2**20)
app = FastAPI()
@app.post("/v1/embed")
async def embed(request: Request):
    await request.body()
    return Response(ANSWER, media_type="application/x-npy")
@app.get("/readyz")
async def ready():
    return Response(b"ok")
""",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    body = bytes(1_350_000)
    rows = []
    for name, source in APPS.items():
        port = free_port()
        code = source + f"\nimport uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    urllib.request.urlopen(url + "/readyz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.2)
            for _ in range(5):
                post(url + "/v1/embed", body)
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                answers = list(pool.map(lambda _: post(url + "/v1/embed", body), range(args.requests)))
            wall = time.perf_counter() - start
            latency = sorted(t for _, t in answers)
            rows.append(
                (
                    name,
                    args.requests / wall,
                    statistics.median(latency),
                    latency[int(0.99 * (len(latency) - 1))],
                    rss_mb(proc.pid, "VmHWM"),
                    sum(s != 200 for s, _ in answers),
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"web layer only: {args.requests} POSTs of 1.35 MB answered with 13 MB, {args.clients} clients, localhost")
    print("| framework | requests/s | p50 ms | p99 ms | server peak RSS MB | errors |")
    print("|---|---|---|---|---|---|")
    for name, rate, p50, p99, peak, errors in rows:
        print(f"| {name} | {rate:.1f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {peak:.0f} | {errors} |")


if __name__ == "__main__":
    main()
