"""Time and peak memory of embedding one N-point scan (a merged map: street scans tiled over 160 m).

python benchmarks/bench_large_scan.py 5000000     # one thread, MinkUNet-34, random weights
"""

import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
from lima_zoo import LiMAEncoder
from lima_zoo.registry import get_model_info
from lima_zoo.synth.scan import street_scan

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
base = street_scan(seed=0)[:, :4]
reps = -(-n // len(base))
rng = np.random.default_rng(0)
tiles = [base + np.array([rng.uniform(-80, 80), rng.uniform(-80, 80), 0, 0], np.float32) for _ in range(reps)]
pts = np.concatenate(tiles)[:n].astype(np.float32)
enc = LiMAEncoder(get_model_info("vit-b-minkunet34").config).eval()


def hwm():
    return int([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]) / 2**20


before = hwm()
t = time.perf_counter()
vox = enc.backbone_input([torch.from_numpy(pts)], intensity_range=255.0)
tv = time.perf_counter() - t
f = enc.embed(pts, check_memory=False)
print(
    f"points {n:,} voxels {len(vox.feats):,}  voxelize {tv:.1f} s  embed {time.perf_counter() - t:.1f} s  peak RSS "
    f"{hwm():.2f} GiB (before {before:.2f})",
    flush=True,
)
