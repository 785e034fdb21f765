"""Metric depth from sparse anchors: the measurement of what the ROS node publishes.

Anchors are sampled from the ground truth as the depth-completion papers do (NYUv2: N random
valid pixels, N = 500 usually, also 100 and 1000; KITTI: the LiDAR scan thinned from 64 to 16
lines), then the package's own scale recovery (``scale.recovery.ScaleRecovery``: robust global
fit, temporal filter off, local correction on or off) turns the model's relative depth into
metres, scored on every valid ground-truth pixel: AbsRel, RMSE and MAE in metres (and the rest),
the fraction of valid pixels that got a metric value, and the anchor statistics of the fit.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np

from ..scale.anchors import Anchors
from ..scale.recovery import ScaleRecovery, ScaleRecoveryConfig
from .metrics import compute_metrics

# The node's default guide of the local correction (the frame's image joins it).
DEFAULT_GUIDE = ScaleRecoveryConfig().local_guide
# ScaleRecoveryConfig needs a finite range; ETH3D's ground truth has none.
MAX_FINITE_DEPTH = 1000.0

# Velodyne HDL-64E (KITTI's scanner) laser elevations, degrees: an upper block of 32 lasers
# from +2.0 down at 1/3 degree and a lower block of 32 from -8.83 down at 1/2 degree (the
# datasheet's nominal layout; real units deviate by a few hundredths of a degree).
HDL64_ELEVATIONS_DEG = np.concatenate([2.0 - np.arange(32) / 3.0, -8.83 - np.arange(32) * 0.5])
# The KITTI LiDAR sits ~0.08 m above and ~0.27 m behind the left colour camera (cam 2).
KITTI_LIDAR_IN_CAMERA = (0.0, -0.08, -0.27)
# 2011_09_26 P2 principal point in the full image; moved by the benchmark crop below.
KITTI_PRINCIPAL_POINT = (609.5593, 172.854)


@dataclass(frozen=True)
class AnchorSetting:
    """One row of the protocol: how anchors are drawn and whether local correction runs."""

    sampler: str = 'random'     # 'random' (count valid pixels) or 'lines16' (KITTI LiDAR lines)
    count: int = 500
    local: bool = True

    @property
    def label(self) -> str:
        what = f'random{self.count}' if self.sampler == 'random' else self.sampler
        return f'{what}/{"local" if self.local else "global"}'


def parse_settings(anchors: str, local: str) -> list[AnchorSetting]:
    """``'100,500,lines16'`` x ``'on,off'`` -> settings."""
    locals_ = {'on': [True], 'off': [False], 'both': [True, False]}.get(local)
    if locals_ is None:
        raise ValueError(f"--anchor-local must be on, off or both, got {local!r}")
    out = []
    for item in (s.strip() for s in anchors.split(',') if s.strip()):
        if item == 'lines16':
            base = AnchorSetting('lines16', 0)
        else:
            try:
                n = int(item)
            except ValueError:
                raise ValueError(f"anchor setting must be a count or 'lines16', got {item!r}"
                                 ) from None
            if n < 2:
                raise ValueError(f'anchor count must be >= 2, got {n}')
            base = AnchorSetting('random', n)
        out += [AnchorSetting(base.sampler, base.count, loc) for loc in locals_]
    if not out:
        raise ValueError('no anchor settings given')
    return out


def sample_seed(name: str, seed: int) -> np.random.Generator:
    """A generator fixed by the sample's name and the run's seed (same anchors on every run)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def random_anchor_pixels(valid: np.ndarray, count: int, rng: np.random.Generator):
    """``count`` distinct valid pixels drawn uniformly (all of them when fewer)."""
    flat = np.flatnonzero(valid)
    if len(flat) > count:
        flat = np.sort(rng.choice(flat, size=count, replace=False))
    return np.unravel_index(flat, valid.shape)


def lidar_beam_index(rows, cols, depth, focal_px, principal_point,
                     lidar_in_camera=KITTI_LIDAR_IN_CAMERA,
                     elevations_deg=HDL64_ELEVATIONS_DEG) -> np.ndarray:
    """The laser of the 64 whose elevation, seen from the LiDAR, is nearest each pixel's point."""
    cx, cy = principal_point
    z = np.asarray(depth, np.float64)
    x = (np.asarray(cols) - cx) * z / focal_px - lidar_in_camera[0]
    y = (np.asarray(rows) - cy) * z / focal_px - lidar_in_camera[1]    # image y points down
    zz = z - lidar_in_camera[2]
    elevation = np.degrees(np.arctan2(-y, np.hypot(x, zz)))
    return np.argmin(np.abs(elevation[:, None] - np.asarray(elevations_deg)[None, :]), axis=1)


