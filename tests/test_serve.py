"""``lima-zoo serve``: a real server in a subprocess, a real HTTP client (urllib / sockets)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import free_port
from test_encoder_loading import TINY
from test_io import write_pcd, write_ply

from lima_zoo import LiMAEncoder

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


class Server:
    def __init__(self, model_dir, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "lima_zoo.cli", "serve", str(model_dir), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path: str):
        return self.request("GET", path)

    def embed(self, body: bytes, query: str = "", headers: dict | None = None):
        return self.request("POST", f"/v1/embed{query}", body, headers)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return LiMAEncoder(TINY).save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def encoder(model_dir):
    return LiMAEncoder.from_pretrained(model_dir)


def _npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def _bodies(tmp_path, pts: np.ndarray) -> dict[str, tuple[str, bytes, np.ndarray, float | None]]:
    """format -> (query, file bytes, points as the reader gives them, their intensity range)."""
    kitti = pts[:, :4].copy()
    kitti[:, 3] /= 255.0
    out = {
        "bin": ("?format=bin", kitti.tobytes(), kitti, 1.0),
        "pcd.bin": (
            "?format=pcd.bin",
            np.concatenate([pts[:, :4], np.zeros((len(pts), 1), np.float32)], 1).tobytes(),
            pts[:, :4],
            255.0,
        ),
    }
    buf = io.BytesIO()
    np.save(buf, pts[:, :4])
    out["npy"] = ("?format=npy", buf.getvalue(), pts[:, :4], None)
    for name, writer, binary in (("pcd", write_pcd, True), ("pcd-ascii", write_pcd, False), ("ply", write_ply, True)):
        path = tmp_path / f"s.{name.split('-')[0]}"
        writer(path, pts, binary)
        from lima_zoo.io import load_points

        cloud = load_points(path)
        out[name] = (f"?format={name.split('-')[0]}", path.read_bytes(), cloud.points, cloud.source_intensity_range())
    return out


def test_every_format_equals_in_process_embed(server, encoder, tmp_path, small_street_points):
    pts = small_street_points[:3000]
    for name, (query, body, points, intensity) in _bodies(tmp_path, pts).items():
        status, headers, payload = server.embed(body, query)
        assert status == 200, (name, payload)
        want = encoder.embed(points, intensity_range=intensity)
        np.testing.assert_allclose(_npy(payload), want, rtol=1e-5, atol=1e-5, err_msg=name)
        assert headers["x-points"] == str(len(points)) and headers["x-points-left-out"] == "0"
        assert len(headers["x-config-sha256"]) == 64


def test_nan_rows_answers_and_accept_types(server, encoder, small_street_points):
    pts = small_street_points[:500, :4].copy()
    pts[[3, 7], 0] = np.nan
    buf = io.BytesIO()
    np.save(buf, pts)
    status, headers, payload = server.embed(buf.getvalue(), "?format=npy&dtype=float16")
    feats = _npy(payload)
    assert status == 200 and feats.dtype == np.float16 and feats.shape[0] == 500 and headers["x-points-left-out"] == "2"
    assert np.isnan(feats[[3, 7]]).all() and not np.isnan(np.delete(feats, [3, 7], 0)).any()
    status, headers, payload = server.embed(buf.getvalue(), "?format=npy", {"Accept": "application/safetensors"})
    from safetensors.numpy import load

    assert (
        status == 200
        and headers["content-type"] == "application/safetensors"
        and load(payload)["features"].shape[0] == 500
    )
    status, _, payload = server.embed(buf.getvalue(), "?format=npy", {"Accept": "image/png"})
    assert status == 406 and "application/x-npy" in json.loads(payload)["error"]
    status, _, payload = server.embed(buf.getvalue(), "?format=npy&space=teacher")
    keep = np.delete(pts, [3, 7], 0)
    np.testing.assert_allclose(np.delete(_npy(payload), [3, 7], 0), encoder.embed(keep, space="teacher"), atol=1e-5)


@pytest.mark.parametrize(
    "query, body, status, words",
    [
        ("?format=pcd", b"garbage that is not a point cloud", 422, "the pcd body"),
        (
            "?format=npy",
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (9, 4), }",
            422,
            "npy",
        ),
        ("?format=bin", b"\x00" * 7, 422, "not a multiple"),
        ("?format=xyz", b"\x00" * 16, 415, "is not one of"),
        ("", b"", 400, "empty"),
        ("?format=npy&space=nope", b"x", 400, "space"),
        ("?format=npy&load_dim=-1", b"x", 400, "load_dim"),
        ("?format=npy&mystery=1", b"x", 400, "unknown query parameter"),
    ],
)
def test_bad_requests_get_a_json_error(server, query, body, status, words):
    got, _, payload = server.embed(body, query)
    answer = json.loads(payload)
    assert got == status and answer["status"] == status and words in answer["error"], answer
    assert "Traceback" not in answer["error"] and "/tmp/" not in answer["error"]


def test_nan_only_scan_is_422(server):
    buf = io.BytesIO()
    np.save(buf, np.full((10, 4), np.nan, np.float32))
    status, _, payload = server.embed(buf.getvalue(), "?format=npy")
    assert status == 422 and "NaN" in json.loads(payload)["error"]


def test_fifty_concurrent_requests_each_equal_its_scan_alone(server, encoder, small_street_points):
    scans = [small_street_points[i * 40 : i * 40 + 600 + 13 * i, :4] for i in range(50)]
    bodies = []
    for s in scans:
        buf = io.BytesIO()
        np.save(buf, s)
        bodies.append(buf.getvalue())
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: server.embed(b, "?format=npy"), bodies))
    assert [a[0] for a in answers] == [200] * 50
    for s, (_, _, payload) in zip(scans, answers):
        np.testing.assert_allclose(_npy(payload), encoder.embed(s), rtol=1e-5, atol=1e-5)
    metrics = server.get("/metrics")[2].decode()
    assert 'lima_zoo_requests_total{status="200"}' in metrics and "lima_zoo_batch_scans_bucket" in metrics


def test_models_endpoint(server, model_dir):
    status, _, payload = server.get("/v1/models")
    info = json.loads(payload)
    assert status == 200 and info["runtime"] == "torch" and info["config"]["backbone"] == TINY.backbone


def test_limits_token_and_slow_clients(model_dir, small_street_points):
    s = Server(
        model_dir,
        "--max-body-mb",
        "0.05",
        "--max-points",
        "1000",
        "--read-timeout-s",
        "1",
        "--token-env",
        "T",
        env={"T": "s3cret"},
    )
    try:
        auth = {"Authorization": "Bearer s3cret"}
        buf = io.BytesIO()
        np.save(buf, small_street_points[:800, :4])
        assert s.embed(buf.getvalue(), "?format=npy")[0] == 401
        assert s.embed(buf.getvalue(), "?format=npy", {"Authorization": "Bearer wrong"})[0] == 401
        assert s.embed(buf.getvalue(), "?format=npy", auth)[0] == 200
        big = io.BytesIO()
        np.save(big, small_street_points[:5000, :4])
        status, _, payload = s.embed(big.getvalue(), "?format=npy", auth)
        assert status == 413 and "limit" in json.loads(payload)["error"] or "at most" in json.loads(payload)["error"]
        many = io.BytesIO()
        np.save(many, small_street_points[:1500, :3])  # 18 kB: under the body limit, over the points limit
        status, _, payload = s.embed(many.getvalue(), "?format=npy", auth)
        assert status == 413 and "1,000" in json.loads(payload)["error"]
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow:  # promises 1000 bytes, sends 10
            slow.sendall(
                b"POST /v1/embed?format=npy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"\x00" * 10
            )
            answer = slow.recv(4096).decode()
        assert " 408 " in answer.splitlines()[0], answer
        assert s.get("/healthz")[0] == 200  # still serving
    finally:
        assert s.stop() == 0


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_dir, small_street_points):
    s = Server(model_dir)
    buf = io.BytesIO()
    np.save(buf, small_street_points[:, :4])
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(s.embed, buf.getvalue(), "?format=npy") for _ in range(4)]
        time.sleep(0.2)
        start = time.time()
        s.proc.send_signal(signal.SIGTERM)
        statuses = [p.result()[0] for p in pending]
    code = s.proc.wait(timeout=30)
    assert code == 0 and time.time() - start < 10
    assert all(st in (200, 503) for st in statuses) and statuses.count(200) >= 1, statuses


def test_a_full_queue_refuses_at_once():
    from lima_zoo.serve.batcher import Batcher, Job, QueueFull

    release = __import__("threading").Event()

    def slow_embed(points, space, intensity_range):
        release.wait(10)
        return [np.zeros((len(p), 2), np.float32) for p in points]

    b = Batcher(slow_embed, max_batch_points=10, max_wait_ms=0, max_queue=1)
    first = b.submit(Job(np.zeros((5, 4), np.float32), None, "backbone"))
    time.sleep(0.1)  # the worker holds the first job
    b.submit(Job(np.zeros((5, 4), np.float32), None, "backbone"))
    with pytest.raises(QueueFull):
        b.submit(Job(np.zeros((5, 4), np.float32), None, "backbone"))
    release.set()
    assert first.result(10).shape == (5, 2)
    b.stop()


def test_one_failing_request_does_not_fail_its_batch():
    from lima_zoo.serve.batcher import Batcher, Job

    def embed(points, space, intensity_range):
        if any(len(p) == 3 for p in points):
            raise ValueError("three points are bad")
        return [np.full((len(p), 1), len(p), np.float32) for p in points]

    b = Batcher(embed, max_batch_points=1000, max_wait_ms=200, max_queue=8)
    jobs = [Job(np.zeros((n, 4), np.float32), None, "backbone") for n in (2, 3, 4)]
    futures = [b.submit(j) for j in jobs]
    assert futures[0].result(10)[0, 0] == 2 and futures[2].result(10)[0, 0] == 4
    with pytest.raises(ValueError, match="three points"):
        futures[1].result(10)
    b.stop()
