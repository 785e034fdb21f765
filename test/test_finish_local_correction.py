"""The local correction's dense read in torch (fiffdepth_ros.finish.local_correction) on the CPU
device gives the numpy path's corrected depth.

Tolerance: float32 rounding. torch's and numpy's float32 log differ in the last bits (the guide,
its extent), and the bilinear sums may round differently: relative 2e-6 (16 ulp; measured <= 6)
on the depth, 1e-6 on the anchors' robust weights; NaN in the same pixels.
"""
import cv2
import numpy as np
import pytest
import torch

from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.finish import local_correction as flc
from fiffdepth_ros.finish.device import DeviceFinisher
from fiffdepth_ros.scale.anchors import lidar_anchors
from fiffdepth_ros.scale.fit import apply_fit, fit_scale_shift
from fiffdepth_ros.scale.local_correction import LocalCorrectionOptions, local_correction
from fiffdepth_ros.scale.recovery import ScaleRecovery, ScaleRecoveryConfig

RTOL = 2e-6


def _aligned(width, height, lines=32):
    room = SyntheticRoom(width, height, lidar_lines=lines)
    frame = room.render(t=0.2)
    anchors = lidar_anchors(frame.lidar_points, room.camera_from_lidar, room.camera)
    truth = np.nan_to_num(frame.depth, nan=5.0)
    # A prediction bent across the image with a fine pattern of local errors: a field to build.
    relative = (truth * (1 + 0.3 * np.linspace(0, 1, width))[None] / 10).astype(np.float32)
    relative[::17, ::13] *= 1.2
    fit = fit_scale_shift(relative[anchors.rows, anchors.cols], anchors.depth, anchors.weight)
    aligned = apply_fit(relative, fit.scale, fit.shift, 'depth')
    aligned[:9, :21] = np.nan                                # invalid pixels
    return aligned, anchors


@pytest.mark.parametrize('size', [(320, 240), (161, 121)])           # odd: uneven halves
@pytest.mark.parametrize('options', [LocalCorrectionOptions(),
                                     LocalCorrectionOptions(edge_aware=False),
                                     LocalCorrectionOptions(iterations=0, cell=8)])
def test_torch_local_correction_is_the_numpy_one(size, options):
    aligned, anchors = _aligned(*size)
    z = anchors.depth.copy()
    z[::11] *= 2.0                                           # outliers for the robust rounds
    ref = local_correction(aligned, anchors.rows, anchors.cols, z, anchors.weight, options)
    depth, weights, sigma = flc.local_correction_torch(torch.from_numpy(aligned), anchors.rows,
                                                       anchors.cols, z, anchors.weight, options,
                                                       host_read=False)
    got = depth.numpy()
    assert got.dtype == np.float32 and got.shape == aligned.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.depth))
    np.testing.assert_allclose(got, ref.depth, rtol=RTOL, atol=0)
    np.testing.assert_allclose(weights, ref.weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigma, ref.sigma, rtol=1e-5, equal_nan=True)
    # The correction did something the test can see.
    assert np.nanmax(np.abs(ref.depth / aligned - 1)) > 0.05
    if options.iterations:
        assert 0 < np.count_nonzero(weights) < len(z)           # some outliers rejected


def test_on_a_cpu_tensor_the_host_path_runs_on_its_memory():
    """A CPU tensor is host memory: by default the numpy path itself reads the grid there
    (OpenCV's remap, no gathers) and the result is exactly its own."""
    aligned, anchors = _aligned(320, 240)
    z = anchors.depth.copy()
    z[::11] *= 2.0
    options = LocalCorrectionOptions()
    ref = local_correction(aligned, anchors.rows, anchors.cols, z, anchors.weight, options)
    depth, weights, sigma = flc.local_correction_torch(torch.from_numpy(aligned), anchors.rows,
                                                       anchors.cols, z, anchors.weight, options)
    assert depth.dtype == torch.float32 and depth.device.type == 'cpu'
    np.testing.assert_array_equal(depth.numpy(), ref.depth)
    np.testing.assert_array_equal(weights, ref.weights)
    assert sigma == ref.sigma
    twin, _, _ = flc.local_correction_torch(torch.from_numpy(aligned), anchors.rows,
                                            anchors.cols, z, anchors.weight, options,
                                            host_read=False)
    assert not np.array_equal(twin.numpy(), ref.depth)        # the twin rounds differently
    np.testing.assert_allclose(twin.numpy(), ref.depth, rtol=RTOL, atol=0)


