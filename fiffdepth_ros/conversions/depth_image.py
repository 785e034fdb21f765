"""Depth out: float32 metres to sensor_msgs/Image (REP 117/118), and RGB views for people."""
from __future__ import annotations

import numpy as np

from .backends import MessageBackend

DEPTH_ENCODINGS = ('32FC1', '16UC1')


def depth_to_16uc1(depth_m: np.ndarray) -> np.ndarray:
    """Millimetres as uint16: rounded, saturated at 65535 (never wrapped), 0 = invalid."""
    mm = np.multiply(depth_m, 1000.0, dtype=np.float32)
    mm[~(np.isfinite(mm) & (mm > 0.0))] = 0.0   # NaN, +-inf, negative, zero -> invalid
    np.clip(mm, 0.0, 65535.0, out=mm)           # far but finite: saturated, never wrapped
    return np.rint(mm).astype(np.uint16)


def depth_to_image_msg(depth_m: np.ndarray, header, backend: MessageBackend,
                       encoding: str = '32FC1'):
    """REP 118 depth image: 32FC1 metres (NaN invalid) or 16UC1 millimetres (0 invalid)."""
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2 or depth_m.size == 0:
        raise ValueError(f'depth must be a non-empty HxW array, got shape {depth_m.shape}')
    height, width = depth_m.shape
    if encoding == '32FC1':
        data = np.ascontiguousarray(depth_m, dtype='<f4')
        return backend.image(header, height, width, '32FC1', width * 4, data)
    if encoding == '16UC1':
        data = depth_to_16uc1(depth_m).astype('<u2', copy=False)
        return backend.image(header, height, width, '16UC1', width * 2, data)
    raise ValueError(f"unsupported depth encoding '{encoding}': expected one of "
                     f'{", ".join(DEPTH_ENCODINGS)}')


def rgb_to_image_msg(rgb: np.ndarray, header, backend: MessageBackend):
    """An (H, W, 3) uint8 RGB array as an rgb8 Image."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f'expected a non-empty HxWx3 uint8 array, got {rgb.dtype} {rgb.shape}')
    height, width = rgb.shape[:2]
    return backend.image(header, height, width, 'rgb8', width * 3, np.ascontiguousarray(rgb))
