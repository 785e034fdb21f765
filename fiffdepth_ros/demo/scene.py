"""A synthetic room with known geometry: camera images, ground-truth depth and LiDAR sweeps.

Used by the demonstration, the node's end-to-end tests and the latency benchmark, where the
metric output must be checked against a truth that no downloaded data set provides. Everything is
ray cast analytically with numpy (planes and one box), in the camera optical frame
(x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.camera_model import CameraModel
from ..geometry.transforms import RigidTransform

# Walls as (normal n, offset c) with n . p = c, in the camera optical frame.
_PLANES = (
    (np.array([0.0, 1.0, 0.0]), 1.2),     # floor, 1.2 m below the camera
    (np.array([0.0, 1.0, 0.0]), -1.6),    # ceiling
    (np.array([0.0, 0.0, 1.0]), 6.0),     # back wall
    (np.array([1.0, 0.0, 0.0]), -2.5),    # left wall
    (np.array([1.0, 0.0, 0.0]), 3.0),     # right wall
    (np.array([0.0, 0.0, 1.0]), -4.0),    # wall behind the camera (LiDAR sees all round)
)
_BOX_MIN = np.array([-0.7, 0.3, 2.4])
_BOX_MAX = np.array([0.5, 1.2, 3.2])

# LiDAR body frame (x forward, y left, z up) expressed in the camera optical frame.
_OPTICAL_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def cast_rays(origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each direction (Nx3, any length) to the first surface, and a surface id."""
    d = directions.reshape(-1, 3)
    t_best = np.full(len(d), np.inf)
    ids = np.full(len(d), -1, np.int32)
    with np.errstate(divide='ignore', invalid='ignore'):
        for i, (n, c) in enumerate(_PLANES):
            t = (c - n @ origin) / (d @ n)
            hit = (t > 1e-6) & (t < t_best)
            t_best[hit], ids[hit] = t[hit], i
        # Slab test for the box.
        t0 = (_BOX_MIN - origin) / d
        t1 = (_BOX_MAX - origin) / d
        t_near = np.nanmax(np.minimum(t0, t1), axis=1)
        t_far = np.nanmin(np.maximum(t0, t1), axis=1)
        hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_best)
    t_best[hit], ids[hit] = t_near[hit], len(_PLANES)
    return t_best, ids


@dataclass
class SyntheticFrame:
    rgb: np.ndarray            # HxWx3 uint8
    depth: np.ndarray          # HxW float32 metres (z, as REP 118)
    lidar_points: np.ndarray   # Nx3 float32 in the LiDAR frame


class SyntheticRoom:
    """Renders the room for a pinhole camera and a 16/32/64-line spinning LiDAR."""

    def __init__(self, width: int = 640, height: int = 480, fov_deg: float = 70.0,
                 lidar_lines: int = 32, lidar_columns: int = 1024,
                 lidar_offset=(0.0, -0.12, -0.05)):
        fx = width / 2.0 / np.tan(np.radians(fov_deg) / 2.0)
        self.camera = CameraModel.pinhole(width, height, fx, fx, (width - 1) / 2.0,
                                          (height - 1) / 2.0)
        self.lidar_lines = lidar_lines
        self.lidar_columns = lidar_columns
        # LiDAR 12 cm above and 5 cm behind the camera: it sees around the box differently.
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = _OPTICAL_FROM_BODY, lidar_offset
        self.camera_from_lidar = RigidTransform.from_matrix(pose)

    def static_lidar_params(self, camera_frame: str = 'camera_optical',
                            lidar_frame: str = 'lidar') -> dict:
        """Node parameters for this room's LiDAR given as a static extrinsic (no tf)."""
        t, q = self.camera_from_lidar.matrix[:3, 3], self.camera_from_lidar.quaternion
        return {'use_lidar': True, 'lidar_use_tf': False,
                'lidar_translation': [float(v) for v in t],
                'lidar_rotation': [float(v) for v in q],
                'lidar_parent_frame': camera_frame, 'lidar_child_frame': lidar_frame}

    def camera_info_fields(self) -> dict:
        fx, fy, cx, cy = self.camera.intrinsics
        return dict(height=self.camera.height, width=self.camera.width,
                    distortion_model='plumb_bob', d=[0.0] * 5,
                    k=[fx, 0, cx, 0, fy, cy, 0, 0, 1], r=[1, 0, 0, 0, 1, 0, 0, 0, 1],
                    p=[fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0])

    def render(self, t: float = 0.0) -> SyntheticFrame:
        """The scene with the camera swaying sideways by a few cm over time t (seconds)."""
        sway = np.array([0.15 * np.sin(0.5 * t), 0.0, 0.0])
        rx, ry = self.camera.rays()
        dirs = np.stack([rx, ry, np.ones_like(rx)], axis=-1).reshape(-1, 3).astype(np.float64)
        dist, ids = cast_rays(sway, dirs)
        depth = dist.reshape(rx.shape).astype(np.float32)      # rays have z = 1: dist is z
        points = sway + dirs * dist[:, None]
        rgb = self._shade(points, ids).reshape(*rx.shape, 3)
        return SyntheticFrame(rgb=rgb, depth=depth, lidar_points=self._lidar(sway))

    def _shade(self, points: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Textured surfaces so the image is not flat: per-surface colour, checker, fall-off."""
        palette = np.array([[150, 120, 90], [220, 220, 210], [90, 130, 170], [170, 160, 120],
                            [140, 170, 140], [120, 120, 120], [200, 70, 60]], np.float64)
        base = palette[np.clip(ids, 0, len(palette) - 1)]
        checker = (np.floor(points[:, 0] * 2) + np.floor(points[:, 1] * 2)
                   + np.floor(points[:, 2] * 2)) % 2
        dist = np.linalg.norm(points, axis=1)
        light = np.clip(1.3 - 0.08 * dist, 0.35, 1.0) * (0.85 + 0.15 * checker)
        return np.clip(base * light[:, None], 0, 255).astype(np.uint8)

    def _lidar(self, sway: np.ndarray) -> np.ndarray:
        elevation = np.radians(np.linspace(-22.5, 22.5, self.lidar_lines))
        azimuth = np.linspace(-np.pi, np.pi, self.lidar_columns, endpoint=False)
        el, az = np.meshgrid(elevation, azimuth, indexing='ij')
        body_dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)],
                             axis=-1).reshape(-1, 3)
        R = self.camera_from_lidar.matrix[:3, :3]
        origin = self.camera_from_lidar.translation + sway
        dist, _ = cast_rays(origin, body_dirs @ R.T)
        ok = np.isfinite(dist) & (dist < 30.0)
        return (body_dirs[ok] * dist[ok, None]).astype(np.float32)
