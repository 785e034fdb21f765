"""CameraInfo for an output image whose size differs from the input's."""
from __future__ import annotations

import numpy as np

from ..geometry.camera_model import CameraModel
from .backends import MessageBackend


def scale_camera_info(msg, width: int, height: int, backend: MessageBackend, header=None):
    """The camera_info of ``msg``'s image resized to width x height.

    K, P and the ROI are scaled with the same pixel-centre convention as CameraModel.scaled
    (u' = (u + 0.5) s - 0.5, what cv2.resize does); binning and ROI offsets are folded into the
    new intrinsics, so the result describes the resized image directly. D and R are unchanged.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f'output size must be positive, got {width}x{height}')
    camera = CameraModel.from_camera_info(msg, rectified=True)
    scaled = camera.scaled(width, height)
    return backend.camera_info(
        backend.copy_header(msg.header) if header is None else header, height, width,
        str(msg.distortion_model), np.asarray(msg.d, np.float64), scaled.K,
        np.asarray(msg.r, np.float64), scaled.P, 0, 0, backend.region_of_interest())