def lidar_line_pixels(depth: np.ndarray, valid: np.ndarray, focal_px: float,
                      principal_point, keep_every: int = 4):
    """Valid pixels on every ``keep_every``-th of the 64 lasers (16 lines for 4).

    The evaluation archive holds KITTI's projected ground truth, not the single raw scan, so the
    laser of each ground-truth pixel is recovered from its elevation seen from the LiDAR: an
    approximation of the line-thinning protocol (the accumulated ground truth is denser than one
    scan, and the calibration is the nominal one).
    """
    rows, cols = np.nonzero(valid)
    beam = lidar_beam_index(rows, cols, depth[rows, cols], focal_px, principal_point)
    keep = beam % keep_every == 0
    return rows[keep], cols[keep]


def kitti_principal_point(full_shape=(375, 1242), crop_shape=(352, 1216)):
    """The nominal principal point moved by the benchmark crop (bottom rows, centred columns)."""
    top = full_shape[0] - crop_shape[0]
    left = (full_shape[1] - crop_shape[1]) // 2
    return KITTI_PRINCIPAL_POINT[0] - left, KITTI_PRINCIPAL_POINT[1] - top


def anchor_weights(depth: np.ndarray, sensor: str) -> np.ndarray:
    """1 / variance of the sensor the anchors imitate (as the package's anchor sources weigh)."""
    if sensor == 'lidar':                 # scale.anchors.lidar_anchors' default noise
        sigma = 0.02 + 0.002 * depth
    else:                                 # structured light / stereo: depth_image_anchors'
        sigma = 0.005 + 0.003 * depth * depth
    return 1.0 / sigma ** 2


def recover_metric(relative: np.ndarray, rows, cols, z, weight, space: str, local: bool,
                   min_depth: float, max_depth: float, image=None,
                   local_guide: str = DEFAULT_GUIDE):
    """One frame through the package's scale recovery, no history (temporal filter off);
    ``image``: the frame's uint8 RGB, guiding the local correction as ``local_guide`` says."""
    config = ScaleRecoveryConfig(
        fit_space='inverse' if space == 'disparity' else 'depth', local_correction=local,
        local_guide=local_guide, responsiveness=1.0, min_depth=float(min_depth),
        max_depth=float(min(max_depth, MAX_FINITE_DEPTH)))
    anchors = Anchors(rows, cols, z, weight, offered=len(z), source='ground-truth sample')
    start = time.perf_counter()
    metric, report = ScaleRecovery(config).process(relative, anchors, 0.0, image)
    return metric, report, time.perf_counter() - start


def evaluate_anchor_frame(relative: np.ndarray, gt: np.ndarray, valid: np.ndarray,
                          setting: AnchorSetting, space: str, min_depth: float,
                          max_depth: float, rng: np.random.Generator, sensor: str = 'lidar',
                          focal_px: float | None = None, principal_point=None, image=None,
                          local_guide: str = DEFAULT_GUIDE) -> dict:
    """Metrics and anchor statistics of one frame under one setting (``image``: its RGB,
    for the local correction's guide)."""
    if setting.sampler == 'random':
        rows, cols = random_anchor_pixels(valid, setting.count, rng)
    elif setting.sampler == 'lines16':
        if focal_px is None or principal_point is None:
            raise ValueError('the lines16 sampler needs the focal length and principal point')
        rows, cols = lidar_line_pixels(gt, valid, focal_px, principal_point)
    else:
        raise ValueError(f'unknown anchor sampler {setting.sampler!r}')
    z = gt[rows, cols].astype(np.float64)
    metric, report, seconds = recover_metric(relative, rows, cols, z, anchor_weights(z, sensor),
                                             space, setting.local, min_depth, max_depth,
                                             image, local_guide)
    scored = valid & np.isfinite(metric)
    out = {'anchors': len(z), 'inliers': report.inliers, 'local_inliers': report.local_inliers,
           'status': report.status, 'fit_residual': float(report.residual),
           'coverage': float(np.count_nonzero(scored) / max(1, np.count_nonzero(valid))),
           'ms': seconds * 1e3}
    if report.metric and np.any(scored):
        out.update(compute_metrics(metric, gt, scored))
    return out
