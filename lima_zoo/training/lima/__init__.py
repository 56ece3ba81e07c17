"""The LiMA method, one file per box of the paper, apart from the run machinery around it:

* ``targets.py`` — the frozen image teacher's features sampled at every (point, camera) pair;
* ``cross_view.py`` — cross-view aggregation: one unified target per point from its cameras;
* ``memory_bank.py`` — the per-stream FIFO of past frames (their targets or their camera maps);
* ``propagation.py`` / ``reprojection.py`` — reading the past frames at the current points (a voxel
  hash of global xyz, or re-projection into the remembered cameras with an occlusion check);
* ``long_horizon.py`` — long-term propagation and temporal fusion into the final target;
* ``mixing.py`` — cross-sequence mixing (LaserMix / PolarMix) of the streams' scans;
* ``losses.py`` — the distillation loss and how it averages over current and memory-only points.

The trainer (``training/trainer.py``) calls these in that order each step.
"""
