"""Camera messages in: sensor_msgs/Image and CompressedImage to numpy arrays.

Pure functions over message objects (rclpy or rosbags; only field names are used). Views over the
message buffer are taken where the layout allows (no copy for rgb8 without row padding); colour
conversions, demosaicing and decoding are OpenCV's.
"""
from __future__ import annotations

import numpy as np


class ImageConversionError(ValueError):
    """An image message that cannot be converted; the message says why."""


# encoding -> (numpy dtype, channels)
_LAYOUTS = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'mono8': ('u1', 1), '8UC1': ('u1', 1), '8UC3': ('u1', 3),
    'mono16': ('u2', 1), '16UC1': ('u2', 1),
    '32FC1': ('f4', 1), '64FC1': ('f8', 1),
    'yuv422': ('u1', 2), 'uyvy': ('u1', 2), 'yuv422_yuy2': ('u1', 2), 'yuyv': ('u1', 2),
    'bayer_rggb8': ('u1', 1), 'bayer_bggr8': ('u1', 1), 'bayer_gbrg8': ('u1', 1),
    'bayer_grbg8': ('u1', 1),
}

# Encodings the model can take as a colour (or grey) image.
SUPPORTED_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '8UC3',
                       'yuv422', 'yuv422_yuy2', 'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8',
                       'bayer_grbg8')
# Single-channel encodings readable as values (depth, disparity).
SCALAR_ENCODINGS = ('32FC1', '64FC1', '16UC1', 'mono16', 'mono8', '8UC1')


def _cv2():
    import cv2
    return cv2


def _bayer_codes():
    cv2 = _cv2()
    # ROS names the pattern from the top-left 2x2 block; OpenCV's Bayer codes name the second
    # row's pair, hence the apparent swap (RG in ROS is BG in OpenCV).
    return {'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
            'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB}


def _buffer(data) -> np.ndarray:
    """The message's data as a uint8 array without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)


def image_to_array(msg) -> np.ndarray:
    """The pixels of an Image as an (H, W) or (H, W, C) array of the encoding's native dtype.

    Honours ``step`` (row padding) and ``is_bigendian``; a view of the message data when the
    rows are unpadded and the byte order is native.
    """
    encoding = str(msg.encoding)
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageConversionError(f"unsupported image encoding '{encoding}'; supported: "
                                   f"{', '.join(SUPPORTED_ENCODINGS + ('32FC1', '64FC1'))}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'empty image ({width}x{height}, encoding {encoding})')
    kind, channels = layout
    dtype = np.dtype(kind).newbyteorder('>' if msg.is_bigendian else '<')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(f'step {step} is smaller than width x pixel size = {row_bytes}'
                                   f' ({width} px of {encoding})')
    buf = _buffer(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(f'image data has {buf.size} bytes, expected step x height = '
                                   f'{step} x {height} = {step * height} ({width}x{height} '
                                   f'{encoding})')
    if step == row_bytes and (dtype.itemsize == 1 or buf.ctypes.data % dtype.itemsize == 0):
        rows = buf[:height * row_bytes].reshape(height, row_bytes)     # a view, no copy
    else:
        # Padded or misaligned rows: one compacting copy so that the typed view is valid.
        rows = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
            buf, shape=(height, row_bytes), strides=(step, 1)))
    pixels = rows.view(dtype).reshape((height, width, channels) if channels > 1
                                      else (height, width))
    if not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder('='))
    return pixels


def image_to_rgb(msg) -> np.ndarray:
    """An Image as (H, W, 3) uint8 RGB, the model's input."""
    encoding = str(msg.encoding)
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}' for the model; "
                                   f"supported: {', '.join(SUPPORTED_ENCODINGS)}")
    pixels = image_to_array(msg)
    cv2 = _cv2()
    if encoding == 'rgb8':
        return pixels
    if encoding in ('bgr8', '8UC3'):
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    if encoding == 'mono8':
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if encoding in ('mono16', '16UC1'):
        return cv2.cvtColor(_to_8bit(pixels), cv2.COLOR_GRAY2RGB)
    if encoding == 'yuv422':            # UYVY byte order
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_UYVY)
    if encoding == 'yuv422_yuy2':       # YUYV byte order
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_YUY2)
    return cv2.cvtColor(pixels, _bayer_codes()[encoding])


def _to_8bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit grey to 8 bit by its own range (per frame).

    16-bit cameras rarely use the full 0..65535 range (10/12-bit sensors, thermal), so a fixed
    shift by 8 bits would give a nearly black image; the model is affine-invariant in depth and
    sees contrast, so a per-frame min/max stretch loses nothing it needs.
    """
    lo, hi = int(pixels.min()), int(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    scaled = (pixels.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return (scaled + 0.5).astype(np.uint8)


def compressed_to_rgb(msg) -> np.ndarray:
    """A CompressedImage (jpeg or png, image_transport format strings) as (H, W, 3) RGB."""
    fmt = str(msg.format).lower()
    if 'compresseddepth' in fmt:
        raise ImageConversionError(f"CompressedImage format '{msg.format}' is a compressed depth "
                                   'image, not a camera image')
    if fmt and 'jpeg' not in fmt and 'jpg' not in fmt and 'png' not in fmt:
        raise ImageConversionError(f"unsupported CompressedImage format '{msg.format}'; "
                                   'supported: jpeg, png')
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageConversionError('CompressedImage has no data')
    cv2 = _cv2()
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageConversionError(f"CompressedImage ({msg.format or 'no format'}, {buf.size} "
                                   'bytes) could not be decoded')
    if decoded.dtype == np.uint16:
        decoded = _to_8bit(decoded) if decoded.ndim == 2 else (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    # image_transport stores the camera's colour order in the format string ("rgb8; jpeg
    # compressed bgr8" means the pixels were encoded as BGR, which imdecode returns).
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg) -> np.ndarray:
    """Image or CompressedImage to (H, W, 3) uint8 RGB."""
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def image_msg_to_float(msg) -> np.ndarray:
    """A single-channel Image as float32 values (no unit conversion)."""
    if str(msg.encoding) not in SCALAR_ENCODINGS:
        raise ImageConversionError(f"expected a single-channel image ({', '.join(SCALAR_ENCODINGS)})"
                                   f", got '{msg.encoding}'")
    return image_to_array(msg).astype(np.float32)


def image_msg_to_depth(msg) -> np.ndarray:
    """A depth Image (REP 118: 32FC1/64FC1 metres; 16UC1/mono16 millimetres) as float32 metres,
    NaN where invalid (0, negative, NaN or infinite)."""
    encoding = str(msg.encoding)
    if encoding in ('16UC1', 'mono16'):
        mm = image_to_array(msg)
        depth = mm.astype(np.float32) * np.float32(0.001)
        depth[mm == 0] = np.nan
        return depth
    if encoding in ('32FC1', '64FC1'):
        depth = image_to_array(msg).astype(np.float32)   # a copy: never modify the message
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
        return depth
    raise ImageConversionError(f"unsupported depth encoding '{encoding}'; expected 32FC1 (m), "
                               '64FC1 (m) or 16UC1 (mm)')
