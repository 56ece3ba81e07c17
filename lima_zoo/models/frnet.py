"""FRNet: frustum-range network for range-view LiDAR segmentation (Xu et al., IEEE TIP 2025).

Input: a range-view batch (range_view.py): every point with its pixel of the range image.

- ``frustum_encoder``: each point's columns, its range and its offset from its frustum's mean xyz
  (pre-norm BN) -> point MLPs (96, 128, 256, then a plain Linear 256); the frustum's feature is the
  max over its points, compressed to 16 channels: the 2-D CNN's input image (empty pixels are 0).
- ``stem``: three 3x3 conv-BN-Hardswish (16 -> 64 -> 128 -> 128); ``point_stem`` fuses each point's
  pixel feature with its encoder feature; ``fusion_stem`` puts the points' max per pixel back.
- ``layer1..4``: ResNet basic blocks ((2, 2, 2, 2) for frnet18, (3, 4, 6, 3) for frnet34), 128
  channels, strides 1, 2, 2, 2. After each stage the points read their pixel (frustum -> point,
  ``point_fusion_layers``), the points' max per pixel is fused into the map (point -> frustum,
  ``pixel_fusion_layers``) and gated by ``attention_layers`` as a residual.
- The stem and the four stages, upsampled (bilinear) to full size and concatenated, go through
  ``fuse_layer1/2`` (conv, 640 -> 256 -> 128); the points' five features through
  ``point_fuse_layer1/2``.
- ``head``: each point's fused pixel -> MLPs (128, 256, 128, 96), adding after each the fused point
  feature, then the encoder's 256-, 128- and 96-channel point features (FRHead). Output: (N points,
  96 * width), one row per point: points that share a pixel keep their own features.

Every width above is times ``width``. Departures from FRNet, for a 96-d encoder like the others:
the frustum encoder's first layer and the head's last are 96 wide (FRNet: 64), and the
segmentation classifier and the auxiliary frustum heads (segmentation losses) are left out.
Module names follow FRNet's (``frustum_encoder.ffe_layers``, ``layer1.0.conv1``, ``fuse_layer1``,
``head.mlps``); its checkpoints are not converted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RangeImageConfig
from ..voxelize import Voxels
from .common import check_architecture, scaled

__all__ = ["FRNet", "FRNET_LAYERS"]

FRNET_LAYERS = {"frnet18": (2, 2, 2, 2), "frnet34": (3, 4, 6, 3)}
STRIDES = (1, 2, 2, 2)


def _conv_bn_act(c_in: int, c_out: int, m: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, momentum=m), nn.Hardswish()
    )


def _point_layer(c_in: int, c_out: int, m: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out, momentum=m), nn.ReLU())


class _BasicBlock(nn.Module):
    """3x3 conv-BN-Hardswish-3x3 conv-BN plus the shortcut (1x1 strided conv-BN where the shape changes), Hardswish."""

    def __init__(self, c_in: int, c_out: int, stride: int, m: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=m)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=m)
        self.act = nn.Hardswish()
        shape_changes = stride != 1 or c_in != c_out
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out, momentum=m))
            if shape_changes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + (x if self.downsample is None else self.downsample(x)))


class _FrustumEncoder(nn.Module):
    """Point MLPs and the max over each frustum (FRNet's FrustumFeatureEncoder)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], compressed: int, m: float):
        super().__init__()
        c_in = in_channels + 4  # + the range, + the offset from the frustum's mean xyz
        self.pre_norm = nn.BatchNorm1d(c_in, momentum=m)
        widths = (c_in, *channels)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Linear(widths[i], widths[i + 1], bias=False), nn.BatchNorm1d(widths[i + 1], momentum=m), nn.ReLU()
            )
            for i in range(len(channels) - 1)
        ]
        self.ffe_layers = nn.ModuleList([*layers, nn.Linear(widths[-2], widths[-1])])
        self.compression_layers = nn.Sequential(nn.Linear(channels[-1], compressed), nn.ReLU())

    def forward(
        self, cols: torch.Tensor, frustum: torch.Tensor, frustums: int
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """cols (N, C) point columns, frustum (N,) each point's occupied pixel in [0, frustums) ->
        (every layer's point features, (frustums, compressed) frustum features)."""
        xyz = cols[:, :3]
        ones = torch.ones_like(xyz[:, :1])  # scatter_add (not index_add_): it exports to ONNX
        count = torch.zeros(frustums, 1, device=cols.device, dtype=cols.dtype).scatter_add(0, frustum[:, None], ones)
        mean = (
            torch.zeros(frustums, 3, device=cols.device, dtype=cols.dtype).scatter_add(
                0, frustum[:, None].expand_as(xyz), xyz
            )
            / count
        )
        x = self.pre_norm(
            torch.cat([cols, torch.linalg.vector_norm(xyz, dim=1, keepdim=True), xyz - mean[frustum]], dim=1)
        )
        point_feats = []
        for layer in self.ffe_layers:
            x = layer(x)
            point_feats.append(x)
        return point_feats, self.compression_layers(scatter_max(x, frustum, frustums))


def scatter_max(feats: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, C) feats -> (rows, C): the max over the entries of each row of ``index`` (N,), 0 where none.

    The max over -inf and the entries, then -inf -> 0 (not ``include_self=False``, which ONNX cannot
    express): the same values and the same gradients, since -inf is never the max of a row with entries.
    """
    out = feats.new_full((rows, feats.shape[1]), float("-inf"))
    out = out.scatter_reduce(0, index[:, None].expand_as(feats), feats, "amax", include_self=True)
    return torch.where(out == float("-inf"), torch.zeros_like(out), out)


class FRNet(nn.Module):
    """Range-view encoder.  point_features: Voxels of range-image pixels -> (N points, out_channels)."""

    point_output = True  # one output row per input point

    def __init__(
        self,
        depth: str = "frnet34",
        in_channels: int = 4,
        width: float = 1.0,
        bn_momentum: float = 0.05,
        range_image: RangeImageConfig | None = None,
    ):
        super().__init__()
        blocks, m = check_architecture("FRNet", depth, FRNET_LAYERS, width), bn_momentum
        self.image = range_image or RangeImageConfig()
        c = {n: scaled(n, width) for n in (16, 64, 96, 128, 256)}
        self.out_channels = c[96]
        self.frustum_encoder = _FrustumEncoder(in_channels, (c[96], c[128], c[256], c[256]), c[16], m)
        self.stem = nn.Sequential(
            *_conv_bn_act(c[16], c[64], m), *_conv_bn_act(c[64], c[128], m), *_conv_bn_act(c[128], c[128], m)
        )
        self.point_stem = _point_layer(c[128] + c[256], c[128], m)
        self.fusion_stem = _conv_bn_act(2 * c[128], c[128], m)
        for i, (n, stride) in enumerate(zip(blocks, STRIDES)):
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(*[_BasicBlock(c[128], c[128], stride if j == 0 else 1, m) for j in range(n)]),
            )
        self.point_fusion_layers = nn.ModuleList([_point_layer(2 * c[128], c[128], m) for _ in STRIDES])
        self.pixel_fusion_layers = nn.ModuleList([_conv_bn_act(2 * c[128], c[128], m) for _ in STRIDES])
        self.attention_layers = nn.ModuleList(
            [
                nn.Sequential(
                    *_conv_bn_act(c[128], c[128], m),
                    nn.Conv2d(c[128], c[128], 3, padding=1, bias=False),
                    nn.BatchNorm2d(c[128], momentum=m),
                    nn.Sigmoid(),
                )
                for _ in STRIDES
            ]
        )
        levels = c[128] * (1 + len(STRIDES))
        self.fuse_layer1, self.fuse_layer2 = _conv_bn_act(levels, c[256], m), _conv_bn_act(c[256], c[128], m)
        self.point_fuse_layer1, self.point_fuse_layer2 = (
            _point_layer(levels, c[256], m),
            _point_layer(c[256], c[128], m),
        )
        self.head = nn.Module()
        self.head.mlps = nn.ModuleList(
            [_point_layer(a, b, m) for a, b in zip((c[128], c[128], c[256], c[128]), (c[128], c[256], c[128], c[96]))]
        )

    def point_features(self, vox: Voxels) -> torch.Tensor:
        """(N, out_channels): one row per point of ``vox`` (range_project's output), in input order."""
        if vox.point_feats is None or vox.grid is not None:
            raise ValueError("FRNet reads range-image pixels: project the points with range_view.range_project")
        h, w = self.image.height, self.image.width
        coords = vox.coords.to(torch.int64)  # (M, 4) [b, row, col, 0] of the occupied pixels
        if int(coords[:, 1].max()) >= h or int(coords[:, 2].max()) >= w:
            raise ValueError(
                f"pixels outside this FRNet's {h} x {w} range image: project with its config's range_image"
            )
        return self.range_forward(vox.point_feats, vox.inverse, coords, batch=int(coords[-1, 0]) + 1)

    def range_forward(
        self, point_feats: torch.Tensor, inverse: torch.Tensor, coords: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """point_feats (N, C) every point's columns, inverse (N,) int64 its pixel's row of ``coords``
        (M, 4) int64 [b, row, col, 0] (occupied pixels of ``batch`` images) -> (N, out_channels).

        Tensor ops only, with ``batch`` the one Python number, so it traces to ONNX (export/onnx_frnet.py).
        """
        h, w = self.image.height, self.image.width

        def flat(
            stride: int, pixel: torch.Tensor
        ) -> torch.Tensor:  # rows of the stride-s image, flattened over the batch
            return (pixel[:, 0] * (h // stride) + pixel[:, 1] // stride) * (w // stride) + pixel[:, 2] // stride

        def to_image(rows: torch.Tensor, stride: int) -> torch.Tensor:  # (B*H*W, C) -> (B, C, H, W)
            # contiguous NCHW: a channels-last view here would carry that layout through every conv,
            # whose CPU backward is slower in it
            return rows.view(batch, h // stride, w // stride, -1).permute(0, 3, 1, 2).contiguous()

        def at_points(
            x: torch.Tensor, index: torch.Tensor
        ) -> torch.Tensor:  # (B, C, H, W) -> (N, C) at each point's pixel
            return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])[index]

        index = {s: flat(s, coords)[inverse] for s in (1, 2, 4, 8)}  # each point's pixel at every stride
        ffe, frustums = self.frustum_encoder(
            point_feats, inverse, coords.shape[0]
        )  # shape[0], not len(): it stays symbolic when traced
        image = frustums.new_zeros(batch * h * w, frustums.shape[1]).index_put(
            (flat(1, coords),), frustums
        )  # empty pixels 0
        x = self.stem(to_image(image, 1))
        p = self.point_stem(torch.cat([at_points(x, index[1]), ffe[-1]], dim=1))
        x = self.fusion_stem(torch.cat([to_image(scatter_max(p, index[1], batch * h * w), 1), x], dim=1))
        maps, points, stride = [x], [p], 1
        for i, s in enumerate(STRIDES):
            stride *= s
            x = getattr(self, f"layer{i + 1}")(x)
            p = self.point_fusion_layers[i](torch.cat([at_points(x, index[stride]), p], dim=1))
            pixels = to_image(scatter_max(p, index[stride], batch * (h // stride) * (w // stride)), stride)
            fused = self.pixel_fusion_layers[i](torch.cat([pixels, x], dim=1))
            x = fused * self.attention_layers[i](fused) + x
            maps.append(x)
            points.append(p)
        full = [maps[0]] + [F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True) for y in maps[1:]]
        x = self.fuse_layer2(self.fuse_layer1(torch.cat(full, dim=1)))
        p = self.point_fuse_layer2(self.point_fuse_layer1(torch.cat(points, dim=1)))
        out = at_points(x, index[1])
        for i, mlp in enumerate(self.head.mlps):  # FRHead: the fused point feature, then the encoder's, deepest first
            out = mlp(out) + (p if i == 0 else ffe[-1 - i])
        return out
