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
from fiffdepth_ros.scale import local_correction as slc
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


def _grid(h, w, cell):
    return slc._Grid(h, w, cell, 0.5)


@pytest.mark.parametrize('h, w, cell', [(240, 320, 16), (121, 161, 16), (100, 90, 12)])
def test_remap_is_opencvs_remap(h, w, cell):
    """The device read of a grid plane at every half-resolution pixel is cv2.remap's at the
    pixel maps, the padding cells and the 0 border included."""
    grid = _grid(h, w, cell)
    src = np.random.default_rng(0).normal(size=(grid.gh, grid.gw)).astype(np.float32)
    mx, my = slc._pixel_maps(grid)
    ref = cv2.remap(src, mx, my, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    got = flc._remap_grid(torch.from_numpy(src), grid).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_remap_in_opencv4s_steps_of_one_32nd(monkeypatch):
    """OpenCV 4 rounds remap coordinates to 1/32 pixel (half to even) and weighs by those
    steps: the device path follows when the host's probe (``remap_steps``) finds that rule."""
    grid = _grid(100, 90, 12)           # cells of 12 px: fractions in 24ths, not 32nds
    src = np.random.default_rng(1).normal(size=(grid.gh, grid.gw)).astype(np.float32)
    mx, my = slc._pixel_maps(grid)
    monkeypatch.setattr(slc, 'remap_steps', lambda: 32)
    got = flc._remap_grid(torch.from_numpy(src), grid).numpy()
    ref = np.empty_like(got)
    for i in np.ndindex(mx.shape):
        sx, sy = int(np.rint(mx[i] * 32)), int(np.rint(my[i] * 32))
        x0, y0, ax, ay = sx // 32, sy // 32, (sx % 32) / 32, (sy % 32) / 32
        at = (lambda y, x: src[y, x] if y < grid.gh and x < grid.gw else 0.0)
        ref[i] = ((1 - ay) * ((1 - ax) * at(y0, x0) + ax * at(y0, x0 + 1))
                  + ay * ((1 - ax) * at(y0 + 1, x0) + ax * at(y0 + 1, x0 + 1)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    monkeypatch.setattr(slc, 'remap_steps', lambda: None)       # exact weights differ here
    exact = flc._remap_grid(torch.from_numpy(src), grid).numpy()
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
