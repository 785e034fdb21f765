"""Camera images in: every encoding, padding, byte order, compressed images, errors."""
import cv2
import numpy as np
import pytest

from fiffdepth_ros.conversions.images import (ImageConversionError, SUPPORTED_ENCODINGS,
                                              compressed_to_rgb, image_msg_to_depth,
                                              image_msg_to_float, image_to_rgb, message_to_rgb)
from msg_factories import BACKEND_IDS, BACKENDS, image_msg

rng = np.random.default_rng(0)
RGB = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
ODD = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def smooth_rgb(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([100 + 60 * np.sin(xx / 9), 120 + 50 * np.cos(yy / 7),
                     90 + 40 * np.sin((xx + yy) / 11)], -1).astype(np.uint8)


@pytest.mark.parametrize('padding', [0, 5])
@pytest.mark.parametrize('image', [RGB, ODD], ids=['6x10', '5x7'])
def test_colour_encodings(image, padding):
    h, w = image.shape[:2]
    cases = {
        'rgb8': image, 'bgr8': image[..., ::-1], '8UC3': image[..., ::-1],
        'rgba8': np.dstack([image, np.full((h, w), 77, np.uint8)]),
        'bgra8': np.dstack([image[..., ::-1], np.full((h, w), 77, np.uint8)]),
    }
    for encoding, pixels in cases.items():
        step = pixels.shape[1] * pixels.shape[2] + padding
        out = image_to_rgb(image_msg(pixels, encoding, step))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8, encoding
        np.testing.assert_array_equal(out, image, err_msg=encoding)


def test_rgb8_without_padding_is_a_zero_copy_view():
    msg = image_msg(RGB, 'rgb8')
    msg.data = bytearray(msg.data)
    out = image_to_rgb(msg)
    msg.data[0] = 255 - msg.data[0]
    assert out[0, 0, 0] == msg.data[0]


def test_mono8_becomes_grey_rgb():
    grey = RGB[..., 0]
    out = image_to_rgb(image_msg(grey, 'mono8', step=13))
    assert (out == grey[..., None]).all()


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16_bit_grey_is_stretched_to_8_bit(encoding, bigendian):
    values = np.array([[1000, 1500], [2000, 3000]], np.uint16)   # a 12-bit sensor's range
    out = image_to_rgb(image_msg(values, encoding, step=6, bigendian=bigendian))
    expected = np.rint((values - 1000) / 2000 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (out[..., 0] == out[..., 2]).all()


def _yuv422(rgb, order):
    """Independent YUV 4:2:2 packing, BT.601 video range (what UVC cameras send)."""
    r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    comps = {'Y0': y0, 'Y1': y1, 'U': u2, 'V': v2}
    packed = np.stack([comps[c] for c in order], -1)
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8).reshape(rgb.shape[0], -1, 2)


@pytest.mark.parametrize('encoding, order', [('yuv422', ('U', 'Y0', 'V', 'Y1')),
                                             ('yuv422_yuy2', ('Y0', 'U', 'Y1', 'V'))])
def test_yuv422_variants(encoding, order):
    rgb = smooth_rgb()
    packed = _yuv422(rgb, order)
    out = image_to_rgb(image_msg(packed, encoding, step=packed.shape[1] * 2 + 4))
    assert out.shape == rgb.shape
    # Chroma is shared by pixel pairs: smooth images survive within a few levels.
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    swapped = image_to_rgb(image_msg(packed, 'yuv422_yuy2' if encoding == 'yuv422' else 'yuv422'))
    assert np.abs(swapped.astype(int) - rgb).mean() > 20      # byte order matters


@pytest.mark.parametrize('encoding, offsets', [
    ('bayer_rggb8', {'R': (0, 0), 'G1': (0, 1), 'G2': (1, 0), 'B': (1, 1)}),
    ('bayer_bggr8', {'B': (0, 0), 'G1': (0, 1), 'G2': (1, 0), 'R': (1, 1)}),
    ('bayer_gbrg8', {'G1': (0, 0), 'B': (0, 1), 'R': (1, 0), 'G2': (1, 1)}),
    ('bayer_grbg8', {'G1': (0, 0), 'R': (0, 1), 'B': (1, 0), 'G2': (1, 1)}),
])
def test_bayer_patterns_demosaic_a_smooth_image(encoding, offsets):
    rgb = smooth_rgb()
    mosaic = np.zeros(rgb.shape[:2], np.uint8)
    channel = {'R': 0, 'G1': 1, 'G2': 1, 'B': 2}
    for name, (dy, dx) in offsets.items():
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[name]]
    out = image_to_rgb(image_msg(mosaic, encoding))
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(out[inner].astype(int) - rgb[inner]).mean() < 4.0
    # The colour channels must not be swapped: red stays red.
    assert np.corrcoef(out[inner][..., 0].ravel(), rgb[inner][..., 0].ravel())[0, 1] > 0.95


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_backend_messages_round_trip(backend):
    msg = backend.image(backend.header(5, 'cam'), 6, 10, 'bgr8', 30,
                        np.ascontiguousarray(RGB[..., ::-1]))
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    np.testing.assert_array_equal(message_to_rgb(msg), RGB)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('fmt, ext', [('jpeg', '.jpg'), ('png', '.png'),
                                      ('rgb8; jpeg compressed bgr8', '.jpg'),
                                      ('bgr8; png compressed bgr8', '.png')])
