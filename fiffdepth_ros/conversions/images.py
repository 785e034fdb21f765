"""Camera messages in: sensor_msgs/Image and CompressedImage to numpy arrays.

Pure functions over message objects (rclpy or rosbags; only field names are used: ``data`` is an
array.array/bytes in rclpy and a uint8 numpy array in rosbags). Pixels are read through a strided
view of the message buffer, so rgb8 comes back without a copy, row padding included; colour
conversion, demosaicing and decoding are OpenCV's. Arrays returned may be read-only views of the
message data: copy before writing into them.
"""
from __future__ import annotations

import numpy as np


class ImageConversionError(ValueError):
    """An image message (or array) that cannot be converted; the message says why."""


# encoding -> (numpy dtype, channels); the bytes of one pixel are itemsize x channels.
_LAYOUTS = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'mono8': ('u1', 1), '8UC1': ('u1', 1), '8UC3': ('u1', 3),
    'mono16': ('u2', 1), '16UC1': ('u2', 1),
    '32FC1': ('f4', 1), '64FC1': ('f8', 1),
    # 4:2:2 packs two pixels in four bytes: two bytes per pixel.
    'yuv422': ('u1', 2), 'uyvy': ('u1', 2), 'yuv422_yuy2': ('u1', 2), 'yuyv': ('u1', 2),
    'bayer_rggb8': ('u1', 1), 'bayer_bggr8': ('u1', 1), 'bayer_gbrg8': ('u1', 1),
    'bayer_grbg8': ('u1', 1),
}

# Encodings the model can take as a colour (or grey) image. 'uyvy' and 'yuyv' are the newer
# sensor_msgs names of yuv422 and yuv422_yuy2.
SUPPORTED_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '8UC3',
                       'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'bayer_rggb8', 'bayer_bggr8',
                       'bayer_gbrg8', 'bayer_grbg8')
# Single-channel encodings readable as values (depth, disparity).
SCALAR_ENCODINGS = ('32FC1', '64FC1', '16UC1', 'mono16', 'mono8', '8UC1')
DEPTH_IN_ENCODINGS = ('32FC1', '64FC1', '16UC1', 'mono16')


def _cv2():
    import cv2      # imported late: message parsing alone should not need OpenCV
    return cv2


def _colour_codes(cv2) -> dict:
    """encoding -> OpenCV conversion code to RGB (absent: already RGB or special-cased)."""
    return {
        'bgr8': cv2.COLOR_BGR2RGB, '8UC3': cv2.COLOR_BGR2RGB,
        'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
        'mono8': cv2.COLOR_GRAY2RGB,
        'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
        'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2, 'yuyv': cv2.COLOR_YUV2RGB_YUY2,
        # ROS names a Bayer pattern by its top-left 2x2 block read row by row; OpenCV names it
        # by the second row's first two pixels, so ROS RGGB is OpenCV BG, and so on.
        'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
        'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
    }


def message_bytes(data) -> np.ndarray:
    """A message's ``data`` (array.array, bytes, memoryview or numpy) as uint8, without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)


def image_to_array(msg) -> np.ndarray:
    """The pixels of an Image as (H, W) or (H, W, C) of the encoding's dtype, in native order.

    A strided view of the message data when the layout allows (padded rows included); a copy
    only for big-endian multi-byte data or rows misaligned for their element type.
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
        raise ImageConversionError(f'step {step} is smaller than width x bytes per pixel = '
                                   f'{width} x {channels * dtype.itemsize} = {row_bytes} '
                                   f'({encoding})')
    buf = message_bytes(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(f'image data has {buf.size} bytes, expected step x height = '
                                   f'{step} x {height} = {step * height} ({width}x{height} '
                                   f'{encoding})')
    if (buf.ctypes.data % dtype.itemsize) or (step % dtype.itemsize):
        # Rows that do not start on an element boundary: compact them once (rare: odd steps).
        buf = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
            buf, shape=(height, row_bytes), strides=(step, 1))).reshape(-1)
        step = row_bytes
    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, channels * dtype.itemsize, dtype.itemsize)[:len(shape)]
    pixels = np.ndarray(shape, dtype, buffer=buf, strides=strides)
    if not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder('='))
    return pixels


