"""Camera images in: every encoding, padding, byte order, compressed images, errors."""
from types import SimpleNamespace as NS

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


def backend_image(backend, array, encoding, step=None, bigendian=False):
    """The same message as msg_factories.image_msg, built by a message backend."""
    plain = image_msg(array, encoding, step, bigendian)
    return backend.image(backend.header(1, 'cam'), plain.height, plain.width, encoding,
                         plain.step, np.frombuffer(plain.data, np.uint8), bigendian)


# Every image test runs on plain bytes data, rclpy messages and rosbags messages.
MAKERS = [image_msg] + [lambda *a, _b=b, **k: backend_image(_b, *a, **k) for b in BACKENDS]
MAKER_IDS = ['bytes'] + BACKEND_IDS


def smooth_rgb(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([100 + 60 * np.sin(xx / 9), 120 + 50 * np.cos(yy / 7),
                     90 + 40 * np.sin((xx + yy) / 11)], -1).astype(np.uint8)


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('padding', [0, 5])
@pytest.mark.parametrize('image', [RGB, ODD], ids=['10x6', '7x5'])
def test_colour_encodings(make, image, padding):
    h, w = image.shape[:2]
    alpha = np.full((h, w), 77, np.uint8)
    cases = {'rgb8': image, 'bgr8': image[..., ::-1], '8UC3': image[..., ::-1],
             'rgba8': np.dstack([image, alpha]), 'bgra8': np.dstack([image[..., ::-1], alpha])}
    for encoding, pixels in cases.items():
        step = pixels.shape[1] * pixels.shape[2] + padding
        out = image_to_rgb(make(pixels, encoding, step))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8, encoding
        np.testing.assert_array_equal(out, image, err_msg=encoding)


@pytest.mark.parametrize('padding', [0, 7])
def test_rgb8_is_a_zero_copy_view_even_with_row_padding(padding):
    msg = image_msg(RGB, 'rgb8', step=30 + padding)
    msg.data = bytearray(msg.data)
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB)
    msg.data[30 + padding] = 255 - msg.data[30 + padding]         # first byte of row 1
    assert out[1, 0, 0] == msg.data[30 + padding]


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
def test_mono8_becomes_grey_rgb(make):
    grey = ODD[..., 0]
    out = image_to_rgb(make(grey, 'mono8', step=9))
    assert out.shape == (5, 7, 3)
    assert (out == grey[..., None]).all()
    with pytest.raises(ImageConversionError, match="'8UC1' for the model"):
        image_to_rgb(make(grey, '8UC1'))          # a scalar encoding, not a camera image


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize('step', [6, 7, 10], ids=['aligned', 'odd-step', 'padded'])
def test_16_bit_grey_is_stretched_to_8_bit_by_frame_range(make, encoding, bigendian, step):
    values = np.array([[1000, 1500, 1010], [2000, 3000, 1999]], np.uint16)   # a 12-bit sensor
    out = image_to_rgb(make(values, encoding, step=step, bigendian=bigendian))
    expected = (values - 1000.0) / 2000.0 * 255.0
    assert out.shape == (2, 3, 3)
    assert np.abs(out[..., 0] - expected).max() <= 0.5 + 1e-9       # rounded
    assert (out[..., 0] == out[..., 2]).all()
    flat = image_to_rgb(make(np.full((2, 2), 4000, np.uint16), encoding))
    assert flat.max() == 0                                          # constant frame: black


def _yuv422(rgb, order):
    """Independent YUV 4:2:2 packing, BT.601 video range (what UVC cameras send)."""
    r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    comps = {'Y0': y[:, 0::2], 'Y1': y[:, 1::2], 'U': u2, 'V': v2}
    packed = np.stack([comps[c] for c in order], -1)
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8).reshape(rgb.shape[0], -1, 2)


UYVY, YUYV = ('U', 'Y0', 'V', 'Y1'), ('Y0', 'U', 'Y1', 'V')


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('encoding, order, other', [('yuv422', UYVY, 'yuv422_yuy2'),
                                                    ('uyvy', UYVY, 'yuyv'),
                                                    ('yuv422_yuy2', YUYV, 'yuv422'),
                                                    ('yuyv', YUYV, 'uyvy')])
def test_yuv422_variants(make, encoding, order, other):
    rgb = smooth_rgb(47, 64)                          # odd height
    packed = _yuv422(rgb, order)
    out = image_to_rgb(make(packed, encoding, step=packed.shape[1] * 2 + 4))
    assert out.shape == rgb.shape
    # Chroma is shared by pixel pairs: a smooth image survives within a few levels.
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    swapped = image_to_rgb(make(packed, other))
    assert np.abs(swapped.astype(int) - rgb).mean() > 20          # byte order matters


