"""Hypersim as Marigold's preprocessing writes it (a folder or a tar):

    ai_001_001/rgb_cam_00_fr0000.png  ai_001_001/depth_plane_cam_00_fr0000.png

listed in data_split/hypersim_depth/filename_list_{train,val}_filtered.txt; depth is uint16
millimetres of planar depth; valid in (1e-5, 65) m; resized to 480x640 for training.
"""
from __future__ import annotations

import numpy as np

from .common import RGBDDataset


class HypersimDepth(RGBDDataset):
    name = 'hypersim'
    min_depth = 1e-5
    max_depth = 65.0

    def decode_depth(self, raw: np.ndarray, rel: str) -> np.ndarray:
        return raw.astype(np.float32) / 1000.0
