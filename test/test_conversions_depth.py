"""Depth out (REP 117/118), colourised views and resized camera_info."""
import cv2
import numpy as np
import pytest

from fiffdepth_ros.conversions.camera_info import scale_camera_info
from fiffdepth_ros.conversions.colorize import ColorizeError, colorize_depth
from fiffdepth_ros.conversions.depth_image import depth_to_image_msg, rgb_to_image_msg
from fiffdepth_ros.conversions.images import (ImageConversionError, image_msg_to_depth,
                                              image_to_rgb)
from fiffdepth_ros.geometry.camera_model import CameraInfoError, CameraModel
from msg_factories import BACKEND_IDS, BACKENDS

DEPTH = np.array([[0.5, 1.2344, np.nan], [np.inf, -2.0, 70.0], [3.0, 0.0, 1e-4]], np.float32)
RANDOM_DEPTH = np.random.default_rng(2).uniform(0.01, 60.0, (7, 5)).astype(np.float32)


def raw_bytes(msg, dtype):
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_32fc1_round_trip_is_exact_with_nan_invalid(backend):
    header = backend.header(123, 'cam')
    msg = depth_to_image_msg(DEPTH, header, backend, '32FC1')
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('32FC1', 3, 3, 12)
    assert not msg.is_bigendian and msg.header.frame_id == 'cam'
    assert len(bytes(msg.data)) == 36
    back = image_msg_to_depth(msg)
    valid = np.isfinite(DEPTH) & (DEPTH > 0)
    np.testing.assert_array_equal(back[valid], DEPTH[valid])
    assert np.isnan(back[~valid]).all()
    np.testing.assert_array_equal(image_msg_to_depth(depth_to_image_msg(
        RANDOM_DEPTH, header, backend)), RANDOM_DEPTH)                 # odd size 5x7, exact


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_32fc1_keeps_nan_and_accepts_float64_and_views(backend):
    depth64 = DEPTH.astype(np.float64)
    raw = raw_bytes(depth_to_image_msg(depth64, backend.header(1, 'c'), backend), '<f4')
    assert np.isnan(raw[0, 2]) and raw[0, 1] == np.float32(1.2344)    # NaN passes through
    strided = RANDOM_DEPTH[::2, ::-1]                                   # non-contiguous input
    msg = depth_to_image_msg(strided, backend.header(1, 'c'), backend)
    np.testing.assert_array_equal(raw_bytes(msg, '<f4'), strided)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('encoding', ['32FC1', '16UC1'])
def test_message_owns_its_bytes(backend, encoding):
    depth = RANDOM_DEPTH.copy()
    msg = depth_to_image_msg(depth, backend.header(1, 'c'), backend, encoding)
    before = bytes(msg.data)
    depth[...] = 1.0                        # the caller reuses its array for the next frame
    assert bytes(msg.data) == before


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_16uc1_is_rounded_saturated_and_zero_invalid(backend):
    msg = depth_to_image_msg(DEPTH, backend.header(1, 'cam'), backend, '16UC1')
    assert (msg.encoding, msg.step, msg.height, msg.width) == ('16UC1', 6, 3, 3)
    raw = raw_bytes(msg, '<u2')
    np.testing.assert_array_equal(raw, [[500, 1234, 0], [0, 0, 65535], [3000, 0, 0]])
    back = image_msg_to_depth(msg)
    assert back[1, 2] == pytest.approx(65.535)                          # saturated, not wrapped
    assert np.isnan(back[[0, 1, 1, 2, 2], [2, 0, 1, 1, 2]]).all()       # invalid in, invalid out
    # Far beyond 65.535 m, in float32 and float64: saturated, never wrapped or invalid.
    far = np.array([[65.5354, 65.5356, 1e6, 3e38]], np.float32)
    np.testing.assert_array_equal(raw_bytes(depth_to_image_msg(far, msg.header, backend, '16UC1'),
                                            '<u2'), [[65535] * 4])
    huge = np.array([[1e300, 65.5]], np.float64)
    np.testing.assert_array_equal(raw_bytes(depth_to_image_msg(huge, msg.header, backend,
                                                               '16UC1'), '<u2'), [[65535, 65500]])


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_16uc1_round_trip_within_half_a_millimetre(backend):
    depth = np.random.default_rng(4).uniform(0.001, 65.5, (31, 17)).astype(np.float32)
    back = image_msg_to_depth(depth_to_image_msg(depth, backend.header(1, 'c'), backend,
                                                 '16UC1'))
    assert np.isfinite(back).all()
    assert np.abs(back.astype(np.float64) - depth).max() <= 0.0005 + 1e-6


