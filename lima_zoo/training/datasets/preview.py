"""A picture of one frame: every camera with the LiDAR points projected and coloured by class, and a
bird's-eye view of the labelled scan (Pillow only). The quickest way to see that poses, calibration
and labels agree — a misplaced camera or a shifted label shows at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...atomic import atomic_path
from ...labels import class_palette
from .frame import Frame
from .pairing import project_points

__all__ = ["save_preview", "preview_world"]


def _legend(draw, names: tuple[str, ...], palette: np.ndarray, x: int, y: int) -> None:
    for k, name in enumerate(names, start=1):
        yy = y + (k - 1) * 14
        draw.rectangle([x, yy, x + 10, yy + 10], fill=tuple(int(c) for c in palette[k]))
        draw.text((x + 14, yy - 1), name, fill=(255, 255, 255))


def save_preview(
    frame: Frame, class_names: tuple[str, ...], path: str | Path, bev_range: float = 50.0, bev_px: int = 500
) -> Path:
    """Write a PNG: camera tiles (3 per row) with projected, class-coloured points + a BEV panel."""
    from PIL import Image, ImageDraw

    palette = class_palette(len(class_names) + 1)
    labels = frame.labels if frame.labels is not None else np.zeros(len(frame.points), np.int64)
    colours = palette[np.clip(labels, 0, len(palette) - 1)]
    tiles = []
    pairs = project_points(frame.points[:, :3], frame.camera_views()) if frame.cameras else None
    for ci, cam in enumerate(frame.cameras):
        img = Image.fromarray(cam.image()).convert("RGB")
        draw = ImageDraw.Draw(img)
        sel = (pairs.camera == ci).numpy()
        uv, pid = pairs.uv[sel].numpy(), pairs.point[sel].numpy()
        for (u, v), c in zip(uv, colours[pid]):
            draw.rectangle([u - 1, v - 1, u + 1, v + 1], fill=tuple(int(x) for x in c))
        draw.text((4, 4), cam.name, fill=(255, 255, 0))
        tiles.append(img)
    # Bird's-eye view in the ego frame (x forward = up in the picture), ego at the centre.
    ego_xyz = frame.points[:, :3] @ frame.lidar_to_ego[:3, :3].T + frame.lidar_to_ego[:3, 3]
    bev = np.zeros((bev_px, bev_px, 3), np.uint8)
    scale = bev_px / (2 * bev_range)
    row = (bev_px / 2 - ego_xyz[:, 0] * scale).astype(int)
    col = (bev_px / 2 - ego_xyz[:, 1] * scale).astype(int)
    ok = (row >= 0) & (row < bev_px) & (col >= 0) & (col < bev_px)
    order = np.argsort(ego_xyz[ok, 2])  # higher points drawn last
    bev[row[ok][order], col[ok][order]] = colours[ok][order]
    bev_img = Image.fromarray(bev)
    d = ImageDraw.Draw(bev_img)
    c = bev_px // 2
    d.polygon([(c, c - 8), (c - 5, c + 6), (c + 5, c + 6)], fill=(255, 255, 255))
    d.text((4, 4), f"{frame.sequence} #{frame.index}  BEV +-{bev_range:.0f} m", fill=(255, 255, 0))
    _legend(d, class_names, palette, bev_px - 150, 4)

    per_row = max(1, min(3, len(tiles)))
    tw = max((t.width for t in tiles), default=0)
    th = max((t.height for t in tiles), default=0)
    rows = (len(tiles) + per_row - 1) // per_row
    width = max(per_row * tw, bev_px)
    canvas = Image.new("RGB", (width, rows * th + bev_px), (20, 20, 20))
    for i, t in enumerate(tiles):
        canvas.paste(t, ((i % per_row) * tw, (i // per_row) * th))
    canvas.paste(bev_img, ((width - bev_px) // 2, rows * th))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def preview_world(root: Path, fmt: str, frames: int, png: Path) -> Path:
    """``save_preview`` of a generated world's middle frame of its first sequence."""
    from . import open_dataset

    ds = open_dataset(root, split="all" if fmt in ("nuscenes", "semantickitti") else "train", kind=fmt)
    return save_preview(ds.frame(0, min(frames - 1, frames // 2)), ds.class_names, png)
