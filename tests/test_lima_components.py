"""LiMA's pieces on hand-made geometry: views, memory bank, propagation, mixing, loss, teacher, streams."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lima_zoo.training.augment import augment_points
from lima_zoo.training.config import AugmentConfig
from lima_zoo.training.datasets.frame import Frame
from lima_zoo.training.datasets.pairing import PixelPairs
from lima_zoo.training.lima.cross_view import aggregate_views, sample_pixel_features
from lima_zoo.training.lima.losses import averaged_loss, distillation_loss
from lima_zoo.training.lima.memory_bank import MemoryBank, point_entry
from lima_zoo.training.lima.mixing import lasermix, polarmix
from lima_zoo.training.lima.propagation import fuse, propagate
from lima_zoo.training.lima.targets import global_xyz
from lima_zoo.training.streams import StreamSampler


def _pairs(point, camera, uv=None):
    point, camera = torch.tensor(point), torch.tensor(camera)
    uv = torch.zeros(len(point), 2) if uv is None else torch.tensor(uv, dtype=torch.float32)
    return PixelPairs(point, camera, uv, torch.ones(len(point)))


def test_cross_view_aggregation_two_one_and_no_camera():
    f_a, f_b, f_c = torch.tensor([3.0, 0, 0, 0]), torch.tensor([0, 2.0, 0, 0]), torch.tensor([0, 0, 5.0, 1.0])
    # point 0 in cameras 0 and 1, point 1 in camera 1 only, point 2 in none
    unified, valid = aggregate_views(3, _pairs([0, 0, 1], [0, 1, 1]), torch.stack([f_a, f_b, f_c]))
    expected0 = F.normalize(F.normalize(f_a, dim=0) + F.normalize(f_b, dim=0), dim=0)
    torch.testing.assert_close(unified[0], expected0)
    torch.testing.assert_close(unified[1], F.normalize(f_c, dim=0))
    assert valid.tolist() == [True, True, False]
    assert torch.all(unified[2] == 0)


def test_pixel_sampling_is_bilinear_at_pixel_centres():
    # One 8x4-pixel camera, a 2x4 token map (D=1) whose value is the token column: the value at
    # pixel u is the column coordinate (u + 0.5) / 8 * 4 - 0.5, clamped to the first/last token centre.
    fmap = torch.arange(4.0).repeat(2, 1)[None, None]
    uv = [[3.5, 1.0], [0.0, 0.0], [5.5, 3.0]]
    out = sample_pixel_features(fmap, _pairs([0, 1, 2], [0, 0, 0], uv), [(8, 4)])
    expected = [min(max((u + 0.5) / 8 * 4 - 0.5, 0), 3) for u, _ in uv]
    torch.testing.assert_close(out[:, 0], torch.tensor(expected))


def test_memory_bank_fifo_reset_and_bound():
    bank = MemoryBank(streams=2, capacity=3)
    xyz, feats = torch.zeros(10, 3), torch.ones(10, 8)
    valid = torch.arange(10) % 2 == 0
    for k in range(5):
        bank.push(0, point_entry(xyz, feats * k, valid, (0, k)))
    assert [e.frame for e in bank.entries(0)] == [(0, 2), (0, 3), (0, 4)]  # oldest evicted first
    assert all(len(e.xyz) == 5 and e.feats.dtype == torch.float16 for e in bank.entries(0))  # only valid rows kept
    per_entry = bank.entries(0)[0].nbytes
    for k in range(50):
        bank.push(1, point_entry(xyz, feats, valid, (1, k)))
    assert bank.nbytes() == 6 * per_entry  # bounded by capacity, whatever was pushed
    bank.reset(0)
    assert bank.entries(0) == [] and len(bank.entries(1)) == 3


def _pose(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = (x, y, 0.0)
    return m


def _frame(points_global: np.ndarray, ego: np.ndarray, lidar_to_ego: np.ndarray) -> Frame:
    """A frame whose LiDAR sees the given global points (expressed in its own sensor frame)."""
    to_lidar = np.linalg.inv(ego @ lidar_to_ego)
    local = points_global @ to_lidar[:3, :3].T + to_lidar[:3, 3]
    pts = np.column_stack([local, np.zeros(len(local))]).astype(np.float32)
    return Frame(pts, None, lidar_to_ego, ego, [], "s", 0, 0)


def test_static_point_gets_remembered_feature_after_ego_moves_and_turns():
    lidar_to_ego = _pose(0.94, 0.0, -math.pi / 2) @ np.diag([1, 1, 1, 1.0])
    lidar_to_ego[2, 3] = 1.84
    static = np.array([[20.0, 5.0, 0.5]])
    moving_then, moving_now = np.array([[10.0, -3.0, 0.8]]), np.array([[12.5, -3.0, 0.8]])  # moved 2.5 m
    feat_static, feat_moving = F.normalize(torch.randn(1, 16), dim=1), F.normalize(torch.randn(1, 16), dim=1)
    bank = MemoryBank(1, capacity=5)
    # Three frames ago the ego was elsewhere, facing another way; both points had camera targets then.
    past = _frame(np.vstack([static, moving_then]), _pose(-15.0, 2.0, 0.6), lidar_to_ego)
    bank.push(
        0, point_entry(global_xyz(past), torch.cat([feat_static, feat_moving]), torch.tensor([True, True]), (0, 0))
    )
    for k in (1, 2):  # two frames that saw neither point
        bank.push(0, point_entry(torch.tensor([[500.0, 500.0, 0.0]]), feat_static, torch.tensor([True]), (0, k)))
    now = _frame(np.vstack([static, moving_now]), _pose(8.0, -1.0, -0.9), lidar_to_ego)
    xyz_now = global_xyz(now)
    np.testing.assert_allclose(
        xyz_now.numpy(), np.vstack([static, moving_now]), atol=1e-4
    )  # the pose chain undid the motion
    pooled, has, frames = propagate(xyz_now, bank.entries(0), cell=0.3)
    assert has.tolist() == [True, False] and frames.tolist() == [
        1,
        0,
    ]  # the moving object does not pull its old feature
    torch.testing.assert_close(pooled[0], feat_static[0].half().float())
    # No current camera sees either point: the static one still gets a target, from memory alone.
    target, mask = fuse(torch.zeros(2, 16), torch.tensor([False, False]), pooled, has, alpha=0.5)
    assert mask.tolist() == [True, False]
    torch.testing.assert_close(target[0], F.normalize(feat_static.half().float(), dim=1)[0])


def test_fusion_weights_current_and_remembered():
    u, p = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    valid, has = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    target, mask = fuse(u, valid, p, has, alpha=0.25)
    torch.testing.assert_close(target[0], F.normalize(0.25 * u[0] + 0.75 * p[0], dim=0))
    torch.testing.assert_close(target[1], u[1])
    torch.testing.assert_close(target[2], p[2])
    assert mask.all() and not target.requires_grad


def test_confidence_fusion_gives_way_to_the_current_target_where_memory_disagrees():
    u = F.normalize(torch.randn(4, 8), dim=1)
    p = torch.stack([u[0], -u[1], u[2] + 0.5 * F.normalize(torch.randn(8), dim=0), torch.randn(8)])
    valid, has = torch.tensor([True, True, True, False]), torch.ones(4, dtype=torch.bool)
    target, mask = fuse(u, valid, p, has, alpha=0.5, rule="confidence")
    pn = F.normalize(p, dim=1)
    torch.testing.assert_close(target[0], u[0])  # agreeing memory: the blend of two equal vectors
    torch.testing.assert_close(target[1], u[1])  # contradicting memory (cos < 0) is dropped
    share = 0.5 * float(u[2] @ pn[2])
    torch.testing.assert_close(target[2], F.normalize((1 - share) * u[2] + share * pn[2], dim=0))
    torch.testing.assert_close(target[3], pn[3])  # memory only: the memory
    assert mask.all()
    # a = 1 keeps every current target, whichever rule; memory fills the rest
    for rule in ("blend", "confidence"):
        t1, _ = fuse(u, valid, p, has, alpha=1.0, rule=rule)
        torch.testing.assert_close(t1[:3], u[:3])
        torch.testing.assert_close(t1[3], pn[3])
    with pytest.raises(ValueError, match="fusion rule 'max'"):
        fuse(u, valid, p, has, alpha=0.5, rule="max")


def test_mixing_keeps_each_points_own_target():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 4) * 10, torch.randn(400, 4) * 10
    ta, tb = torch.full((500,), 1.0), torch.full((400,), 2.0)
    for fn in (lasermix, polarmix):
        keep_a, keep_b = fn(a, b, gen)
        mixed = torch.cat([a[keep_a], b[keep_b]])
        targets = torch.cat([ta[keep_a], tb[keep_b]])
        assert len(mixed) == int(keep_a.sum() + keep_b.sum()) and 0 < keep_a.sum() < 500 and 0 < keep_b.sum() < 400
        # A point from a carries a's target, wherever it ended up.
        rows_from_a = torch.isin(mixed[:, 0], a[:, 0])
        assert torch.all(targets[rows_from_a] == 1.0) and torch.all(targets[~rows_from_a] == 2.0)


def test_lasermix_takes_alternate_inclination_bands():
    gen = torch.Generator().manual_seed(3)
    pitch = torch.linspace(-24.9, 2.9, 1000)
    pts = torch.stack(
        [torch.cos(torch.deg2rad(pitch)) * 10, torch.zeros(1000), torch.sin(torch.deg2rad(pitch)) * 10], 1
    )
    keep_a, keep_b = lasermix(pts, pts, gen)
    assert torch.all(keep_a ^ keep_b)  # the same geometry splits into complementary bands
    changes = int((keep_a[1:] != keep_a[:-1]).sum())
    assert 1 <= changes <= 5


def test_distillation_loss_values():
    t = F.normalize(torch.randn(4, 8), dim=1)
    assert float(distillation_loss(t * 3.0, t, torch.ones(4, dtype=torch.bool))) < 1e-5
    ortho = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert abs(float(distillation_loss(*ortho, torch.tensor([True]))) - math.sqrt(2)) < 1e-5
    s = torch.randn(4, 8, requires_grad=True)
    loss = distillation_loss(s, t, torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert float(loss) == 0.0 and torch.all(s.grad == 0)


def test_joint_and_separate_loss_averaging():
    # Three current-camera points at distance 1 and one memory-only point at distance 3.
    dist = torch.tensor([1.0, 1.0, 1.0, 3.0])
    cur, mem = torch.tensor([True, True, True, False]), torch.tensor([False, False, False, True])
    assert float(averaged_loss(dist, cur, mem, "joint", 1.0)) == pytest.approx(6 / 4)
    assert float(averaged_loss(dist, cur, mem, "joint", 0.5)) == pytest.approx(4.5 / 3.5)
    assert float(averaged_loss(dist, cur, mem, "separate", 1.0)) == pytest.approx(
        1 + 3
    )  # each term over its own points
    assert float(averaged_loss(dist, cur, mem, "separate", 0.25)) == pytest.approx(1 + 0.75)
    none = torch.zeros(4, dtype=torch.bool)
    assert (
        float(averaged_loss(dist, none, none, "joint", 1.0)) == 0
        and float(averaged_loss(dist, none, none, "separate", 1.0)) == 0
    )


def test_augmentation_is_rigid_up_to_scale():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(100, 4)
    q = augment_points(p, AugmentConfig(), gen)
    d_p, d_q = torch.pdist(p[:, :3]), torch.pdist(q[:, :3])
    ratio = d_q / d_p
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-4) and 0.95 <= float(ratio[0]) <= 1.05
    torch.testing.assert_close(q[:, 3], p[:, 3])


def test_stream_sampler_walks_sequences_in_order():
    lengths = [5, 7, 4, 6, 3]
    s = StreamSampler(lengths, streams=2, rank=0, world=2, seed=1, max_offset=3)
    steps = s.epoch(0)
    assert steps == StreamSampler(lengths, streams=2, rank=0, world=2, seed=1, max_offset=3).epoch(0)  # deterministic
    assert steps != s.epoch(1)  # reshuffled per epoch
    assert all(len(s.epoch(e)) == len(steps) == sum(lengths) // 4 for e in range(5))  # same length every epoch
    for b in range(2):
        walk = [step[b] for step in steps]
        for prev, cur in zip(walk, walk[1:]):
            assert (
                cur.sequence == prev.sequence and cur.position == prev.position + 1 and not cur.starts_sequence
            ) or cur.starts_sequence
        assert walk[0].starts_sequence
    other = StreamSampler(lengths, streams=2, rank=1, world=2, seed=1, max_offset=3).epoch(0)
    assert len(other) == len(steps)  # every rank runs the same number of steps
    seqs = lambda st: {i.sequence for step in st for i in step}  # noqa: E731
    assert not seqs(steps) & seqs(other)  # ranks walk different sequences


def test_teacher_is_frozen_and_offline_without_weights_fails_fast(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from huggingface_hub import constants

    from lima_zoo.hub import OfflineError
    from lima_zoo.training.config import TeacherConfig
    from lima_zoo.training.teacher import build_teacher

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="teacher.weights"):
        build_teacher(TeacherConfig(name="vit_small_patch14_dinov2"))
    assert time.perf_counter() - start < 10

    import timm
    from safetensors.torch import save_file

    # A DINOv2-architecture checkpoint at timm's native 518 px, loaded at our 224x448 (position
    # embeddings resampled) — random weights here, standing in for the real file a user passes.
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    save_file(ref.state_dict(), str(tmp_path / "dinov2_s.safetensors"))
    teacher = build_teacher(
        TeacherConfig(name="vit_small_patch14_dinov2", weights=str(tmp_path / "dinov2_s.safetensors"))
    )
    out = teacher([np.zeros((90, 160, 3), np.uint8), np.full((900, 1600, 3), 200, np.uint8)])
    assert out.shape == (2, 384, 16, 32) and not out.requires_grad
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(RuntimeError, match="frozen"):
        teacher.train()
    teacher.eval()  # allowed
    with pytest.raises(FileNotFoundError, match="teacher.weights"):
        build_teacher(TeacherConfig(weights=str(tmp_path / "nope.safetensors")))
