"""LiDAR anchors in torch on a device: the twin of ``scale.anchors.lidar_anchors``.

Same steps in the same arithmetic (float64 points, float32 z-buffer image), so the anchors are
the same: move into the camera frame, project (pinhole here; distorted raw cameras project on
the host with OpenCV, as the numpy path does), keep in-image points within the depth range,
nearest point per pixel (a stable sort of pixel * span + z), and drop points seen through a
foreground object (a min filter of the sparse depth image: max-pool of its negative).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.camera_model import CameraModel
from ..geometry.transforms import RigidTransform
from ..scale.anchors import AnchorError, Anchors, _window


@torch.inference_mode()
def lidar_anchors_torch(points, camera_from_lidar: RigidTransform, camera: CameraModel,
                        device='cpu', *, min_depth: float = 0.1, max_depth: float = 100.0,
                        occlusion_window=(11, 7), occlusion_ratio: float = 0.1,
                        occlusion_margin: float = 0.1, range_noise: float = 0.02,
                        range_noise_per_m: float = 0.002) -> Anchors:
    """See ``scale.anchors.lidar_anchors`` (same arguments, same result); ``points`` is an Nx3
    array or tensor in the LiDAR frame, the work runs on ``device``."""
    device = torch.device(device)
    pts = torch.as_tensor(points).to(device=device, dtype=torch.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise AnchorError(f'LiDAR points must be Nx3, got shape {tuple(pts.shape)}')
    if min_depth < 0 or not max_depth > min_depth:
        raise AnchorError(f'need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}')
    win_h, win_w = _window(occlusion_window)
    pts = pts[:, :3].contiguous()
    offered = int(pts.shape[0])
    rng2 = (pts * pts).sum(dim=1)
    finite = torch.isfinite(rng2)
    pts, rng2 = pts[finite], rng2[finite]
    rng = torch.sqrt(rng2)
    R = torch.tensor(np.array(camera_from_lidar.rotation), dtype=torch.float64, device=device)
    t = torch.tensor(np.array(camera_from_lidar.translation), dtype=torch.float64,
                     device=device)
    cam = pts @ R.T + t
    u, v, valid = _project(camera, cam)
    z = cam[:, 2]
    col = torch.floor(u + 0.5)
    row = torch.floor(v + 0.5)
    keep = (valid & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
            & (z >= min_depth) & (z <= max_depth))
    row, col, z, rng = row[keep].long(), col[keep].long(), z[keep], rng[keep]
    if z.numel() == 0:
        return Anchors.empty('lidar', offered)

    pixel = row * camera.width + col
    span = float(max_depth) * 2.0 + 1.0 if np.isfinite(max_depth) else float(z.max()) * 2.0 + 1.0
    order = torch.sort(pixel.double() * span + z, stable=True).indices
    pixel, z, rng = pixel[order], z[order], rng[order]
    first = torch.ones_like(pixel, dtype=torch.bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pixel, z, rng = pixel[first], z[first], rng[first]

    if win_h > 1 or win_w > 1:
        sparse = torch.full((camera.height * camera.width,), float('inf'), dtype=torch.float32,
                            device=device)
        sparse[pixel] = z.float()
        # min filter with +inf outside the image == -(max filter of -x, padded with -inf)
        eroded = -F.max_pool2d(-sparse.view(1, 1, camera.height, camera.width),
                               (win_h, win_w), stride=1, padding=(win_h // 2, win_w // 2))
        z_min = eroded.view(-1)[pixel].double()
        visible = z <= z_min * (1.0 + occlusion_ratio) + occlusion_margin
        pixel, z, rng = pixel[visible], z[visible], rng[visible]

    sigma = range_noise + range_noise_per_m * rng
    weight = 1.0 / sigma ** 2
    # Anchors are small (thousands): they go to the host for the fit.
    pixel, z, weight = (a.cpu().numpy() for a in (pixel, z, weight))
    return Anchors(pixel // camera.width, pixel % camera.width, z, weight, offered=offered,
                   source='lidar')


def _project(camera: CameraModel, cam: torch.Tensor):
    """``CameraModel.project`` for points on a device: the pinhole in torch, a distorted raw
    camera through the model's own OpenCV projection on the host."""
    if camera.has_distortion:
        u, v, valid = camera.project(cam.cpu().numpy())
        to = dict(device=cam.device)
        return (torch.as_tensor(u, dtype=torch.float64, **to),
                torch.as_tensor(v, dtype=torch.float64, **to), torch.as_tensor(valid, **to))
    z = cam[:, 2]
    valid = torch.isfinite(cam).all(dim=1) & (z > 1e-6)
    safe_z = torch.where(valid, z, torch.ones_like(z))
    xn, yn = cam[:, 0] / safe_z, cam[:, 1] / safe_z
    M = camera.P if camera.rectified else camera.K
    fx, fy, cx, cy = camera.intrinsics
    if camera.rectified:
        tx = float(M[0, 3]) / safe_z / camera.binning_x
        ty = float(M[1, 3]) / safe_z / camera.binning_y
    else:
        tx = ty = 0.0
    return fx * xn + cx + tx, fy * yn + cy + ty, valid
