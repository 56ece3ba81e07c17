"""Point-cloud readers: KITTI / nuScenes ``.bin``, ``.npy`` / ``.npz``, ``.pcd``, ``.ply``, ``.las``.

Every reader returns a :class:`PointCloud` (float32 (N, D) columns x, y, z[, intensity, ...] and the
intensity range of the source format when the format defines it). Bad input raises
:class:`PointCloudError` naming the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PointCloud", "PointCloudError", "load_points", "POINT_SUFFIXES", "point_suffix"]

POINT_SUFFIXES = (".pcd.bin", ".bin", ".npy", ".npz", ".pcd", ".ply", ".las", ".laz")
GEOREFERENCED_M = 10_000.0  # coordinates beyond any LiDAR's range: a map in world coordinates
INTENSITY_NAMES = ("intensity", "remission", "reflectance", "scalar_intensity", "i")


class PointCloudError(ValueError):
    """A point-cloud file that cannot be read; the message names the file and the problem."""


@dataclass
class PointCloud:
    """points: (N, D) float32, x, y, z first; intensity_range: 1.0 (KITTI remission), 255.0
    (nuScenes), or None when the format does not say."""

    points: np.ndarray
    intensity_range: float | None
    path: str = ""
    kept: np.ndarray | None = None  # (rows in the file,) bool: rows kept (None: all); non-finite rows are dropped
    origin: np.ndarray | None = None  # (3,) float64 subtracted from georeferenced coordinates (LAS), else None

    def source_intensity_range(self) -> float | None:
        """The scan's intensity range: from the format when it says, else 1.0 if every value is in
        [0, 1] (KITTI-style remission) and 255.0 otherwise; None without an intensity column."""
        if self.points.shape[1] < 4:
            return None
        if self.intensity_range is not None:
            return self.intensity_range
        return 1.0 if float(self.points[:, 3].max()) <= 1.0 else 255.0


def point_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for suffix in POINT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def load_points(
    path: str | os.PathLike, load_dim: int | None = None, use_dim: int | list[int] | None = None
) -> PointCloud:
    """Read a point cloud: KITTI / nuScenes ``.bin``, ``.npy`` / ``.npz``, ``.pcd``, ``.ply``, ``.las`` / ``.laz``.

    Args:
        path: the file; its suffix says the format.
        load_dim: float32 columns per point of a raw ``.bin`` (default 5 for ``.pcd.bin``, else 4).
        use_dim: keep the first ``use_dim`` columns, or the listed column indices (default: x, y, z
            and intensity when present).

    Returns:
        a PointCloud: (N, D) float32 points (rows with NaN / Inf coordinates left out, ``kept`` says
        which), the format's intensity range, and a georeferenced file's origin.

    Raises:
        PointCloudError: the file cannot be read as a point cloud (the message names it and why).
    """
    path = Path(path)
    suffix = point_suffix(path)
    if suffix not in POINT_SUFFIXES:
        raise PointCloudError(
            f"{path}: unknown point-cloud extension {suffix!r}; readable: {', '.join(POINT_SUFFIXES)}"
        )
    if not path.is_file():
        if path.exists():  # never opened: a FIFO would block, a device never ends
            kind = "a folder" if path.is_dir() else "a FIFO, device or socket"
            raise PointCloudError(f"{path}: not a regular file ({kind})")
        raise PointCloudError(f"{path}: no such file")
    try:
        if suffix in (".bin", ".pcd.bin"):
            cloud = _read_bin(path, load_dim or (5 if suffix == ".pcd.bin" else 4), suffix)
        elif suffix in (".npy", ".npz"):
            cloud = PointCloud(_read_numpy(path), None)
        elif suffix == ".pcd":
            cloud = _read_pcd(path)
        elif suffix == ".ply":
            cloud = _read_ply(path)
        else:
            cloud = _read_las(path)
    except PointCloudError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside a reader is this file's, never the run's
        raise PointCloudError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    cloud.path = str(path)
    return _select_and_check(cloud, use_dim, path)


def _select_and_check(cloud: PointCloud, use_dim, path: Path) -> PointCloud:
    pts = cloud.points
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise PointCloudError(f"{path}: expected (N, >=3) points, got shape {pts.shape}")
    if use_dim is None:
        use = list(range(min(4, pts.shape[1])))
    elif isinstance(use_dim, int):
        use = list(range(use_dim))
    else:
        use = list(use_dim)
    if max(use) >= pts.shape[1] or len(use) < 3:
        raise PointCloudError(f"{path}: use_dim {use_dim} does not fit {pts.shape[1]} columns (need x, y, z)")
    # a leading run of columns is a view (no copy of a large scan), any other selection a copy
    pts = pts[:, : len(use)] if use == list(range(len(use))) else pts[:, use]
    pts = np.ascontiguousarray(pts, dtype=np.float32)
    if len(pts) == 0:
        raise PointCloudError(f"{path}: empty point cloud")
    finite = np.isfinite(pts[:, :3]).all(axis=1)
    if not finite.any():
        raise PointCloudError(f"{path}: every one of its {len(pts)} points has NaN or Inf coordinates")
    if not finite.all():  # organised clouds mark no-return pixels with NaN
        pts, cloud.kept = np.ascontiguousarray(pts[finite]), finite
    bad_other = int((~np.isfinite(pts[:, 3:])).any(axis=1).sum())
    if bad_other:
        raise PointCloudError(
            f"{path}: {bad_other} point(s) with finite coordinates have a NaN or Inf intensity (or other column)"
        )
    cloud.points = pts
    if pts.shape[1] < 4:
        cloud.intensity_range = None
    return cloud


def _read_bin(path: Path, load_dim: int, suffix: str) -> PointCloud:
    size = path.stat().st_size
    if size % (load_dim * 4):
        raise PointCloudError(
            f"{path}: size {size} bytes is not a multiple of {load_dim} float32 columns ({load_dim * 4} bytes); "
            "set load_dim / --load-dim"
        )
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, load_dim)
    # The two conventions of raw .bin scans: nuScenes .pcd.bin intensity 0-255, KITTI 0-1.
    return PointCloud(pts, 255.0 if suffix == ".pcd.bin" else (1.0 if load_dim == 4 else None))


def _read_numpy(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        key = "points" if "points" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise PointCloudError(f"{path}: .npz has arrays {keys}; name the point array 'points'")
        return data[key]


_PCD_TYPES = {
    ("F", 4): "<f4",
    ("F", 8): "<f8",
    ("I", 1): "<i1",
    ("I", 2): "<i2",
    ("I", 4): "<i4",
    ("U", 1): "<u1",
    ("U", 2): "<u2",
    ("U", 4): "<u4",
    ("I", 8): "<i8",
    ("U", 8): "<u8",
}


def _read_pcd(path: Path) -> PointCloud:
    raw = path.read_bytes()
    header, pos = {}, 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise PointCloudError(f"{path}: PCD header has no DATA line")
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            if len(vals) != 1:
                raise PointCloudError(
                    f"{path}: PCD DATA line {line!r} names no single mode (ascii, binary, binary_compressed)"
                )
            break
    try:
        fields, sizes, types = header["FIELDS"], [int(s) for s in header["SIZE"]], header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
    except (KeyError, ValueError, IndexError) as exc:
        raise PointCloudError(f"{path}: malformed PCD header ({type(exc).__name__}: {exc})") from None
    if (
        n < 0
        or len(sizes) != len(fields)
        or len(types) != len(fields)
        or len(counts) != len(fields)
        or min(counts, default=1) < 1
    ):
        raise PointCloudError(
            f"{path}: malformed PCD header (POINTS {n}, {len(fields)} FIELDS, "
            f"SIZE {sizes}, TYPE {types}, COUNT {counts})"
        )
    mode = header["DATA"][0].lower()
    names = [f if c == 1 else f"{f}_{i}" for f, c in zip(fields, counts) for i in range(c)]
    dtypes = [_PCD_TYPES.get((t.upper(), s)) for t, s, c in zip(types, sizes, counts) for _ in range(c)]
    if None in dtypes:
        raise PointCloudError(f"{path}: unsupported PCD field type in {list(zip(types, sizes))}")
    if mode == "ascii":
        table = np.loadtxt(raw[pos:].decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
        if table.shape != (n, len(names)):
            raise PointCloudError(f"{path}: expected {n} x {len(names)} ASCII values, got {table.shape}")
        columns = {name: table[:, i] for i, name in enumerate(names)}
    elif mode == "binary":
        dt = np.dtype([(name, d) for name, d in zip(names, dtypes)])
        if len(raw) - pos < n * dt.itemsize:
            raise PointCloudError(f"{path}: truncated binary PCD ({len(raw) - pos} bytes for {n} points)")
        rec = np.frombuffer(raw, dtype=dt, count=n, offset=pos)
        columns = {name: rec[name] for name in names}
    elif mode == "binary_compressed":  # PCL's default for maps: LZF-compressed, one field after another
        if len(raw) - pos < 8:
            raise PointCloudError(f"{path}: truncated binary_compressed PCD (no size header)")
        packed, unpacked = np.frombuffer(raw, "<u4", 2, pos).tolist()
        data = lzf_decompress(raw[pos + 8 : pos + 8 + packed], unpacked, path)
        widths = [np.dtype(d).itemsize for d in dtypes]
        if unpacked != n * sum(widths):
            raise PointCloudError(
                f"{path}: binary_compressed PCD holds {unpacked} bytes, expected {n * sum(widths)} for {n} points"
            )
        columns, at = {}, 0
        for name, d, w in zip(names, dtypes, widths):
            columns[name] = np.frombuffer(data, d, n, at)
            at += n * w
    else:
        raise PointCloudError(f"{path}: PCD DATA {mode!r} is not supported (ascii, binary or binary_compressed)")
    return _columns_to_cloud(columns, path)


def lzf_decompress(src: bytes, size: int, path: Path | str = "") -> bytes:
    """LZF (liblzf, the codec of PCL's binary_compressed PCD) -> ``size`` bytes. Each chunk starts with
    a control byte: below 32, a literal run of ctrl + 1 bytes follows; else a back-reference of
    (ctrl >> 5) + 2 bytes (7 means one more length byte) at distance ((ctrl & 31) << 8 | next) + 1."""
    out, ip, n = bytearray(), 0, len(src)
    try:
        while ip < n:
            ctrl = src[ip]
            ip += 1
            if ctrl < 32:
                out += src[ip : ip + ctrl + 1]
                ip += ctrl + 1
                continue
            length = ctrl >> 5
            if length == 7:
                length += src[ip]
                ip += 1
            ref = len(out) - ((ctrl & 31) << 8) - src[ip] - 1
            ip += 1
            length += 2
            if ref < 0:
                raise IndexError
            if ref + length <= len(out):
                out += out[ref : ref + length]
            else:  # the copy overlaps what it writes (a repeated pattern): byte by byte
                for k in range(length):
                    out.append(out[ref + k])
    except IndexError:
        raise PointCloudError(f"{path}: corrupt LZF data in binary_compressed PCD") from None
    if len(out) != size:
        raise PointCloudError(f"{path}: binary_compressed PCD decompressed to {len(out)} bytes, its header says {size}")
    return bytes(out)


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def _read_ply(path: Path) -> PointCloud:
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' magic or end_header)")
    header = raw[:end].decode("ascii", "replace").splitlines()
    body = raw[raw.index(b"\n", end) + 1 :]
    fmt, props, n, in_vertex, seen_vertex, later_elements = None, [], 0, False, False, False
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n, seen_vertex = int(parts[2]), True
                if n < 0:
                    raise PointCloudError(f"{path}: PLY header declares {n} vertices")
            elif not seen_vertex:
                raise PointCloudError(f"{path}: PLY element {parts[1]!r} precedes 'vertex'; not supported")
            else:
                later_elements = True  # faces etc. follow the vertices
        elif parts[0] == "property" and in_vertex:
            if parts[1] == "list":
                raise PointCloudError(f"{path}: list properties on vertices are not supported")
            if parts[1] not in _PLY_TYPES:
                raise PointCloudError(f"{path}: unknown PLY type {parts[1]!r}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    if fmt == "ascii":
        lines = body.decode("ascii").splitlines()[:n]
        table = np.loadtxt(lines, dtype=np.float64, ndmin=2)
        if table.shape[0] != n or table.shape[1] < len(props):
            raise PointCloudError(f"{path}: expected {n} vertex rows of {len(props)} values")
        columns = {name: table[:, i] for i, (name, _) in enumerate(props)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(name, order + t) for name, t in props])
        if len(body) < n * dt.itemsize:
            raise PointCloudError(f"{path}: truncated binary PLY ({len(body)} bytes for {n} vertices)")
        if not later_elements and len(body) >= (n + 1) * dt.itemsize:
            warnings.warn(
                f"{path}: the header declares {n} vertices but the file holds {len(body) // dt.itemsize}; "
                f"reading the first {n}",
                stacklevel=3,
            )
        rec = np.frombuffer(body, dtype=dt, count=n)
        columns = {name: rec[name].astype(rec[name].dtype.newbyteorder("=")) for name, _ in props}
    else:
        raise PointCloudError(
            f"{path}: PLY format {fmt!r} is not supported (ascii, binary_little_endian, binary_big_endian)"
        )
    return _columns_to_cloud(columns, path)


def _columns_to_cloud(columns: dict[str, np.ndarray], path: Path) -> PointCloud:
    lower = {k.lower(): v for k, v in columns.items()}
    missing = [a for a in "xyz" if a not in lower]
    if missing:
        raise PointCloudError(f"{path}: no {', '.join(missing)} field(s); fields are {list(columns)}")
    cols = [lower["x"], lower["y"], lower["z"]]
    for name in INTENSITY_NAMES:
        if name in lower:
            cols.append(lower[name])
            break
    return PointCloud(np.stack(cols, axis=1).astype(np.float32), None)


def _read_las(path: Path) -> PointCloud:
    try:
        import laspy
    except ImportError:
        raise PointCloudError(f"{path}: reading .las/.laz needs laspy (pip install 'lima-zoo[las]')") from None
    las = laspy.read(path)
    xyz = np.stack([np.asarray(las.x, np.float64), np.asarray(las.y, np.float64), np.asarray(las.z, np.float64)], 1)
    # Georeferenced coordinates (UTM northings ~5e6 m) keep cm precision only in float64: re-centre
    # on the cloud's own centre first, then go to float32; ``origin`` maps the points back. A scan in
    # its sensor's frame (every coordinate within LiDAR range) is left as it is.
    origin = np.floor((xyz.min(0) + xyz.max(0)) / 2) if len(xyz) and np.abs(xyz).max() > GEOREFERENCED_M else None
    if origin is not None:
        xyz = xyz - origin
    intensity = np.asarray(las.intensity, np.float64)
    # The LAS spec scales intensity to 16 bits, but many writers store 8-bit values unscaled.
    scale = 255.0 / 65535.0 if len(intensity) and intensity.max() > 255 else 1.0
    pts = np.concatenate([xyz, intensity[:, None] * scale], 1)
    return PointCloud(pts.astype(np.float32), 255.0, origin=origin)
