"""CPU contention: the sparse engine idle and beside N busy processes, per OpenMP wait policy.

For each workload (MinkUNet-34 forward on the 128-beam scan with the fused kernel and with the
pure-PyTorch path; a MinkUNet-14 training step on the 32-beam scan) and each wait setting
(OpenMP's default, OMP_WAIT_POLICY=PASSIVE, and lima-zoo's choice, ``lima_zoo.cpu.configure_threads``
as the CLI runs it), a fresh process times the median of --repeats runs, idle and with --busy
processes spinning on the same CPUs. Printed side by side with the slowdown under contention; the
ideal is about the CPU share the process gets.

    python benchmarks/bench_contention.py [--busy 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = ("fused forward", "pure forward", "train step")
SETTINGS = ("default", "passive", "lima-zoo")

CHILD = r"""
import json, os, statistics, sys, time
setting, workload, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
if setting == "lima-zoo":
    from lima_zoo.cpu import configure_threads
    plan = configure_threads()
import torch
from lima_zoo.config import PreprocessConfig
from lima_zoo.models import MinkUNet
from lima_zoo.sparse import SparseTensor
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize

beams, name = (32, "minkunet14") if workload == "train step" else (128, "minkunet34")
vox = voxelize([torch.from_numpy(street_scan(seed=0, beams=beams))], PreprocessConfig())
torch.manual_seed(0)
net = MinkUNet(name)

def once():
    if workload == "train step":
        net.train()
        out = net(SparseTensor(vox.feats, vox.coords)).feats
        out.square().mean().backward()
        net.zero_grad(set_to_none=True)
    else:
        net.eval()
        with torch.inference_mode():
            net(SparseTensor(vox.feats, vox.coords))

once()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    once()
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times), "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY", "default")}))
"""


def measure(setting: str, workload: str, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["LIMA_ZOO_KERNEL"] = "torch" if workload == "pure forward" else "fused"
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting, workload, str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5)  # running before the measured process starts (and looks)
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the measured one")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_sparse import machine_summary

    print(f"sparse engine under CPU contention: idle vs {args.busy} busy process(es); median of {args.repeats}")
    print(machine_summary())
    rows = {}
    for busy in (0, args.busy):
        procs = start_busy(busy)
        try:
            for workload in WORKLOADS:
                for setting in SETTINGS:
                    rows[workload, setting, busy] = measure(setting, workload, args.repeats)
                    print(".", end="", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    print()
    print(f"\n| workload | wait | idle s | {args.busy} busy s | slowdown | vs default idle | threads, policy (busy) |")
    print("|---|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        base = rows[workload, "default", 0]["seconds"]
        for setting in SETTINGS:
            idle, busy = rows[workload, setting, 0], rows[workload, setting, args.busy]
            print(
                f"| {workload} | {setting} | {idle['seconds']:.3f} | {busy['seconds']:.3f} | "
                f"{busy['seconds'] / idle['seconds']:.2f}x | {idle['seconds'] / base:.2f}x | "
                f"{busy['threads']}, {busy['policy']} |"
            )
    share = os.cpu_count() / (os.cpu_count() + args.busy) if os.cpu_count() else 0
    print(f"\nthe CPU share a {os.cpu_count()}-thread process gets beside {args.busy} busy one(s): ~{share:.2f}")


if __name__ == "__main__":
    main()
