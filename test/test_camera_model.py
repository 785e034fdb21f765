"""CameraModel: rectified vs raw, distortion models, binning and ROI, projection <-> rays."""
from types import SimpleNamespace as NS

import numpy as np
import pytest

from fiffdepth_ros.geometry.camera_model import CameraInfoError, CameraModel

K = [400.0, 0.0, 319.5, 0.0, 410.0, 239.5, 0.0, 0.0, 1.0]
P = [380.0, 0.0, 320.0, 0.0, 0.0, 390.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def info(d=(0.0,) * 5, model='plumb_bob', k=K, p=P, width=640, height=480, binning=(0, 0),
         roi=(0, 0, 0, 0)):
    return NS(k=list(k), p=list(p), d=list(d), distortion_model=model, width=width,
              height=height, binning_x=binning[0], binning_y=binning[1],
              roi=NS(x_offset=roi[0], y_offset=roi[1], height=roi[2], width=roi[3]))


def test_rectified_uses_p_and_raw_uses_k():
    assert CameraModel.from_camera_info(info(), rectified=True).intrinsics == (380, 390, 320, 240)
    assert CameraModel.from_camera_info(info(), rectified=False).intrinsics == \
        (400, 410, 319.5, 239.5)


def test_rays_of_a_pinhole_camera():
    cam = CameraModel.from_camera_info(info())
    rx, ry = cam.rays()
    assert rx.shape == (480, 640) and rx.dtype == np.float32
    assert rx[0, 0] == pytest.approx(-320 / 380) and ry[479, 0] == pytest.approx(239 / 390)
    assert cam.rays()[0] is rx                            # cached
    with pytest.raises(ValueError):
        rx[0, 0] = 1.0                                   # shared cache is read-only


@pytest.mark.parametrize('model, d', [
    ('plumb_bob', (-0.28, 0.07, 0.001, -0.0005, 0.0)),
    # Azure Kinect colour camera-like coefficients (k1 k2 p1 p2 k3 k4 k5 k6).
    ('rational_polynomial', (0.52, -2.6, 0.0006, -0.0002, 1.6, 0.39, -2.43, 1.53)),
    ('equidistant', (0.05, -0.01, 0.002, -0.0005)),
])
def test_raw_rays_invert_projection(model, d):
    cam = CameraModel.from_camera_info(info(d=d, model=model), rectified=False)
    assert cam.has_distortion
    rx, ry = cam.rays()
    z = 3.0
    pts = np.stack([rx.ravel() * z, ry.ravel() * z, np.full(rx.size, z)], axis=1)
    u, v, ok = cam.project(pts)
    uu, vv = np.meshgrid(np.arange(640), np.arange(480))
    assert ok.all()
    np.testing.assert_allclose(u, uu.ravel(), atol=0.02)
    np.testing.assert_allclose(v, vv.ravel(), atol=0.02)


def test_projection_rejects_points_behind_and_outside_the_calibrated_view():
    cam = CameraModel.from_camera_info(info(d=(-0.3, 0.1, 0, 0, 0)), rectified=False)
    u, v, ok = cam.project(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 2.0], [50.0, 0.0, 1.0],
                                     [np.nan, 0.0, 1.0]]))
    assert ok.tolist() == [False, True, False, False]
    assert u[1] == pytest.approx(319.5) and v[1] == pytest.approx(239.5)


def test_binning_and_roi_map_full_resolution_calibration():
    cam = CameraModel.from_camera_info(info(binning=(2, 2), roi=(100, 40, 200, 320)))
    assert (cam.width, cam.height) == (160, 100)
    fx, fy, cx, cy = cam.intrinsics
    assert (fx, fy, cx, cy) == (190.0, 195.0, 110.0, 100.0)
    point = np.array([[0.5, 0.2, 2.0]])
    u, v, _ = cam.project(point)
    full = CameraModel.from_camera_info(info())
    uf, vf, _ = full.project(point)
    assert u[0] == pytest.approx((uf[0] - 100) / 2) and v[0] == pytest.approx((vf[0] - 40) / 2)
    cam.check_image_size(160, 100)
    with pytest.raises(CameraInfoError, match='image is 640x480 but camera_info describes 160x100'):
        cam.check_image_size(640, 480)


def test_raw_binned_rays_match_projection():
    cam = CameraModel.from_camera_info(info(d=(-0.2, 0.05, 0, 0, 0), binning=(2, 2)),
                                       rectified=False)
    rx, ry = cam.rays()
    pts = np.stack([rx.ravel(), ry.ravel(), np.ones(rx.size)], axis=1)
    u, v, _ = cam.project(pts)
    uu, vv = np.meshgrid(np.arange(320), np.arange(240))
    np.testing.assert_allclose(u, uu.ravel(), atol=0.02)
    np.testing.assert_allclose(v, vv.ravel(), atol=0.02)


@pytest.mark.parametrize('bad, match', [
    (dict(k=[0.0] * 9), 'zero focal length'),
    (dict(k=K[:8]), 'expected 9 values'),
    (dict(k=[np.nan] + K[1:]), 'NaN'),
    (dict(width=0, height=0), 'no image size'),
])
def test_invalid_camera_info(bad, match):
    with pytest.raises(CameraInfoError, match=match):
        CameraModel.from_camera_info(info(**bad))