def test_yuv422_needs_an_even_width():
    with pytest.raises(ImageConversionError, match='width must be even, got 7'):
        image_to_rgb(image_msg(np.zeros((5, 7, 2), np.uint8), 'yuv422'))


BAYER = {
    'bayer_rggb8': {'R': (0, 0), 'G1': (0, 1), 'G2': (1, 0), 'B': (1, 1)},
    'bayer_bggr8': {'B': (0, 0), 'G1': (0, 1), 'G2': (1, 0), 'R': (1, 1)},
    'bayer_gbrg8': {'G1': (0, 0), 'B': (0, 1), 'R': (1, 0), 'G2': (1, 1)},
    'bayer_grbg8': {'G1': (0, 0), 'R': (0, 1), 'B': (1, 0), 'G2': (1, 1)},
}


def mosaic(rgb, offsets):
    out = np.zeros(rgb.shape[:2], np.uint8)
    channel = {'R': 0, 'G1': 1, 'G2': 1, 'B': 2}
    for name, (dy, dx) in offsets.items():
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[name]]
    return out


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('encoding', sorted(BAYER))
def test_bayer_patterns_demosaic_a_smooth_image(make, encoding):
    rgb = smooth_rgb()
    out = image_to_rgb(make(mosaic(rgb, BAYER[encoding]), encoding, step=64 + 3))
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(out[inner].astype(int) - rgb[inner]).mean() < 4.0
    # No swapped channels: each output channel follows its own input channel.
    for c in range(3):
        assert np.corrcoef(out[inner][..., c].ravel(), rgb[inner][..., c].ravel())[0, 1] > 0.95
    odd = image_to_rgb(make(mosaic(rgb[:5, :7], BAYER[encoding]), encoding))
    assert odd.shape == (5, 7, 3)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_backend_messages_round_trip(backend):
    msg = backend.image(backend.header(5, 'cam'), 6, 10, 'bgr8', 30,
                        np.ascontiguousarray(RGB[..., ::-1]))
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    np.testing.assert_array_equal(message_to_rgb(msg), RGB)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('fmt, ext', [('jpeg', '.jpg'), ('png', '.png'), ('', '.png'),
                                      ('rgb8; jpeg compressed bgr8', '.jpg'),
                                      ('bgr8; png compressed bgr8', '.png')])
def test_compressed_colour_images(backend, fmt, ext):
    rgb = smooth_rgb()
    ok, encoded = cv2.imencode(ext, rgb[..., ::-1])        # image_transport encodes BGR
    assert ok
    msg = backend.compressed_image(backend.header(1, 'cam'), fmt, encoded)
    out = message_to_rgb(msg)
    tolerance = 0 if ext == '.png' else 3.0
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() <= tolerance


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_compressed_grey_alpha_and_16_bit_images(backend):
    header = backend.header(1, 'cam')
    grey = smooth_rgb()[..., 1]
    msg = backend.compressed_image(header, 'mono8; png compressed mono8',
                                   cv2.imencode('.png', grey)[1])
    np.testing.assert_array_equal(compressed_to_rgb(msg), np.dstack([grey] * 3))
    rgba = np.dstack([smooth_rgb(), np.full((48, 64), 9, np.uint8)])
    msg = backend.compressed_image(header, 'png', cv2.imencode('.png', rgba[..., [2, 1, 0, 3]])[1])
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgba[..., :3])
    grey16 = (grey.astype(np.uint16) * 4 + 1000)                      # stretched like mono16
    msg = backend.compressed_image(header, 'mono16; png compressed mono16',
                                   cv2.imencode('.png', grey16)[1])
    out = compressed_to_rgb(msg)[..., 0].astype(float)
    expected = (grey16 - grey16.min()) * 255.0 / (grey16.max() - grey16.min())
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_compressed_errors():
    with pytest.raises(ImageConversionError, match='compressed depth'):
        compressed_to_rgb(NS(format='16UC1; compressedDepth png', data=b'\x89PNG'))
    with pytest.raises(ImageConversionError, match='could not be decoded'):
        compressed_to_rgb(NS(format='jpeg', data=b'not a jpeg at all'))
    with pytest.raises(ImageConversionError, match='no data'):
        compressed_to_rgb(NS(format='jpeg', data=b''))
    with pytest.raises(ImageConversionError, match="unsupported CompressedImage format 'tiff'"):
        compressed_to_rgb(NS(format='tiff', data=b'xx'))
    with pytest.raises(ImageConversionError, match='compressed depth'):     # via the dispatcher
        message_to_rgb(NS(format='32FC1; compressedDepth', data=b'xx'))


