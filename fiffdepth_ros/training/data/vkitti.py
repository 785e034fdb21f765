"""Virtual KITTI 2 in Marigold's layout (a folder or a tar):

    rgb/Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg
    depth/Scene01/clone/frames/depth/Camera_0/depth_00000.png

listed in data_split/vkitti_depth/vkitti_{train,val}.txt ('None' depth entries skipped); depth is
uint16 centimetres; valid in (1e-5, 80) m; cropped to the KITTI benchmark window (352x1216,
bottom-centred) as Marigold trains.
"""
from __future__ import annotations

import numpy as np

from .common import RGBDDataset

KB_CROP_HW = (352, 1216)


def kitti_benchmark_crop(array: np.ndarray) -> np.ndarray:
    """The bottom 352 rows and the centred 1216 columns (KITTI's benchmark size)."""
    h, w = array.shape[:2]
    top = max(0, h - KB_CROP_HW[0])
    left = max(0, (w - KB_CROP_HW[1]) // 2)
    return array[top:top + KB_CROP_HW[0], left:left + KB_CROP_HW[1]]


class VirtualKitti2Depth(RGBDDataset):
    name = 'vkitti'
    min_depth = 1e-5
    max_depth = 80.0

    def __init__(self, source, rows, split_path, resize_to_hw=None, kitti_bm_crop=True):
        rows = [r for r in rows if len(r) < 2 or r[1] != 'None']
        super().__init__(source, rows, split_path, resize_to_hw)
        self.kitti_bm_crop = bool(kitti_bm_crop)

    def decode_depth(self, raw: np.ndarray, rel: str) -> np.ndarray:
        return raw.astype(np.float32) / 100.0

    def crop(self, rgb, depth):
        if not self.kitti_bm_crop:
            return rgb, depth
        return kitti_benchmark_crop(rgb), kitti_benchmark_crop(depth)
