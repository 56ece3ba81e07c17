"""The pretraining loop end to end on a tiny synthetic world: resume exactness, variants, DDP, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from conftest import free_port  # noqa: E402

from lima_zoo.synth import generate  # noqa: E402
from lima_zoo.training.config import list_recipes, load_recipe  # noqa: E402
from lima_zoo.training.synthetic_teacher import make_synthetic_teacher  # noqa: E402
from lima_zoo.training.trainer import train  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("world"), "nuscenes", scenes=3, frames=4, seed=11, image_scale=0.1, workers=2
    )


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    make_synthetic_teacher(out, seed=2000, scenes=1, frames=1, steps=10, batch=2, image_size=(56, 112), dim=32, depth=1)
    return out


def _cfg(world: Path, teacher: Path, *extra: str):
    return load_recipe(
        "synthetic-tiny",
        [
            f"data.path={world}",
            "data.synthetic=false",
            f"teacher.weights={teacher}",
            "teacher.image_size=[56, 112]",
            "encoder.head_dim=32",
            "encoder.preprocess.voxel_type=cartesian",
            "encoder.preprocess.voxel_size=[0.5, 0.5, 0.5]",
            "optim.max_steps=4",
            "run.checkpoint_every=2",
            "lima.frames=3",
            "lima.memory_weight=1.0",  # the six-camera recipes drop memory-only targets; these tests train on them
            *extra,
        ],
    )


def _losses(out: Path) -> list[float]:
    return [json.loads(r)["loss"] for r in (out / "log.jsonl").read_text().splitlines()]


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_world, tiny_teacher, tmp_path):
    cfg = _cfg(tiny_world, tiny_teacher, "lima.align=cell")  # the re-projection reading resumes in its own test below
    train(cfg, tmp_path / "a")
    full = _losses(tmp_path / "a")
    assert len(full) == 4

    def interrupt(rec: dict) -> None:
        if rec["step"] == 3:  # after step 3 ran; the last checkpoint is step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", on_step=interrupt)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "b")
    train(cfg, tmp_path / "b", resume=True)
    resumed = _losses(tmp_path / "b")
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, full, rtol=1e-6)
    # The memory bank was rebuilt: remembered targets are the same in both runs, step by step.
    mem = lambda d: [json.loads(r)["memory_only_fraction"] for r in (d / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert mem(tmp_path / "b") == mem(tmp_path / "a") and max(mem(tmp_path / "a")) > 0

    from lima_zoo import LiMAEncoder

    enc = LiMAEncoder.from_pretrained(tmp_path / "b" / "encoder")
    pts = np.fromfile(next((tiny_world / "samples" / "LIDAR_TOP").glob("*.pcd.bin")), dtype=np.float32).reshape(-1, 5)[
        :, :4
    ]
    feats = enc.embed(pts)
    assert feats.shape == (len(pts), 96) and np.isfinite(feats).all()
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000
    assert any((tmp_path / "b" / "tensorboard").iterdir())


def test_resume_checks_first_and_survives_a_torn_log_and_a_moved_run_folder(tiny_world, tiny_teacher, tmp_path):
    import dataclasses
    import shutil

    # Nothing to resume: refused before a world is generated or a teacher trained (minutes of work).
    with pytest.raises(FileNotFoundError, match=r"--resume: .*last.pt does not exist"):
        train(load_recipe("synthetic-tiny"), tmp_path / "fresh", resume=True)
    assert not (tmp_path / "fresh").exists()

    train(_cfg(tiny_world, tiny_teacher), tmp_path / "full")
    # A run whose world and teacher live inside its folder (what synthetic-tiny makes under --out).
    cfg = _cfg(tiny_world, tiny_teacher)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path="", synthetic=True),
        teacher=dataclasses.replace(cfg.teacher, weights=""),
    )
    first = tmp_path / "first"
    shutil.copytree(tiny_world, first / "data")
    shutil.copytree(tiny_teacher, first / "teacher")

    def interrupt(rec: dict) -> None:
        if rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, first, on_step=interrupt)
    with open(first / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1')  # a crash tore the last line mid-write
    moved = tmp_path / "moved"
    first.rename(moved)
    train(cfg, moved, resume=True)
    np.testing.assert_allclose(_losses(moved), _losses(tmp_path / "full"), rtol=1e-6)


def test_single_frame_and_no_bank_variants(tiny_world, tiny_teacher, tmp_path):
    train(_cfg(tiny_world, tiny_teacher, "lima.frames=1", "optim.max_steps=2"), tmp_path / "one")
    one = [json.loads(r) for r in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert all(r["memory_only_fraction"] == 0 and r["teacher_images"] == 12 and r["bank_mb"] == 0 for r in one)

    train(_cfg(tiny_world, tiny_teacher, "optim.max_steps=3"), tmp_path / "bank")
    train(_cfg(tiny_world, tiny_teacher, "optim.max_steps=3", "lima.memory_bank=false"), tmp_path / "nobank")
    bank = [json.loads(r) for r in (tmp_path / "bank" / "log.jsonl").read_text().splitlines()]
    nobank = [json.loads(r) for r in (tmp_path / "nobank" / "log.jsonl").read_text().splitlines()]
    assert [r["teacher_images"] for r in bank] == [12, 12, 12]  # the current frame only
    assert sum(r["teacher_images"] for r in nobank) > 36  # past frames re-run through the teacher
    assert nobank[-1]["bank_mb"] == 0
    # Same targets either way (the bank only stores them in fp16): same losses.
    np.testing.assert_allclose([r["loss"] for r in nobank], [r["loss"] for r in bank], rtol=2e-3)


def test_resume_from_a_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    from lima_zoo.training.run import load_checkpoint

    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt", {}, torch.device("cpu"))
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a lima-zoo training checkpoint"):
        load_checkpoint(tmp_path / "other.pt", {}, torch.device("cpu"))


def test_config_errors_are_clear(tiny_world, tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['lrr'\]; valid keys: .*'lr'"):
        load_recipe("synthetic-tiny", ["optim.lrr=0.1"])
    with pytest.raises(ValueError, match="packaged recipe; recipes: ") as err:
        load_recipe("vit-q-minkunet34")
    listed = str(err.value).split("recipes: ", 1)[1].split(", ")
    assert listed == list_recipes() and {"synthetic-tiny", "vit-b-minkunet34", "vit-b-spvcnn", "vit-b-frnet"} <= set(
        listed
    )
    with pytest.raises(ValueError, match="expected int"):
        load_recipe("synthetic-tiny", ["optim.streams=two"])
    with pytest.raises(ValueError, match="encoder.head_dim=128 but the teacher outputs 32-d"):
        train(_cfg(tiny_world, tiny_teacher, "encoder.head_dim=128"), tmp_path / "x")
    for name in ("vit-s-minkunet34", "vit-b-minkunet34", "vit-l-minkunet34"):
        cfg = load_recipe(name)
        assert cfg.lima.frames == 6 and cfg.encoder.backbone == "minkunet34" and cfg.teacher.name == cfg.encoder.teacher


def test_ddp_two_cpu_processes_killed_and_resumed(tiny_world, tiny_teacher, tmp_path):
    """torchrun, 2 gloo processes: a run SIGKILLed mid-way (every process at once) resumes from its
    last checkpoint to the losses of an uninterrupted run; one process cannot resume it."""
    import signal
    import time

    sets = [
        "data.synthetic=false",
        f"teacher.weights={tiny_teacher}",
        "teacher.image_size=[56, 112]",
        "encoder.head_dim=32",
        "encoder.preprocess.voxel_type=cartesian",
        "encoder.preprocess.voxel_size=[0.5, 0.5, 0.5]",
        "optim.max_steps=6",
        "run.checkpoint_every=2",
        "optim.streams=1",
        "lima.frames=2",
        "run.threads=1",
    ]

    def cmd(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "lima_zoo.cli",
            "train",
            "synthetic-tiny",
            "--data",
            str(tiny_world),
            "--out",
            str(out),
            *extra,
        ] + [a for s in sets for a in ("--set", s)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd(tmp_path / "full"), capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "2 process(es)" in res.stdout
    full = _losses(tmp_path / "full")
    assert len(full) == 6 and (tmp_path / "full" / "encoder" / "model.safetensors").exists()

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 600  # a hang guard, not a speed check
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "log.jsonl").exists() and len(_losses(killed)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, no chance to clean up
    proc.wait(timeout=60)
    ckpt = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and 2 <= ckpt["step"] < 6 and not (killed / "encoder").exists(), (
        "the run was not killed mid-way"
    )
    res = subprocess.run(cmd(killed, "--resume"), capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    np.testing.assert_allclose(_losses(killed), full, rtol=1e-6)
    with pytest.raises(ValueError, match="written by 2 processes, resuming with 1"):
        train(load_recipe("synthetic-tiny", [f"data.path={tiny_world}", *sets]), killed, resume=True)


@pytest.mark.parametrize("backbone", ["spvcnn18", "frnet18"])
def test_point_output_students_train_and_resume_exactly(backbone, tiny_world, tiny_teacher, tmp_path):
    """The backbone is one config field: SPVCNN (point-voxel) and FRNet (range view), per-point rows
    both, go through the same loop, memory and resume."""
    cfg = _cfg(tiny_world, tiny_teacher, f"encoder.backbone={backbone}", "encoder.width=0.25")
    train(cfg, tmp_path / "a")

    def interrupt(rec: dict) -> None:
        if rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", on_step=interrupt)
    train(cfg, tmp_path / "b", resume=True)
    full = _losses(tmp_path / "a")
    assert len(full) == 4 and full[-1] < full[0] * 1.5
    np.testing.assert_allclose(_losses(tmp_path / "b"), full, rtol=1e-6)
    from lima_zoo import LiMAEncoder

    enc = LiMAEncoder.from_pretrained(tmp_path / "a" / "encoder")
    assert enc.config.backbone == backbone and enc.config.out_dim == 24


def test_gradient_accumulation_walks_one_frame_per_micro_step(tiny_world, tiny_teacher, tmp_path):
    train(_cfg(tiny_world, tiny_teacher, "optim.max_steps=2", "optim.grad_accum=2"), tmp_path / "acc")
    recs = [json.loads(r) for r in (tmp_path / "acc" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["teacher_images"] == 2 * 12 for r in recs)  # 2 micro-steps x 2 streams x 6 cameras


def test_reprojection_memory_with_drawn_cameras_resumes_exactly_and_matches_no_bank(tiny_world, tiny_teacher, tmp_path):
    extra = ("lima.align=reproject", "lima.cameras_per_frame=2", "lima.loss_average=separate", "lima.memory_weight=0.5")
    cfg = _cfg(tiny_world, tiny_teacher, *extra)
    train(cfg, tmp_path / "a")
    full = [json.loads(r) for r in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(r["teacher_images"] == 4 for r in full)  # 2 streams x 2 drawn cameras
    assert max(r["memory_only_fraction"] for r in full) > 0 and max(r["bank_depth"] for r in full) > 0

    def interrupt(rec: dict) -> None:
        if rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", on_step=interrupt)
    train(cfg, tmp_path / "b", resume=True)  # the bank replay re-draws the same cameras
    np.testing.assert_allclose(_losses(tmp_path / "b"), [r["loss"] for r in full], rtol=1e-6)
    # Re-running the teacher on past frames instead of remembering their maps gives the same targets.
    train(_cfg(tiny_world, tiny_teacher, *extra, "lima.memory_bank=false"), tmp_path / "nobank")
    np.testing.assert_allclose(_losses(tmp_path / "nobank"), [r["loss"] for r in full], rtol=2e-3)


def test_student_scans_per_stream_and_consistency_term(tiny_world, tiny_teacher, tmp_path):
    train(
        _cfg(tiny_world, tiny_teacher, "optim.max_steps=1", "lima.scans_per_stream=1", "lima.mixing=lasermix"),
        tmp_path / "one",
    )
    one = json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[0])
    assert one["loss_mixed"] == 0 and one["loss"] == pytest.approx(
        one["loss_current"]
    )  # the mixed scenes are the only scans
    train(_cfg(tiny_world, tiny_teacher, "optim.max_steps=1", "lima.consistency_weight=0.5"), tmp_path / "cons")
    cons = json.loads((tmp_path / "cons" / "log.jsonl").read_text().splitlines()[0])
    assert cons["loss_consistency"] > 0
    assert cons["loss"] == pytest.approx(
        cons["loss_current"] + cons["loss_mixed"] + 0.5 * cons["loss_consistency"], rel=1e-5
    )
    with pytest.raises(ValueError, match="consistency_weight > 0 .* needs mixing"):
        load_recipe("synthetic-tiny", ["lima.consistency_weight=1", "lima.mixing=none"])
    with pytest.raises(ValueError, match="data.cameras: no camera 'CAM_NOPE'"):
        train(_cfg(tiny_world, tiny_teacher, "data.cameras=[CAM_NOPE]"), tmp_path / "nope")
    for name, k in (("scalr-vit-b-minkunet34", 1), ("single-frame-vit-b-minkunet34", 0)):
        cfg = load_recipe(name)
        assert cfg.lima.frames == 1 and cfg.lima.cameras_per_frame == k and cfg.lima.mixing == "none"


def test_frame_loader_workers_give_the_same_run_and_resume(tiny_world, tiny_teacher, tmp_path):
    """Two worker processes reading frames ahead hand the loop the frames, in the order, that inline
    loading does (drawn cameras included): the same losses, and an interrupted run resumes exactly."""
    extra = ("lima.cameras_per_frame=2", "run.threads=1")
    train(_cfg(tiny_world, tiny_teacher, *extra), tmp_path / "inline")
    cfg = _cfg(tiny_world, tiny_teacher, *extra, "data.workers=2", "data.prefetch=1")

    def interrupt(rec: dict) -> None:
        if rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "workers", on_step=interrupt)
    train(cfg, tmp_path / "workers", resume=True)
    assert _losses(tmp_path / "workers") == _losses(tmp_path / "inline")
    with pytest.raises(ValueError, match="data: invalid workers=-1"):
        _cfg(tiny_world, tiny_teacher, "data.workers=-1")


def test_synthetic_run_copies_the_packaged_teacher_and_makes_one_for_other_sizes(tiny_world, tmp_path, monkeypatch):
    import inspect

    from lima_zoo.training import synthetic_teacher
    from lima_zoo.training.teacher import build_teacher
    from lima_zoo.training.trainer import _resolve_inputs

    # The shipped teacher is what `make-teacher` makes with its current defaults: a changed default must re-make it.
    meta = json.loads((synthetic_teacher.PACKAGED_TEACHER / "teacher.json").read_text())
    defaults = {k: p.default for k, p in inspect.signature(synthetic_teacher.make_synthetic_teacher).parameters.items()}
    vit = meta["vit"]
    assert (vit["img_size"], vit["embed_dim"], vit["depth"], vit["patch_size"]) == (
        list(defaults["image_size"]),
        defaults["dim"],
        defaults["depth"],
        defaults["patch"],
    )
    assert meta["trained_on"] == {
        "seed": defaults["seed"],
        "scenes": defaults["scenes"],
        "frames": defaults["frames"],
        "images": meta["trained_on"]["images"],
    }
    assert f"trained {defaults['steps']} steps" in meta["description"] and meta["heldout_patch_accuracy"] > 0.8

    made = []

    def record_and_stop(out, **kwargs):  # stands in for minutes of ViT training: the call is what is checked
        made.append(kwargs)
        raise RuntimeError("made")

    monkeypatch.setattr(synthetic_teacher, "make_synthetic_teacher", record_and_stop)
    cfg = load_recipe("synthetic-tiny", [f"data.path={tiny_world}", "data.synthetic=false"])
    resolved = _resolve_inputs(cfg, tmp_path / "run", rank=0, world=1)
    folder = tmp_path / "run" / "teacher"
    assert resolved.teacher.weights == str(folder) and not made
    for name in ("teacher.json", "model.safetensors"):
        assert (folder / name).read_bytes() == (synthetic_teacher.PACKAGED_TEACHER / name).read_bytes()
    assert build_teacher(resolved.teacher).dim == 128  # loads strictly
    assert _resolve_inputs(cfg, tmp_path / "run", rank=0, world=1) == resolved  # a second start reuses the run's copy

    other = load_recipe(
        "synthetic-tiny", [f"data.path={tiny_world}", "data.synthetic=false", "teacher.image_size=[56, 112]"]
    )
    with pytest.raises(RuntimeError, match="made"):
        _resolve_inputs(other, tmp_path / "other", rank=0, world=1)
    assert made and made[0]["image_size"] == (56, 112)


def test_sparse_backend_is_one_run_field(tiny_world, tiny_teacher, tmp_path):
    """run.sparse_backend=spconv trains the same network (same losses as the torch engine, to float
    rounding); on CPU it needs one thread (spconv#679) and says so before any work; an unknown name is refused."""
    pytest.importorskip("spconv")
    sets = ("optim.max_steps=2", "run.threads=1", "lima.frames=1")
    train(_cfg(tiny_world, tiny_teacher, *sets), tmp_path / "torch")
    train(_cfg(tiny_world, tiny_teacher, *sets, "run.sparse_backend=spconv"), tmp_path / "spconv")
    np.testing.assert_allclose(_losses(tmp_path / "spconv"), _losses(tmp_path / "torch"), rtol=1e-4)
    with pytest.raises(
        ValueError, match=r"spconv backend's CPU backward is wrong with more than one thread.*run.threads=1"
    ):
        train(_cfg(tiny_world, tiny_teacher, "run.threads=2", "run.sparse_backend=spconv"), tmp_path / "two")
    assert not (tmp_path / "two").exists()
    with pytest.raises(ValueError, match="unknown sparse backend 'spconvv'"):
        _cfg(tiny_world, tiny_teacher, "run.sparse_backend=spconvv")


@pytest.mark.parametrize("align", ["reproject", "cell"])
def test_a_training_step_makes_its_tensors_where_its_inputs_are(tiny_world, tiny_teacher, tmp_path, align):
    """On a GPU a tensor made without a device inside a step is a CPU tensor in a CUDA step. Watched
    at the Python API: every tensor factory a training step calls from lima-zoo's compute code names
    its device; left alone are random draws from the step's CPU generator (the same on every device,
    by design), the fused kernel (CPU only) and the data side."""
    import sys
    from collections import Counter

    from torch.overrides import TorchFunctionMode

    from lima_zoo.training.distributed import placement
    from lima_zoo.training.trainer import _resolve_inputs, _Run

    factories = {
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.full,
        torch.arange,
        torch.tensor,
        torch.randperm,
        torch.randint,
        torch.rand,
        torch.randn,
        torch.linspace,
        torch.eye,
        torch.as_tensor,
    }
    data_side = ("/datasets/", "/synth/", "/io/", "/training/loading.py", "/training/streams.py", "/sparse/fused.py")

    class Watch(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            implicit = func in factories and kwargs.get("device") is None and "generator" not in kwargs
            if implicit and not (func is torch.as_tensor and isinstance(args[0], torch.Tensor)):
                frame = sys._getframe(1)
                while frame and "lima_zoo" not in frame.f_code.co_filename:
                    frame = frame.f_back
                if (
                    frame
                    and not any(d in frame.f_code.co_filename for d in data_side)
                    and frame.f_code.co_name != "view_entry"
                ):
                    self.seen[
                        f"{frame.f_code.co_filename.rsplit('lima_zoo/', 1)[1]}:{frame.f_lineno} {func.__name__}"
                    ] += 1
            return func(*args, **kwargs)

    cfg = _resolve_inputs(_cfg(tiny_world, tiny_teacher, f"lima.align={align}"), tmp_path, 0, 1)
    run = _Run(cfg, tmp_path, placement("cpu"))
    watch = Watch()
    with watch:
        run.step()
        run.step()
    assert not watch.seen, dict(watch.seen)


def test_a_one_camera_run_without_memory_targets_is_warned(tiny_world, tiny_teacher, tmp_path, caplog):
    import logging

    steps = ("optim.max_steps=1", "run.checkpoint_every=1")
    with caplog.at_level(logging.WARNING, logger="lima_zoo.training.trainer"):
        train(
            _cfg(tiny_world, tiny_teacher, *steps, "lima.memory_weight=0", "data.cameras=[CAM_FRONT]"), tmp_path / "a"
        )
        assert "set lima.memory_weight=1" in caplog.text
        caplog.clear()
        train(_cfg(tiny_world, tiny_teacher, *steps, "lima.memory_weight=0"), tmp_path / "b")  # six cameras: its value
        assert "memory_weight" not in caplog.text