@pytest.mark.parametrize('host_read', [None, False])
def test_no_usable_anchor_leaves_the_depth_as_it_is(host_read):
    aligned, anchors = _aligned(160, 120, lines=16)
    z = np.full(len(anchors), np.nan)
    depth, weights, sigma = flc.local_correction_torch(torch.from_numpy(aligned), anchors.rows,
                                                       anchors.cols, z, None,
                                                       host_read=host_read)
    np.testing.assert_array_equal(depth.numpy(), aligned)
    assert not weights.any() and np.isnan(sigma)


def test_remap_is_opencvs_remap():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 70)).astype(np.float32)
    # Inside, on the last row/column (the 0 border gets weight) and exactly on samples.
    mx = np.concatenate([rng.uniform(0, 69, 500), np.full(20, 69.0), np.arange(20.0)])
    my = np.concatenate([rng.uniform(0, 29, 500), rng.uniform(0, 29, 20), np.full(20, 29.0)])
    mx, my = mx.astype(np.float32).reshape(20, 27), my.astype(np.float32).reshape(20, 27)
    ref = cv2.remap(src, mx, my, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    got = flc._remap_linear(*(torch.from_numpy(a) for a in (src, mx, my))).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_remap_in_opencv4s_steps_of_one_32nd(monkeypatch):
    """OpenCV 4 rounds remap coordinates to 1/32 pixel (half to even) and weighs by those
    steps: the device path follows when the probe finds that rule."""
    monkeypatch.setattr(flc, '_remap_steps', lambda: 32)
    rng = np.random.default_rng(1)
    src = rng.normal(size=(12, 15)).astype(np.float32)
    mx = rng.uniform(0, 13.9, (9, 9)).astype(np.float32)
    my = rng.uniform(0, 10.9, (9, 9)).astype(np.float32)
    got = flc._remap_linear(*(torch.from_numpy(a) for a in (src, mx, my))).numpy()
    ref = np.empty_like(got)
    for i in np.ndindex(mx.shape):
        sx, sy = int(np.rint(mx[i] * 32)), int(np.rint(my[i] * 32))
        x0, y0, ax, ay = sx // 32, sy // 32, (sx % 32) / 32, (sy % 32) / 32
        ref[i] = ((1 - ay) * ((1 - ax) * src[y0, x0] + ax * src[y0, x0 + 1])
                  + ay * ((1 - ax) * src[y0 + 1, x0] + ax * src[y0 + 1, x0 + 1]))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    monkeypatch.setattr(flc, '_remap_steps', lambda: None)       # exact weights differ here
    exact = flc._remap_linear(*(torch.from_numpy(a) for a in (src, mx, my))).numpy()
    assert np.abs(exact - got).max() > 1e-3


def test_device_finisher_corrects_on_the_device_not_on_the_host(monkeypatch):
    """The plan's local correction runs through the torch read: the numpy correction (the old
    host round trip) is never called, and the result is the numpy path's."""
    aligned, anchors = _aligned(320, 240)
    relative = aligned.copy()
    relative[np.isnan(relative)] = 3.0
    cfg = ScaleRecoveryConfig(max_depth=10.0)
    ref, ref_report = ScaleRecovery(cfg).process(relative, anchors, 1.0)
    monkeypatch.setattr(ScaleRecovery, 'correct_locally',
                        lambda *a: pytest.fail('host round trip for the local correction'))
    got, report = DeviceFinisher('cpu').recover(ScaleRecovery(cfg), torch.from_numpy(relative),
                                                anchors, 1.0)
    assert report == ref_report and report.local_inliers > 100
    np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(ref))
