"""CameraInfo for an output image whose size differs from the input's."""
from __future__ import annotations

import numpy as np

from ..geometry.camera_model import CameraInfoError, CameraModel
from .backends import MessageBackend


def scale_camera_info(msg, width: int, height: int, backend: MessageBackend, header=None):
    """The camera_info of ``msg``'s image resized to ``width`` x ``height``.

    K and P are mapped exactly as CameraModel.scaled does (pixel-centre convention of cv2.resize:
    u' = (u + 0.5) s - 0.5). Binning and the ROI are folded into the new K and P, so the result
    describes the resized image directly: binning 0, an empty ROI (the whole image) and
    width/height the output size. D and R stay as they are (they act on normalised coordinates).
    The header is copied from ``msg`` unless one is given.
    """
    if int(width) <= 0 or int(height) <= 0:
        raise CameraInfoError(f'output size must be positive, got {width}x{height}')
    # rectified=True only validates K/P; scaled() maps both matrices whatever the image is.
    scaled = CameraModel.from_camera_info(msg, rectified=True).scaled(int(width), int(height))
    return backend.camera_info(
        backend.copy_header(msg.header) if header is None else header, int(height), int(width),
        str(msg.distortion_model), np.asarray(msg.d, np.float64), scaled.K,
        np.asarray(msg.r, np.float64), scaled.P, 0, 0, backend.region_of_interest())