def test_unknown_encoding_and_bad_shapes_are_refused():
    backend = BACKENDS[1]
    header = backend.header(1, 'c')
    with pytest.raises(ImageConversionError, match="unsupported depth encoding '8UC1'"):
        depth_to_image_msg(DEPTH, header, backend, '8UC1')
    with pytest.raises(ImageConversionError, match=r'HxW array, got shape \(2, 2, 2\)'):
        depth_to_image_msg(np.zeros((2, 2, 2)), header, backend)
    with pytest.raises(ImageConversionError, match=r'non-empty HxW array, got shape \(0, 4\)'):
        depth_to_image_msg(np.zeros((0, 4), np.float32), header, backend, '16UC1')
    with pytest.raises(ImageConversionError, match='HxWx3 uint8'):
        rgb_to_image_msg(np.zeros((2, 2)), header, backend)
    with pytest.raises(ImageConversionError, match='HxWx3 uint8'):
        rgb_to_image_msg(np.zeros((2, 2, 3), np.float32), header, backend)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_rgb8_message(backend):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, backend.header(1, 'cam'), backend)
    assert (msg.encoding, msg.step, msg.height, msg.width) == ('rgb8', 21, 5, 7)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    rgb[...] = 0                                    # the message owns a copy
    assert image_to_rgb(msg).any()


def test_colorize_fixed_range_near_warm_far_cool_invalid_black():
    depth = np.tile(np.linspace(1.0, 5.0, 50, dtype=np.float32), (10, 1))
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -np.inf
    rgb = colorize_depth(depth, 1.0, 5.0)
    assert rgb.shape == (10, 50, 3) and rgb.dtype == np.uint8
    assert (rgb[[0, 1, 2], [0, 1, 2]] == 0).all()
    near, far = rgb[5, 0].astype(int), rgb[5, -1].astype(int)
    assert near[0] > near[2] and far[2] > far[0]                 # turbo: near red, far blue
    # The colours are OpenCV's TURBO map, in RGB order: near = index 255, far = index 0.
    turbo = cv2.applyColorMap(np.array([[255, 0]], np.uint8), cv2.COLORMAP_TURBO)[0, :, ::-1]
    np.testing.assert_array_equal(rgb[5, [0, -1]], turbo)
    # Outside the fixed range: the end colours.
    np.testing.assert_array_equal(colorize_depth(np.array([[0.2, 9.0]]), 1.0, 5.0)[0], turbo)


def test_colorize_per_frame_range_is_robust_and_scale_free():
    depth = np.tile(np.linspace(1.0, 5.0, 50, dtype=np.float32), (10, 1))
    auto = colorize_depth(depth)
    np.testing.assert_array_equal(colorize_depth(depth * 3), auto)     # same picture
    assert not np.array_equal(colorize_depth(depth * 3, 1.0, 5.0), colorize_depth(depth, 1, 5))
    spiky = depth.copy()
    spiky[0, :3] = 1000.0              # a few outliers barely change the picture, where a
    robust = np.abs(colorize_depth(spiky)[1:].astype(int) - auto[1:]).mean()   # min/max
    plain = np.abs(colorize_depth(spiky, 1.0, 1000.0)[1:].astype(int) - auto[1:]).mean()
    assert robust < 10 and plain > 5 * robust           # range would wash it out
    assert colorize_depth(np.full((3, 3), np.nan)).max() == 0
    flat = colorize_depth(np.full((3, 3), 2.0))
    assert (flat == flat[0, 0]).all() and flat.any()
    # One end fixed, the other from the frame.
    half = colorize_depth(depth, vmin=3.0)
    assert (half[:, :25] == half[0, 0]).all()         # everything nearer than 3 m: nearest colour
    assert not (half[:, 25:] == half[0, 0]).all(axis=-1).all()


def test_colorize_viridis_and_errors():
    depth = np.tile(np.linspace(1.0, 5.0, 20, dtype=np.float32), (4, 1))
    viridis = colorize_depth(depth, 1.0, 5.0, colormap='viridis')
    assert viridis[0, 0].sum() > viridis[0, -1].sum()           # near bright, far dark
    with pytest.raises(ColorizeError, match="unknown colormap 'rainbow'"):
        colorize_depth(depth, colormap='rainbow')
    with pytest.raises(ColorizeError, match='vmin <= vmax'):
        colorize_depth(depth, 5.0, 1.0)
    with pytest.raises(ColorizeError, match='finite'):
        colorize_depth(depth, 1.0, np.inf)
    with pytest.raises(ValueError, match='HxW'):
        colorize_depth(np.zeros((2, 2, 3)))


