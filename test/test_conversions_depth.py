"""Depth out (REP 117/118), colourised views and resized camera_info."""
import numpy as np
import pytest

from fiffdepth_ros.conversions.camera_info import scale_camera_info
from fiffdepth_ros.conversions.colorize import colorize_depth
from fiffdepth_ros.conversions.depth_image import depth_to_image_msg, rgb_to_image_msg
from fiffdepth_ros.conversions.images import image_msg_to_depth, image_to_rgb
from fiffdepth_ros.geometry.camera_model import CameraModel
from msg_factories import BACKEND_IDS, BACKENDS

DEPTH = np.array([[0.5, 1.2344, np.nan], [np.inf, -2.0, 70.0], [3.0, 0.0, 1e-4]], np.float32)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_32fc1_round_trip_is_exact_with_nan_invalid(backend):
    header = backend.header(123, 'cam')
    msg = depth_to_image_msg(DEPTH, header, backend, '32FC1')
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('32FC1', 3, 3, 12)
    assert not msg.is_bigendian and msg.header.frame_id == 'cam'
    back = image_msg_to_depth(msg)
    valid = np.isfinite(DEPTH) & (DEPTH > 0)
    np.testing.assert_array_equal(back[valid], DEPTH[valid])
    assert np.isnan(back[~valid]).all()


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_16uc1_is_rounded_saturated_and_zero_invalid(backend):
    msg = depth_to_image_msg(DEPTH, backend.header(1, 'cam'), backend, '16UC1')
    assert (msg.encoding, msg.step) == ('16UC1', 6)
    raw = np.frombuffer(bytes(msg.data), '<u2').reshape(3, 3)
    np.testing.assert_array_equal(raw, [[500, 1234, 0], [0, 0, 65535], [3000, 0, 0]])
    back = image_msg_to_depth(msg)
    assert abs(back[0, 1] - DEPTH[0, 1]) <= 0.0005                       # within 0.5 mm
    assert back[1, 2] == pytest.approx(65.535)                           # saturated, not wrapped


def test_unknown_encoding_and_bad_shapes_are_refused():
    backend = BACKENDS[1]
    with pytest.raises(ValueError, match="unsupported depth encoding '8UC1'"):
        depth_to_image_msg(DEPTH, backend.header(1, 'c'), backend, '8UC1')
    with pytest.raises(ValueError, match='HxW'):
        depth_to_image_msg(np.zeros((2, 2, 2)), backend.header(1, 'c'), backend)
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        rgb_to_image_msg(np.zeros((2, 2)), backend.header(1, 'c'), backend)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_rgb8_message(backend):
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, backend.header(1, 'cam'), backend)
    assert msg.encoding == 'rgb8' and msg.step == 15
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_colorize_ranges_and_invalid_black():
    depth = np.tile(np.linspace(1.0, 5.0, 50, dtype=np.float32), (10, 1))
    depth[0, 0] = np.nan
    rgb = colorize_depth(depth, 1.0, 5.0)
    assert rgb.shape == (10, 50, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 0).all()
    near, far = rgb[5, 0].astype(int), rgb[5, -1].astype(int)
    assert near[0] > near[2] and far[2] > far[0]                 # turbo: near red, far blue
    # Per-frame range: the same picture for a scaled copy; fixed range: not.
    auto = colorize_depth(depth)
    np.testing.assert_array_equal(colorize_depth(depth * 3), auto)
    assert not np.array_equal(colorize_depth(depth * 3, 1.0, 5.0), rgb)
    assert colorize_depth(np.full((3, 3), np.nan)).max() == 0
    with pytest.raises(ValueError, match='colormap'):
        colorize_depth(depth, colormap='rainbow')


def _info(backend, width=640, height=480, roi=None, binning=(0, 0)):
    k = [500.0, 0, 319.5, 0, 510.0, 239.5, 0, 0, 1]
    p = [500.0, 0, 319.5, 0, 0, 510.0, 239.5, 0, 0, 0, 1, 0]
    roi_msg = backend.region_of_interest(*roi) if roi else None
    return backend.camera_info(backend.header(7, 'cam'), height, width, 'plumb_bob',
                               [0.1, 0, 0, 0, 0], k, np.eye(3), p, binning[0], binning[1],
                               roi_msg)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_scaled_camera_info_matches_resized_image_geometry(backend):
    info = _info(backend)
    out = scale_camera_info(info, 320, 240, backend)
    assert (out.width, out.height) == (320, 240) and out.header.frame_id == 'cam'
    K = np.asarray(out.k).reshape(3, 3)
    # Pixel-centre convention of cv2.resize: u' = (u + 0.5) s - 0.5.
    assert K[0, 0] == pytest.approx(250.0) and K[0, 2] == pytest.approx((319.5 + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(np.asarray(out.d), [0.1, 0, 0, 0, 0])
    # A point projects to the same relative image position before and after.
    src = CameraModel.from_camera_info(info)
    dst = CameraModel.from_camera_info(out)
    pt = np.array([[0.3, -0.2, 2.0]])
    u0, v0, _ = src.project(pt)
    u1, v1, _ = dst.project(pt)
    assert u1[0] == pytest.approx((u0[0] + 0.5) / 2 - 0.5)
    assert v1[0] == pytest.approx((v0[0] + 0.5) / 2 - 0.5)


def test_scaled_camera_info_folds_roi_and_binning():
    backend = BACKENDS[0]
    info = _info(backend, roi=(100, 50, 200, 300), binning=(2, 2))   # image is 150x100
    out = scale_camera_info(info, 300, 200, backend)                # x2 of the binned ROI
    K = np.asarray(out.k).reshape(3, 3)
    assert K[0, 0] == pytest.approx(500.0)                           # 500 / 2 * 2
    assert K[0, 2] == pytest.approx(((319.5 - 100) / 2 + 0.5) * 2 - 0.5)
    assert out.roi.width == 0 and out.binning_x == 0
    with pytest.raises(ValueError, match='positive'):
        scale_camera_info(info, 0, 10, backend)