def _broken(**changes):
    msg = image_msg(RGB, 'rgb8')
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize('msg, match', [
    (image_msg(np.zeros((2, 2, 12), np.uint8), '32FC3'), "unsupported image encoding '32FC3'"),
    (image_msg(np.zeros((2, 2), np.float32), '32FC1'), "'32FC1' for the model"),
    (_broken(data=bytes(179)), r'179 bytes, expected step x height = 30 x 6 = 180'),
    (_broken(data=bytes(181)), r'181 bytes, expected step x height = 30 x 6 = 180'),
    (_broken(step=20), r'step 20 is smaller than width x bytes per pixel = 10 x 3 = 30'),
    (_broken(height=0, width=0), r'empty image \(0x0'),
    (_broken(width=0), r'empty image \(0x6'),
])
def test_errors_name_the_problem(msg, match):
    with pytest.raises(ImageConversionError, match=match) as info:
        image_to_rgb(msg)
    assert isinstance(info.value, ValueError)


def test_supported_encodings_are_all_convertible():
    assert {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '8UC3', 'yuv422',
            'yuv422_yuy2', 'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8',
            'bayer_grbg8'} <= set(SUPPORTED_ENCODINGS)
    sizes = {'rgb8': 3, 'bgr8': 3, '8UC3': 3, 'rgba8': 4, 'bgra8': 4, 'mono16': 2, '16UC1': 2}
    for encoding in SUPPORTED_ENCODINGS:
        nbytes = sizes.get(encoding, 2 if 'yu' in encoding or 'uyvy' in encoding else 1)
        data = rng.integers(0, 256, (4, 6 * nbytes), dtype=np.uint8)
        msg = NS(height=4, width=6, encoding=encoding, is_bigendian=0, step=6 * nbytes,
                 data=data.tobytes())
        out = image_to_rgb(msg)
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, encoding


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('bigendian', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_millimetre_depth_to_metres(make, bigendian, encoding):
    mm = np.array([[0, 1000, 7], [2500, 65535, 1]], np.uint16)
    depth = image_msg_to_depth(make(mm, encoding, step=9, bigendian=bigendian))
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    assert np.isnan(depth[0, 0]) and np.isfinite(depth.ravel()[1:]).all()
    np.testing.assert_allclose(depth.ravel()[1:], [1.0, 0.007, 2.5, 65.535, 0.001], rtol=1e-7)


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize('bigendian', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize('dtype, encoding', [(np.float32, '32FC1'), (np.float64, '64FC1')])
def test_metre_depth_invalid_values_become_nan(make, bigendian, dtype, encoding):
    metres = np.array([[0.0, 1.25, np.nan], [np.inf, -1.0, 3.5], [-np.inf, 1e-3, 80.0]], dtype)
    msg = make(metres, encoding, step=3 * np.dtype(dtype).itemsize + 8, bigendian=bigendian)
    depth = image_msg_to_depth(msg)
    assert depth.dtype == np.float32
    valid = np.array([[0, 1, 0], [0, 0, 1], [0, 1, 1]], bool)
    np.testing.assert_array_equal(depth[valid], metres[valid].astype(np.float32))
    assert np.isnan(depth[~valid]).all()
    depth[...] = 0                              # a new array: the message is not modified
    assert image_msg_to_depth(msg)[0, 1] == 1.25


def test_depth_encoding_errors():
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'rgb8'"):
        image_msg_to_depth(image_msg(RGB, 'rgb8'))
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'mono8'"):
        image_msg_to_depth(image_msg(RGB[..., 0], 'mono8'))


@pytest.mark.parametrize('make', MAKERS, ids=MAKER_IDS)
def test_scalar_images_keep_raw_values(make):
    disparity = np.array([[0.5, 12.25, -3.0]], np.float32)
    np.testing.assert_array_equal(image_msg_to_float(make(disparity, '32FC1', bigendian=True)),
                                  disparity)
    for encoding, dtype in (('16UC1', np.uint16), ('mono16', np.uint16), ('8UC1', np.uint8),
                            ('mono8', np.uint8), ('64FC1', np.float64)):
        raw = np.array([[0, 7, 200]], dtype)
        out = image_msg_to_float(make(raw, encoding, step=raw.itemsize * 3 + 2))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, raw.astype(np.float32), err_msg=encoding)
    with pytest.raises(ImageConversionError, match="single-channel .* got 'rgb8'"):
        image_msg_to_float(image_msg(RGB, 'rgb8'))