def _info(backend, width=640, height=480, roi=None, binning=(0, 0), d=(0.1, 0, 0, 0, 0)):
    k = [500.0, 0, 319.5, 0, 510.0, 239.5, 0, 0, 1]
    p = [490.0, 0, 321.5, -24.5, 0, 500.0, 238.5, 0, 0, 0, 1, 0]     # a stereo right camera
    r = [0.999, -0.01, 0.0, 0.01, 0.999, 0.0, 0.0, 0.0, 1.0]
    roi_msg = backend.region_of_interest(*roi) if roi else None
    return backend.camera_info(backend.header(7, 'cam'), height, width, 'plumb_bob', list(d), k,
                               r, p, binning[0], binning[1], roi_msg)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('rectified', [True, False], ids=['rectified', 'raw'])
def test_scaled_camera_info_matches_resized_image_geometry(backend, rectified):
    info = _info(backend)
    out = scale_camera_info(info, 320, 240, backend)
    assert (out.width, out.height) == (320, 240)
    assert out.header.frame_id == 'cam' and out.header.stamp.nanosec == 7
    K, P = np.asarray(out.k).reshape(3, 3), np.asarray(out.p).reshape(3, 4)
    # Pixel-centre convention of cv2.resize: u' = (u + 0.5) s - 0.5.
    assert K[0, 0] == pytest.approx(250.0) and K[0, 2] == pytest.approx((319.5 + 0.5) / 2 - 0.5)
    assert P[0, 3] == pytest.approx(-24.5 / 2) and P[1, 2] == pytest.approx((238.5 + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(np.asarray(out.d), [0.1, 0, 0, 0, 0])
    np.testing.assert_allclose(np.asarray(out.r), np.asarray(info.r))
    assert out.distortion_model == 'plumb_bob'
    # Every point projects to the same relative image position before and after, on raw
    # (K, D) and rectified (P) images alike.
    src = CameraModel.from_camera_info(info, rectified=rectified)
    dst = CameraModel.from_camera_info(out, rectified=rectified)
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.7, 3.0], [0.0, 0.0, 1.0]])
    u0, v0, _ = src.project(pts)
    u1, v1, _ = dst.project(pts)
    np.testing.assert_allclose(u1, (u0 + 0.5) / 2 - 0.5, atol=1e-9)
    np.testing.assert_allclose(v1, (v0 + 0.5) / 2 - 0.5, atol=1e-9)
    assert dst.key == src.scaled(320, 240).key


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_scaled_camera_info_folds_roi_and_binning(backend):
    info = _info(backend, roi=(100, 50, 200, 300), binning=(2, 2))   # the image is 150x100
    out = scale_camera_info(info, 300, 200, backend)                # x2 of the binned ROI
    K = np.asarray(out.k).reshape(3, 3)
    assert K[0, 0] == pytest.approx(500.0)                           # 500 / 2 * 2
    assert K[0, 2] == pytest.approx(((319.5 - 100) / 2 + 0.5) * 2 - 0.5)
    assert K[1, 2] == pytest.approx(((239.5 - 50) / 2 + 0.5) * 2 - 0.5)
    assert out.roi.width == 0 and out.roi.x_offset == 0 and out.binning_x == 0
    src = CameraModel.from_camera_info(info, rectified=False)
    dst = CameraModel.from_camera_info(out, rectified=False)
    u0, v0, _ = src.project(np.array([[0.2, 0.1, 1.5]]))
    u1, v1, _ = dst.project(np.array([[0.2, 0.1, 1.5]]))
    assert u1[0] == pytest.approx((u0[0] + 0.5) * 2 - 0.5)
    assert v1[0] == pytest.approx((v0[0] + 0.5) * 2 - 0.5)


def test_scaled_camera_info_errors():
    backend = BACKENDS[0]
    with pytest.raises(CameraInfoError, match='positive'):
        scale_camera_info(_info(backend), 0, 10, backend)
    uncalibrated = backend.camera_info(backend.header(1, 'c'), 480, 640, 'plumb_bob', [],
                                       np.zeros(9), np.eye(3), np.zeros(12))
    with pytest.raises(CameraInfoError, match='zero focal length'):
        scale_camera_info(uncalibrated, 320, 240, backend)


@pytest.mark.parametrize('frame_id', ['c', 'cam', 'camera_optical'])
@pytest.mark.parametrize('encoding', ['32FC1', '16UC1'])
def test_depth_read_back_from_serialised_bag_messages(frame_id, encoding):
    backend = BACKENDS[1]
    store = backend.typestore
    msg = depth_to_image_msg(RANDOM_DEPTH, backend.header(1, frame_id), backend, encoding)
    back = store.deserialize_cdr(store.serialize_cdr(msg, 'sensor_msgs/msg/Image'),
                                 'sensor_msgs/msg/Image')
    np.testing.assert_array_equal(image_msg_to_depth(back), image_msg_to_depth(msg))
    assert np.abs(image_msg_to_depth(back) - RANDOM_DEPTH).max() <= 0.0005 + 1e-6
