"""Depth out: float32 metres to sensor_msgs/Image (REP 117/118), and rgb8 images for people."""
from __future__ import annotations

import numpy as np

from .backends import MessageBackend
from .images import ImageConversionError

DEPTH_ENCODINGS = ('32FC1', '16UC1')


def depth_to_16uc1(depth_m: np.ndarray) -> np.ndarray:
    """Millimetres as uint16: rounded, saturated at 65535 (never wrapped), 0 = invalid.

    NaN, infinite, zero and negative depths are invalid (0). Depths below 0.5 mm round to 0
    and so read back as invalid, as in every 16UC1 depth image.
    """
    depth_m = np.asarray(depth_m)
    with np.errstate(invalid='ignore', over='ignore'):
        invalid = ~(depth_m > 0)                 # NaN, zero, negative
        invalid |= np.isinf(depth_m)
        mm = np.multiply(depth_m, 1000.0, dtype=np.float64 if depth_m.dtype == np.float64
                         else np.float32)
    np.copyto(mm, 0.0, where=invalid)
    np.clip(mm, 0.0, 65535.0, out=mm)            # far but finite: saturated, never wrapped
    np.rint(mm, out=mm)
    return mm.astype('<u2')


def depth_to_image_msg(depth_m: np.ndarray, header, backend: MessageBackend,
                       encoding: str = '32FC1'):
    """REP 118 depth image: 32FC1 metres (NaN invalid) or 16UC1 millimetres (0 invalid).

    32FC1 passes the values through unchanged (NaN stays NaN).
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2 or depth_m.size == 0:
        raise ImageConversionError(f'depth must be a non-empty HxW array, got shape '
                                   f'{depth_m.shape}')
    height, width = depth_m.shape
    if encoding == '32FC1':
        data = np.ascontiguousarray(depth_m, dtype='<f4')   # no copy for C-order float32
        step = width * 4
    elif encoding == '16UC1':
        data = depth_to_16uc1(depth_m)
        step = width * 2
    else:
        raise ImageConversionError(f"unsupported depth encoding '{encoding}': expected one of "
                                   f'{", ".join(DEPTH_ENCODINGS)}')
    return backend.image(header, height, width, encoding, step, data)


def rgb_to_image_msg(rgb: np.ndarray, header, backend: MessageBackend):
    """An (H, W, 3) uint8 RGB array as an rgb8 Image."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ImageConversionError(f'expected a non-empty HxWx3 uint8 array, got {rgb.dtype} '
                                   f'{rgb.shape}')
    height, width = rgb.shape[:2]
    return backend.image(header, height, width, 'rgb8', width * 3, np.ascontiguousarray(rgb))
