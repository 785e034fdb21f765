"""Metric depth anchors: pixels of the camera image where a sensor measured the depth.

Every source (LiDAR, stereo depth, disparity, any sparse depth image) becomes the same
``Anchors``: pixel rows/cols on the camera image grid, z-depth in metres (REP 118: distance along
the optical axis, not range), and a weight = 1 / expected depth variance (1/m^2) of that sensor,
so that the fit can mix sources and trust near stereo more than far stereo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.camera_model import CameraModel
from ..geometry.transforms import RigidTransform


class AnchorError(ValueError):
    """Input that cannot produce anchors (wrong shape, bad calibration values)."""


@dataclass(eq=False)
class Anchors:
    rows: np.ndarray      # int32 (N,), pixel row on the target image
    cols: np.ndarray      # int32 (N,)
    depth: np.ndarray     # float32 (N,), metres (z, not range)
    weight: np.ndarray    # float32 (N,), 1 / expected depth variance, 1/m^2
    offered: int = 0      # candidates offered before filtering (points, valid pixels)
    source: str = ''

    def __post_init__(self):
        self.rows = np.ascontiguousarray(self.rows, dtype=np.int32).reshape(-1)
        self.cols = np.ascontiguousarray(self.cols, dtype=np.int32).reshape(-1)
        self.depth = np.ascontiguousarray(self.depth, dtype=np.float32).reshape(-1)
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32).reshape(-1)
        n = len(self.rows)
        if not (len(self.cols) == len(self.depth) == len(self.weight) == n):
            raise AnchorError(f'anchor arrays differ in length: rows {n}, cols {len(self.cols)}, '
                              f'depth {len(self.depth)}, weight {len(self.weight)}')
        self.offered = max(int(self.offered), n)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls, source: str = '', offered: int = 0) -> 'Anchors':
        z = np.zeros(0)
        return cls(z, z, z, z, offered=offered, source=source)

    @classmethod
    def concatenate(cls, parts) -> 'Anchors':
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.rows for p in parts]),
                   np.concatenate([p.cols for p in parts]),
                   np.concatenate([p.depth for p in parts]),
                   np.concatenate([p.weight for p in parts]),
                   offered=sum(p.offered for p in parts),
                   source='+'.join(p.source for p in parts if p.source))

    def select(self, mask) -> 'Anchors':
        """The anchors where mask is True (offered count kept)."""
        return Anchors(self.rows[mask], self.cols[mask], self.depth[mask], self.weight[mask],
                       offered=self.offered, source=self.source)


# ---------------------------------------------------------------------------- LiDAR

def lidar_anchors(points, camera_from_lidar: RigidTransform, camera: CameraModel, *,
                  min_depth: float = 0.1, max_depth: float = 100.0,
                  occlusion_window=(11, 7), occlusion_ratio: float = 0.1,
                  occlusion_margin: float = 0.1, range_noise: float = 0.02,
                  range_noise_per_m: float = 0.002) -> Anchors:
    """Anchors from a LiDAR sweep (Nx3 points in the LiDAR frame).

    Points are moved into the camera optical frame, projected with ``camera.project`` (same
    rectified/raw rules as the point cloud conversion), kept only in front of the camera, inside
    the image and within [min_depth, max_depth]; one point per pixel (the nearest). Because the
    LiDAR sees the scene from elsewhere, it measures background that the camera sees hidden behind
    a foreground edge; such a point lands among the foreground's points, so a point farther than
    ``(1 + occlusion_ratio) * nearest + occlusion_margin`` within an ``occlusion_window``
    (height, width) pixel neighbourhood is dropped. The window's height should span the vertical
    gap between LiDAR rings in the image (a few pixels for 64 rings, ~10 for 16 rings at VGA),
    otherwise a background point between two rings of the foreground is not caught.
    Weight: 1 / (range_noise + range_noise_per_m * range)^2.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise AnchorError(f'LiDAR points must be Nx3, got shape {pts.shape}')
    if min_depth < 0 or not max_depth > min_depth:
        raise AnchorError(f'need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}')
    win_h, win_w = _window(occlusion_window)
    pts = np.ascontiguousarray(pts[:, :3])
    offered = len(pts)
    with np.errstate(over='ignore', invalid='ignore'):
        # camera_from_lidar.apply in one BLAS product: numpy's product with the transposed
        # rotation (a strided view) takes a loop ~10x slower on a 32k-point sweep.
        rotation_t = np.ascontiguousarray(np.asarray(camera_from_lidar.rotation, np.float64).T)
        cam = pts @ rotation_t + np.asarray(camera_from_lidar.translation, np.float64)
        # Only points within the depth range go on (NaN fails both tests): half of a
        # 360-degree sweep is behind the camera, and the projection and the rest cost more
        # per point than this selection.
        z = cam[:, 2]
        ahead = np.flatnonzero((z >= min_depth) & (z <= max_depth))
        pts, cam = pts.take(ahead, axis=0), cam.take(ahead, axis=0)
        rng2 = np.einsum('ij,ij->i', pts, pts)   # squared range; non-finite if any coordinate is
    finite = np.isfinite(rng2)
    if not finite.all():
        pts, cam, rng2 = pts[finite], cam[finite], rng2[finite]
    rng = np.sqrt(rng2)                          # range from the LiDAR, drives its noise
    u, v, valid = camera.project(cam)
    z = cam[:, 2]
    col = np.floor(u + 0.5)                      # pixel centres sit at integer coordinates
    row = np.floor(v + 0.5)
    keep = valid & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    row, col, z, rng = row[keep].astype(np.int64), col[keep].astype(np.int64), z[keep], rng[keep]
    if len(z) == 0:
        return Anchors.empty('lidar', offered)

    # z-buffer: sort by pixel then depth; the first of each pixel run is the nearest point.
    # One argsort of pixel * span + z (exact: z < span) is several times cheaper than lexsort.
    pixel = row * camera.width + col
    span = float(max_depth) * 2.0 + 1.0 if np.isfinite(max_depth) else float(z.max()) * 2.0 + 1.0
    order = np.argsort(pixel * span + z, kind='stable')
    pixel, z, rng = pixel[order], z[order], rng[order]
    first = np.ones(len(pixel), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pixel, z, rng = pixel[first], z[first], rng[first]

    if win_h > 1 or win_w > 1:
        z_min = _neighbourhood_min(pixel, z, camera.height, camera.width, win_h, win_w)
        visible = z <= z_min * (1.0 + occlusion_ratio) + occlusion_margin
        pixel, z, rng = pixel[visible], z[visible], rng[visible]

    sigma = range_noise + range_noise_per_m * rng
    return Anchors(pixel // camera.width, pixel % camera.width, z, 1.0 / sigma ** 2,
                   offered=offered, source='lidar')


def _window(window) -> tuple[int, int]:
    h, w = (window, window) if np.isscalar(window) else tuple(window)
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise AnchorError(f'occlusion_window must be >= 1 pixel, got {window}')
    return h | 1, w | 1     # odd, so the window is centred on the pixel


def _neighbourhood_min(pixel, z, height, width, win_h, win_w) -> np.ndarray:
    """Smallest anchor depth in a win_h x win_w window around each anchor (erosion of a sparse
    depth image whose empty pixels are +inf, so they never win)."""
    import cv2
    sparse = np.full(height * width, np.inf, np.float32)
    sparse[pixel] = z
    kernel = np.ones((win_h, win_w), np.uint8)
    eroded = cv2.erode(sparse.reshape(height, width), kernel, borderType=cv2.BORDER_CONSTANT,
                       borderValue=np.inf)
    return eroded.reshape(-1)[pixel].astype(np.float64)


# ---------------------------------------------------------------------------- images

def depth_image_anchors(depth_m, grid_step: int = 8, target_shape=None, *,
                        min_depth: float = 0.0, max_depth: float = np.inf,
                        noise_floor: float = 0.005, noise_per_m2: float = 0.003,
                        source: str = 'depth') -> Anchors:
    """Anchors from a metric depth image registered to the camera (0, NaN, inf = no depth).

    A sparse image (no more valid pixels than grid cells) keeps every valid pixel; a dense one is
    sampled every ``grid_step`` pixels. If its size differs from ``target_shape`` (same aspect
    ratio), rows/cols are scaled onto the target grid. Weight assumes stereo-like noise
    ``noise_floor + noise_per_m2 * z^2`` (metres).
    """
    depth = _image(depth_m, 'depth image')
    ok = np.isfinite(depth) & (depth > 0) & (depth >= min_depth) & (depth <= max_depth)
    rows, cols, offered = _sample(ok, grid_step)
    z = depth[rows, cols].astype(np.float64)
    rows, cols = _rescale(rows, cols, depth.shape, target_shape)
    sigma = noise_floor + noise_per_m2 * z * z
    return Anchors(rows, cols, z, 1.0 / sigma ** 2, offered=offered, source=source)


def disparity_anchors(disparity, focal_px: float, baseline_m: float,
                      min_disparity: float = 0.0, max_disparity: float = 0.0,
                      grid_step: int = 8, target_shape=None, *,
                      disparity_noise_px: float = 0.25, source: str = 'disparity') -> Anchors:
    """Anchors from a disparity image: depth = focal_px * baseline_m / d.

    Disparities that are NaN/inf, <= 0, below ``min_disparity`` or above ``max_disparity`` are
    ignored; ``max_disparity <= 0`` means no upper bound (stereo_msgs leaves it 0 when unset).
    ``focal_px`` is in the disparity image's pixels. The depth noise of stereo grows with z^2:
    sigma_z = z^2 * disparity_noise_px / (focal_px * baseline).
    """
    disp = _image(disparity, 'disparity image')
    f, b = float(focal_px), abs(float(baseline_m))
    if not (np.isfinite(f) and f > 0):
        raise AnchorError(f'disparity focal length must be > 0 pixels, got {focal_px}')
    if not (np.isfinite(b) and b > 0):
        raise AnchorError(f'stereo baseline must be non-zero and finite, got {baseline_m}')
    lo = max(float(min_disparity), 0.0)
    hi = float(max_disparity) if max_disparity and max_disparity > 0 else np.inf
    if hi <= lo:
        raise AnchorError(f'max_disparity ({max_disparity}) must exceed min_disparity '
                          f'({min_disparity}), or be 0 for no upper bound')
    ok = np.isfinite(disp) & (disp > 0) & (disp >= lo) & (disp <= hi)
    rows, cols, offered = _sample(ok, grid_step)
    z = f * b / disp[rows, cols].astype(np.float64)
    rows, cols = _rescale(rows, cols, disp.shape, target_shape)
    sigma = z * z * disparity_noise_px / (f * b)
    return Anchors(rows, cols, z, 1.0 / sigma ** 2, offered=offered, source=source)


def _image(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise AnchorError(f'{name} must be a non-empty HxW array, got shape {arr.shape}')
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise AnchorError(f'{name} must be numeric, got dtype {arr.dtype}')
    return arr.astype(np.float32, copy=False)


def _sample(ok: np.ndarray, grid_step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All valid pixels of a sparse image, a regular grid of a dense one."""
    step = int(grid_step)
    if step < 1:
        raise AnchorError(f'grid_step must be >= 1, got {grid_step}')
    h, w = ok.shape
    offered = int(np.count_nonzero(ok))
    cells = -(-h // step) * -(-w // step)
    if offered > cells:
        grid = np.zeros_like(ok)
        grid[step // 2::step, step // 2::step] = True
        ok = ok & grid
    rows, cols = np.nonzero(ok)
    return rows, cols, offered


def _rescale(rows, cols, shape, target_shape):
    if target_shape is None or tuple(target_shape[:2]) == tuple(shape):
        return rows, cols
    th, tw = int(target_shape[0]), int(target_shape[1])
    h, w = shape
    if th < 1 or tw < 1:
        raise AnchorError(f'target_shape must be positive, got {target_shape}')
    if abs((w / h) / (tw / th) - 1.0) > 0.01:
        raise AnchorError(f'anchor image {w}x{h} and target image {tw}x{th} differ in aspect '
                          'ratio: not registered to the same camera')
    # Pixel-centre aligned scaling, as cv2.resize.
    r = np.clip(np.floor((rows + 0.5) * (th / h)), 0, th - 1)
    c = np.clip(np.floor((cols + 0.5) * (tw / w)), 0, tw - 1)
    return r, c
