"""``DeviceFinisher``: a frame's per-pixel finishing on the model's device, one host copy.

The pipeline hands it the relative depth as a tensor on the device. The LiDAR anchors are
projected there; the fit and the temporal filter read the relative depth at the anchors only
(thousands of values to the host); the metric depth, its 16UC1 image and the organised cloud
are built there; then every byte the messages need goes to the host in one copy. On CUDA this
runs on a stream of its own, ordered after the frame's inference by the event the inference
thread recorded, so the model's next frame on the default stream keeps running meanwhile.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.camera_model import CameraModel
from ..scale.recovery import FitReport, ScaleRecovery
from .cloud import DeviceCloudBuilder
from .depth import apply_plan_torch, depth_to_16uc1_torch
from .lidar import lidar_anchors_torch


@dataclass
class HostFrame:
    """Numpy views of the one host copy (None for parts nobody asked for)."""

    depth: np.ndarray                  # float32 HxW metres, NaN invalid (the 32FC1 image)
    depth16: np.ndarray | None         # uint8 bytes of the 16UC1 image
    relative: np.ndarray | None        # float32 HxW
    points: np.ndarray | None          # uint8 bytes of the cloud
    cloud_layout: tuple | None         # (height, width, point_step, is_dense)
    nbytes: int                        # size of the copy


class DeviceFinisher:
    def __init__(self, device):
        self.device = torch.device(device)
        self.clouds = DeviceCloudBuilder(self.device)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == 'cuda' else None

    def stream(self):
        """Context in which the finishing work is queued (a side stream on CUDA)."""
        return torch.cuda.stream(self._stream) if self._stream is not None \
            else contextlib.nullcontext()

    def relative_on_device(self, relative, ready=None) -> torch.Tensor:
        """The model's output as a float32 tensor on the device; ``ready``: a CUDA event
        recorded after the model's work for this frame (the finishing stream waits for it)."""
        rel = torch.as_tensor(relative)
        if self._stream is not None and rel.device.type == 'cuda':
            if ready is not None:
                self._stream.wait_event(ready)
            else:
                self._stream.wait_stream(torch.cuda.current_stream(rel.device))
            rel.record_stream(self._stream)      # its memory is in use on this stream too
        return rel.to(self.device, torch.float32)

    def lidar_anchors(self, points, transform, camera: CameraModel, **options):
        return lidar_anchors_torch(points, transform, camera, self.device, **options)

    @torch.inference_mode()
    def recover(self, recovery: ScaleRecovery, relative: torch.Tensor, anchors, stamp_s: float,
                image=None) -> tuple[torch.Tensor, FitReport]:
        """``recovery.process`` with the dense work on the device (``image``: the frame's
        RGB host array guiding the local correction, as there)."""
        width = int(relative.shape[1])
        flat = relative.reshape(-1)

        def sample(rows, cols):
            index = torch.from_numpy(np.asarray(rows, np.int64) * width
                                     + np.asarray(cols, np.int64)).to(self.device)
            return flat[index].cpu().numpy()

        plan = recovery.estimate(tuple(relative.shape), sample, anchors, stamp_s, image)
        return apply_plan_torch(recovery, relative, plan), plan.report

    @torch.inference_mode()
    def to_host(self, depth: torch.Tensor, relative: torch.Tensor | None, *,
                depth16: bool = False, camera: CameraModel | None = None, rgb=None,
                cloud: dict | None = None) -> HostFrame:
        """Build the requested byte buffers on the device and copy them to the host at once.
        ``cloud``: DeviceCloudBuilder.build keyword arguments (min_range, max_range, stride,
        organized), None for no cloud."""
        parts: dict[str, torch.Tensor] = {'depth': depth.float().contiguous()}
        if depth16:
            parts['depth16'] = depth_to_16uc1_torch(depth)
        if relative is not None:
            parts['relative'] = relative.float().contiguous()
        layout = None
        if cloud is not None and camera is not None:
            h, w, step, data, dense = self.clouds.build(depth, camera, rgb=rgb, **cloud)
            parts['points'] = data
            layout = (h, w, step, dense)
        flat = [p.reshape(-1).view(torch.uint8) for p in parts.values()]
        host = torch.cat(flat).cpu().numpy()          # the one copy to the host
        views, offset = {}, 0
        for (name, part), raw in zip(parts.items(), flat):
            n = raw.numel()
            views[name] = host[offset:offset + n]
            offset += n
        hgt, wid = depth.shape
        as_image = (lambda b: b.view(np.float32).reshape(hgt, wid))
        return HostFrame(depth=as_image(views['depth']), depth16=views.get('depth16'),
                         relative=as_image(views['relative']) if 'relative' in views else None,
                         points=views.get('points'), cloud_layout=layout, nbytes=host.nbytes)