def image_to_rgb(msg) -> np.ndarray:
    """An Image as (H, W, 3) uint8 RGB, the model's input.

    rgb8 comes back as a view of the message data (row-strided when the rows are padded).
    mono16/16UC1 are stretched to 8 bit by the frame's own min/max (see ``gray16_to_8bit``).
    """
    encoding = str(msg.encoding)
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}' for the model; "
                                   f"supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv') and int(msg.width) % 2:
        raise ImageConversionError(f'{encoding} packs pixel pairs: width must be even, got '
                                   f'{msg.width}')
    pixels = image_to_array(msg)
    if encoding == 'rgb8':
        return pixels
    cv2 = _cv2()
    if encoding in ('mono16', '16UC1'):
        return cv2.cvtColor(gray16_to_8bit(pixels), cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(pixels, _colour_codes(cv2)[encoding])


def gray16_to_8bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit grey to 8 bit, stretched by the frame's own min/max (constant frame: black).

    Why per frame and not a fixed ``>> 8``: 16-bit cameras rarely fill 0..65535 (10/12-bit
    sensors, thermal cameras, 16UC1 depth), so a fixed shift gives a nearly black image. The
    depth model is invariant to affine changes of brightness and needs contrast, which the
    stretch maximises; brightness flicker between frames does not matter to it.
    """
    cv2 = _cv2()
    return cv2.normalize(pixels, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)


def compressed_to_rgb(msg) -> np.ndarray:
    """A CompressedImage (jpeg or png) as (H, W, 3) uint8 RGB.

    Accepts the format strings image_transport writes ("jpeg", "png", "rgb8; jpeg compressed
    bgr8", "mono16; png compressed mono16"; empty: guessed by OpenCV). compressed_image_transport
    always encodes colour as BGR, which is what OpenCV decodes to. compressedDepth (a depth
    image with its own header) is refused: it is not a camera image.
    """
    fmt = str(msg.format).lower()
    if 'compresseddepth' in fmt:
        raise ImageConversionError(f"CompressedImage format '{msg.format}' is a compressed depth "
                                   'image (compressedDepth), not a camera image')
    if fmt and not any(name in fmt for name in ('jpeg', 'jpg', 'png')):
        raise ImageConversionError(f"unsupported CompressedImage format '{msg.format}'; "
                                   'supported: jpeg, png')
    buf = message_bytes(msg.data)
    if buf.size == 0:
        raise ImageConversionError('CompressedImage has no data')
    cv2 = _cv2()
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(f"CompressedImage ({msg.format or 'no format'}, {buf.size} "
                                   'bytes) could not be decoded')
    if decoded.dtype == np.uint16:       # 16-bit png: grey like mono16, colour to its top byte
        decoded = gray16_to_8bit(decoded) if decoded.ndim == 2 else (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg) -> np.ndarray:
    """Image or CompressedImage to (H, W, 3) uint8 RGB (CompressedImage has ``format``, Image has
    ``encoding``)."""
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def image_msg_to_float(msg) -> np.ndarray:
    """A single-channel Image as float32 HxW of its raw values (no unit conversion)."""
    if str(msg.encoding) not in SCALAR_ENCODINGS:
        raise ImageConversionError(f'expected a single-channel image ({", ".join(SCALAR_ENCODINGS)}'
                                   f"), got '{msg.encoding}'")
    return image_to_array(msg).astype(np.float32)


def image_msg_to_depth(msg) -> np.ndarray:
    """A depth Image as float32 HxW metres, NaN where invalid (a new array, never a view).

    REP 118: 32FC1/64FC1 in metres (0, negative, NaN and infinite are invalid); REP 117 and the
    OpenNI convention: 16UC1/mono16 in millimetres (0 is invalid).
    """
    encoding = str(msg.encoding)
    if encoding not in DEPTH_IN_ENCODINGS:
        raise ImageConversionError(f"unsupported depth encoding '{encoding}'; expected 32FC1 (m), "
                                   '64FC1 (m), 16UC1 or mono16 (mm)')
    values = image_to_array(msg)
    if encoding in ('16UC1', 'mono16'):
        depth = np.divide(values, np.float32(1000.0), dtype=np.float32)
        np.copyto(depth, np.float32(np.nan), where=values == 0)
        return depth
    with np.errstate(invalid='ignore', over='ignore'):   # 64FC1 beyond float32: inf, invalid
        depth = values.astype(np.float32)        # always a copy: never write into the message
        np.copyto(depth, np.float32(np.nan), where=~(np.isfinite(depth) & (depth > 0)))
    return depth
