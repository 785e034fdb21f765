"""Organised point cloud bytes on a device: the twin of ``conversions.pointcloud``'s
``DepthCloudBuilder.build`` (depth_image_proc layout: x, y, z, pad [, rgb as b g r 0, pad x3])."""
from __future__ import annotations

import numpy as np
import torch

from ..conversions.pointcloud import _FLOAT32_MAX, PointCloudError, check_cloud_arguments
from ..geometry.camera_model import CameraModel


class DeviceCloudBuilder:
    """Back-projects depth tensors with the camera's rays kept on the device (per camera and
    stride, like the numpy builder). Not thread-safe: one per output stream."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._key = None
        self._rays: tuple[torch.Tensor, torch.Tensor] | None = None

    def _strided_rays(self, camera: CameraModel, stride: int):
        key = (camera.key, stride)
        if key != self._key:
            rx, ry = camera.rays()
            # The model's rays are read-only: torch gets copies.
            self._rays = tuple(torch.from_numpy(np.array(r[::stride, ::stride]))
                               .to(self.device) for r in (rx, ry))
            self._key = key
        return self._rays

    @torch.inference_mode()
    def build(self, depth: torch.Tensor, camera: CameraModel, rgb=None, min_range: float = 0.0,
              max_range: float = np.inf, stride: int = 1, organized: bool = True):
        """(height, width, point_step, data, is_dense) of the cloud; ``data`` is a uint8 tensor
        on the device holding the message's bytes. Arguments as DepthCloudBuilder.build;
        ``rgb`` an HxWx3 uint8 array or tensor."""
        if depth.ndim != 2 or depth.numel() == 0:
            raise PointCloudError(f'depth must be a non-empty HxW array, got shape '
                                  f'{tuple(depth.shape)}')
        if not depth.is_floating_point():
            raise PointCloudError(f'depth must be float metres, got dtype {depth.dtype}')
        camera.check_image_size(depth.shape[1], depth.shape[0])
        stride = check_cloud_arguments(stride, min_range, max_range)
        rx, ry = self._strided_rays(camera, stride)
        h, w = rx.shape
        z = depth[::stride, ::stride].float().clone()
        lo = float(np.float32(max(float(min_range), -_FLOAT32_MAX)))
        hi = float(np.float32(min(float(max_range), _FLOAT32_MAX)))
        z.masked_fill_((z < lo) | (z > hi), float('nan'))
        floats = 8 if rgb is not None else 4
        points = torch.zeros((h, w, floats), dtype=torch.float32, device=self.device)
        points[..., 0] = rx * z
        points[..., 1] = ry * z
        points[..., 2] = z
        if rgb is not None:
            if isinstance(rgb, np.ndarray) and not rgb.flags.writeable:
                rgb = rgb.copy()                 # a view of a message buffer (rosbags)
            colour = torch.as_tensor(rgb).to(self.device)
            if colour.dtype != torch.uint8 or tuple(colour.shape) != tuple(depth.shape) + (3,):
                raise PointCloudError(f'rgb must be a {depth.shape[0]}x{depth.shape[1]}x3 uint8 '
                                      f'array like the depth, got {colour.dtype} '
                                      f'{tuple(colour.shape)}')
            as_bytes = points.view(torch.uint8)                  # (h, w, floats * 4)
            as_bytes[..., 16:19] = colour[::stride, ::stride].flip(-1)   # b, g, r; byte 19 = 0
        if organized:
            is_dense = False
        else:
            points = points.view(-1, floats)[torch.isfinite(z).view(-1)].view(1, -1, floats)
            h, w, is_dense = 1, points.shape[1], True
        return h, w, floats * 4, points.reshape(-1).view(torch.uint8), is_dense
