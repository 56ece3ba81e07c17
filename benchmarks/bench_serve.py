"""``lima-zoo serve`` under load, beside the same scans embedded in-process, in one run.

Starts the server on a free localhost port (MinkUNet-34, random weights, this machine's threads),
then sends --scans nuScenes-size scans (~34k points, as .pcd.bin bodies) from 1, 4 and 16
concurrent clients, with dynamic batching on (--max-wait-ms 5) and off (--max-batch-points 1).
Prints scans/s, p50 / p99 latency, errors by status, the server's RSS after warm-up and at the
end (and its peak), and the in-process ``embed`` rate of the same scans. Localhost only, bounded
by count and time.

    python benchmarks/bench_serve.py [--scans 32] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sparse import machine_summary  # noqa: E402

from lima_zoo import LiMAEncoder  # noqa: E402
from lima_zoo.synth.scan import street_scan  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - start


def run_server(model: Path, batching: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    extra = ["--max-wait-ms", "5"] if batching else ["--max-batch-points", "1", "--max-wait-ms", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lima_zoo.cli", "serve", str(model), "--port", str(port), "--max-queue", "256", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=32)
    ap.add_argument("--clients", default="1,4,16")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    scans = [street_scan(seed=400 + i % 8) for i in range(args.scans)]  # x, y, z, intensity, ring: .pcd.bin
    bodies = [s.astype(np.float32).tobytes() for s in scans]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = LiMAEncoder().save_pretrained(Path(tmp) / "model")
        encoder = LiMAEncoder.from_pretrained(model)
        encoder.embed(scans[0][:, :4])
        start = time.perf_counter()
        for s in scans:
            encoder.embed(s[:, :4])
        in_process = len(scans) / (time.perf_counter() - start)
        del encoder
        rows = []
        for batching in (True, False):
            proc, url = run_server(model, batching)
            try:
                post(url + "/v1/embed?format=pcd.bin", bodies[0])  # warm-up
                warm = rss_mb(proc.pid, "VmRSS")
                for n in clients:
                    start = time.perf_counter()
                    with ThreadPoolExecutor(n) as pool:
                        answers = list(pool.map(lambda b: post(url + "/v1/embed?format=pcd.bin", b), bodies))
                    wall = time.perf_counter() - start
                    latency = sorted(t for _, t in answers)
                    p99 = latency[min(len(latency) - 1, int(round(0.99 * (len(latency) - 1))))]
                    rows.append(
                        (
                            batching,
                            n,
                            len(bodies) / wall,
                            statistics.median(latency),
                            p99,
                            Counter(s for s, _ in answers),
                            warm,
                            rss_mb(proc.pid, "VmRSS"),
                            rss_mb(proc.pid, "VmHWM"),
                        )
                    )
                    print(".", end="", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    print(f"\nlima-zoo serve, MinkUNet-34 (random weights), {args.scans} nuScenes-size scans per row, localhost")
    print(machine_summary() + f"; torch threads {torch.get_num_threads()}, pid {os.getpid()}")
    print(f"in-process embed of the same scans: {in_process:.2f} scans/s\n")
    print("| batching | clients | scans/s | vs in-process | p50 s | p99 s | p99 / p50 | statuses ", end="")
    print("| RSS warm / end / peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batching, n, rate, p50, p99, statuses, warm, end, peak in rows:
        print(
            f"| {'on' if batching else 'off'} | {n} | {rate:.2f} | {rate / in_process:.2f}x | {p50:.2f} | {p99:.2f} "
            f"| {p99 / p50:.2f} | {dict(statuses)} | {warm:.0f} / {end:.0f} / {peak:.0f} |"
        )


if __name__ == "__main__":
    main()
