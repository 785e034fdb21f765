"""A generic RGB-D folder for a robot's own data: a list file of 'rgb_path depth_path' lines
(relative to the folder, or to a tar).

Depth files: 16-bit PNG times ``depth_scale`` (default 0.001: millimetres, the ROS 16UC1
convention; 0 = no measurement) or ``.npy`` float32 metres (0 / NaN / inf = none).
"""
from __future__ import annotations

import numpy as np

from .common import DataError, RGBDDataset


class RGBDFolder(RGBDDataset):
    name = 'rgbd_folder'

    def __init__(self, source, rows, split_path, resize_to_hw=None, depth_scale=0.001,
                 min_depth=1e-3, max_depth=1000.0):
        super().__init__(source, rows, split_path, resize_to_hw)
        self.depth_scale = float(depth_scale)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    def decode_depth(self, raw: np.ndarray, rel: str) -> np.ndarray:
        if raw.dtype != np.uint16:
            raise DataError(f'{self.source.root}/{rel}: depth PNGs must be 16-bit '
                            f'(got {raw.dtype}); or store float32 metres as .npy')
        return raw.astype(np.float32) * self.depth_scale