def test_compressed_images(backend, fmt, ext):
    rgb = smooth_rgb()
    ok, encoded = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    msg = backend.compressed_image(backend.header(1, 'cam'), fmt, encoded)
    out = message_to_rgb(msg)
    tolerance = 0 if ext == '.png' else 3.0
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() <= tolerance


def test_compressed_errors():
    from types import SimpleNamespace as NS
    with pytest.raises(ImageConversionError, match='compressed depth'):
        compressed_to_rgb(NS(format='16UC1; compressedDepth png', data=b'\x89PNG'))
    with pytest.raises(ImageConversionError, match='could not be decoded'):
        compressed_to_rgb(NS(format='jpeg', data=b'not a jpeg at all'))
    with pytest.raises(ImageConversionError, match='no data'):
        compressed_to_rgb(NS(format='jpeg', data=b''))
    with pytest.raises(ImageConversionError, match="unsupported CompressedImage format 'tiff'"):
        compressed_to_rgb(NS(format='tiff', data=b'xx'))


def test_errors_name_the_problem():
    with pytest.raises(ImageConversionError, match="unsupported image encoding '32FC3'"):
        image_to_rgb(image_msg(np.zeros((2, 2, 12), np.uint8), '32FC3'))
    with pytest.raises(ImageConversionError, match='model'):
        image_to_rgb(image_msg(np.zeros((2, 2), np.float32), '32FC1'))
    short = image_msg(RGB, 'rgb8')
    short.data = short.data[:-1]
    with pytest.raises(ImageConversionError, match='expected step x height'):
        image_to_rgb(short)
    narrow = image_msg(RGB, 'rgb8')
    narrow.step = 20
    with pytest.raises(ImageConversionError, match='step 20 is smaller'):
        image_to_rgb(narrow)
    empty = image_msg(RGB, 'rgb8')
    empty.height = empty.width = 0
    with pytest.raises(ImageConversionError, match='empty image'):
        image_to_rgb(empty)
    assert set(SUPPORTED_ENCODINGS) >= {'rgb8', 'bgr8', 'mono16', 'yuv422', 'bayer_grbg8'}


@pytest.mark.parametrize('bigendian', [False, True])
def test_depth_images_to_metres(bigendian):
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    depth = image_msg_to_depth(image_msg(mm, '16UC1', step=8, bigendian=bigendian))
    assert np.isnan(depth[0, 0])
    np.testing.assert_allclose(depth[~np.isnan(depth)], [1.0, 2.5, 65.535], rtol=1e-6)
    metres = np.array([[0.0, 1.25], [np.inf, -1.0]], np.float32)
    depth = image_msg_to_depth(image_msg(metres, '32FC1', bigendian=bigendian))
    assert depth[0, 1] == 1.25 and np.isnan(depth[[0, 1, 1], [0, 0, 1]]).all()
    f64 = image_msg_to_depth(image_msg(metres.astype(np.float64), '64FC1'))
    assert f64.dtype == np.float32 and f64[0, 1] == 1.25
    with pytest.raises(ImageConversionError, match='depth encoding'):
        image_msg_to_depth(image_msg(RGB, 'rgb8'))


def test_scalar_images_keep_raw_values():
    disparity = np.array([[0.5, 12.25]], np.float32)
    np.testing.assert_array_equal(image_msg_to_float(image_msg(disparity, '32FC1')), disparity)
    with pytest.raises(ImageConversionError, match='single-channel'):
        image_msg_to_float(image_msg(RGB, 'rgb8'))