def test_unknown_distortion_model_only_matters_for_raw_images():
    weird = info(d=(0.1, 0, 0, 0, 0), model='kannala_brandt_9')
    assert CameraModel.from_camera_info(weird, rectified=True).intrinsics[0] == 380
    with pytest.raises(CameraInfoError, match="unsupported distortion model 'kannala_brandt_9'"):
        CameraModel.from_camera_info(weird, rectified=False)


def test_missing_p_falls_back_to_k():
    cam = CameraModel.from_camera_info(info(p=[0.0] * 12))
    assert cam.intrinsics == (400, 410, 319.5, 239.5)


def test_scaled_model_projects_consistently():
    cam = CameraModel.from_camera_info(info())
    half = cam.scaled(320, 240)
    point = np.array([[0.4, -0.3, 2.5]])
    u, v, _ = cam.project(point)
    uh, vh, _ = half.project(point)
    assert uh[0] == pytest.approx((u[0] + 0.5) * 0.5 - 0.5)
    assert vh[0] == pytest.approx((v[0] + 0.5) * 0.5 - 0.5)
    assert half.key != cam.key


def test_pinhole_rays_are_k_or_p_intrinsics_per_pixel():
    raw = CameraModel.from_camera_info(info(), rectified=False)       # D all zero: no undistortion
    assert not raw.has_distortion
    rx, ry = raw.rays()
    uu, vv = np.meshgrid(np.arange(640), np.arange(480))
    np.testing.assert_allclose(rx, (uu - 319.5) / 400.0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ry, (vv - 239.5) / 410.0, rtol=1e-6, atol=1e-7)
    rect_rx, _ = CameraModel.from_camera_info(info(d=(-0.3, 0.1, 0, 0, 0))).rays()
    np.testing.assert_allclose(rect_rx, (uu - 320.0) / 380.0, rtol=1e-6, atol=1e-7)  # D ignored


def test_raw_rays_with_binning_and_roi_invert_projection():
    d = (0.52, -2.6, 0.0006, -0.0002, 1.6, 0.39, -2.43, 1.53)
    cam = CameraModel.from_camera_info(
        info(d=d, model='rational_polynomial', binning=(2, 2), roi=(60, 20, 400, 500)),
        rectified=False)
    assert (cam.width, cam.height) == (250, 200)
    rx, ry = cam.rays()
    u, v, ok = cam.project(np.stack([rx.ravel(), ry.ravel(), np.ones(rx.size)], axis=1))
    uu, vv = np.meshgrid(np.arange(250), np.arange(200))
    assert ok.all()
    np.testing.assert_allclose(u, uu.ravel(), atol=0.02)
    np.testing.assert_allclose(v, vv.ravel(), atol=0.02)
    # The ROI is a crop of the full image: its rays are the full camera's rays there.
    full_rx, _ = CameraModel.from_camera_info(info(d=d, model='rational_polynomial'),
                                              rectified=False).rays()
    np.testing.assert_allclose(rx[5, 7], full_rx[20 + 5 * 2, 60 + 7 * 2], atol=1e-5)


@pytest.mark.parametrize('model, d, match', [
    ('equidistant', (0.1, 0.01), 'at least 4'),
    ('plumb_bob', (0.1, 0.01, 0.0), '4, 5, 8, 12 or 14'),
    ('rational_polynomial', (0.1,) * 6, "'rational_polynomial' with 6 coefficients"),
])
def test_distortion_coefficient_count_is_checked_for_raw_images(model, d, match):
    with pytest.raises(CameraInfoError, match=match):
        CameraModel.from_camera_info(info(d=d, model=model), rectified=False)
    assert CameraModel.from_camera_info(info(d=d, model=model), rectified=True).width == 640


def test_key_tells_cameras_apart():
    a = CameraModel.from_camera_info(info(d=(-0.2, 0.05, 0, 0, 0)), rectified=False)
    assert a.key == CameraModel.from_camera_info(info(d=(-0.2, 0.05, 0, 0, 0)),
                                                 rectified=False).key
    assert a.key != CameraModel.from_camera_info(info(d=(-0.2, 0.06, 0, 0, 0)),
                                                 rectified=False).key
    assert a.key != CameraModel.from_camera_info(info(d=(-0.2, 0.05, 0, 0, 0))).key


@pytest.mark.parametrize('rectified', [True, False], ids=['rectified', 'raw'])
def test_scaled_binned_roi_distorted_model(rectified):
    d = (-0.28, 0.07, 0.001, -0.0005, 0.0)
    cam = CameraModel.from_camera_info(info(d=d, binning=(2, 2), roi=(100, 40, 200, 320)),
                                       rectified=rectified)
    small = cam.scaled(80, 50)                          # 160x100 image, halved
    assert (small.width, small.height, small.binning_x, small.roi_x) == (80, 50, 1, 0)
    assert small.rectified == rectified and small.has_distortion == (not rectified)
    np.testing.assert_array_equal(small.D, cam.D)
    pts = np.array([[0.3, -0.1, 2.0], [-0.2, 0.15, 1.0]])
    u, v, _ = cam.project(pts)
    us, vs, _ = small.project(pts)
    np.testing.assert_allclose(us, (u + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(vs, (v + 0.5) * 0.5 - 0.5, atol=1e-9)
    rx, ry = small.rays()                               # and its rays invert its projection
    uu, vv, ok = small.project(np.stack([rx.ravel(), ry.ravel(), np.ones(rx.size)], axis=1))
    assert ok.all()
    np.testing.assert_allclose(uu, np.tile(np.arange(80), 50), atol=0.02)
