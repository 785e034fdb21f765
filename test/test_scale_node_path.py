"""The node's scale path after its speed-ups gives what the plain steps give.

- ``lidar_anchors`` (one BLAS product, points beyond the depth range dropped before the
  projection) against a point-by-point reference of the documented steps, junk points included;
- a LiDAR sweep that serves several images is decoded once, not once per image;
- ``local_correction`` split into the coarse grid (``correction_grid``) and the dense read
  (``_slice``): the split's parts composed by hand give the function's result, bit for bit.
"""
import math

import numpy as np
import pytest

from fiffdepth_ros import params as P
from fiffdepth_ros import pipeline as pipeline_module
from fiffdepth_ros.conversions.backends import RosbagsBackend
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.pipeline import DepthPipeline, PipelineConfig
from fiffdepth_ros.scale import local_correction as lc
from fiffdepth_ros.scale.anchors import lidar_anchors
from fiffdepth_ros.scale.fit import apply_fit, fit_scale_shift
from fiffdepth_ros.sync import FrameInputs

ROOM = SyntheticRoom(160, 120, lidar_lines=16, lidar_columns=512)
FRAME = ROOM.render(t=0.4)


def reference_lidar_anchors(points, camera_from_lidar, camera, min_depth, max_depth,
                            window=(11, 7), ratio=0.1, margin=0.1, noise=0.02, per_m=0.002):
    """One point at a time: finite, into the camera frame, in front, pinhole projection to the
    nearest pixel centre, in the image and the depth range; the nearest point per pixel (the
    first of equals); dropped when farther than (1 + ratio) * the window's nearest + margin."""
    R = np.asarray(camera_from_lidar.rotation, float)
    t = np.asarray(camera_from_lidar.translation, float)
    fx, fy, cx, cy = camera.intrinsics
    nearest = {}
    for p in np.asarray(points, np.float64)[:, :3]:
        with np.errstate(over='ignore'):
            rng2 = float(p @ p) if np.all(np.isfinite(p)) else math.inf
        if not math.isfinite(rng2):
            continue
        x, y, z = (R @ p + t).tolist()
        if not z > 1e-6:
            continue
        col, row = math.floor(fx * x / z + cx + 0.5), math.floor(fy * y / z + cy + 0.5)
        if not (0 <= col < camera.width and 0 <= row < camera.height
                and min_depth <= z <= max_depth):
            continue
        if (row, col) not in nearest or z < nearest[row, col][0]:
            nearest[row, col] = (z, math.sqrt(rng2))
    hh, hw = window[0] // 2, window[1] // 2
    kept = []
    for (row, col), (z, rng) in sorted(nearest.items(), key=lambda kv: kv[0]):
        z_min = min(nearest[r, c][0] for r in range(row - hh, row + hh + 1)
                    for c in range(col - hw, col + hw + 1) if (r, c) in nearest)
        if z <= z_min * (1 + ratio) + margin:
            kept.append((row, col, z, 1.0 / (noise + per_m * rng) ** 2))
    return np.array(kept).reshape(-1, 4)


@pytest.mark.parametrize('max_depth', [20.0, 3.0, np.inf])
def test_lidar_anchors_are_the_point_by_point_reference(max_depth):
    rng = np.random.default_rng(3)
    junk = np.array([[np.nan, 1.0, 1.0], [np.inf, 0.0, 0.0], [1e200, 1e200, 0.0],
                     [0.0, 0.0, 0.0], [-3.0, 0.1, 0.2]])          # non-finite, overflow, behind
    points = np.concatenate([FRAME.lidar_points, junk, rng.normal(0, 4, (300, 3))])
    got = lidar_anchors(points, ROOM.camera_from_lidar, ROOM.camera, min_depth=0.3,
                        max_depth=max_depth)
    ref = reference_lidar_anchors(points, ROOM.camera_from_lidar, ROOM.camera, 0.3, max_depth)
    assert len(got) == len(ref) > 200
    assert got.offered == len(points)
    np.testing.assert_array_equal(got.rows, ref[:, 0])
    np.testing.assert_array_equal(got.cols, ref[:, 1])
    np.testing.assert_allclose(got.depth, ref[:, 2], rtol=1e-6)       # float32 storage
    np.testing.assert_allclose(got.weight, ref[:, 3], rtol=1e-6)


def test_a_reused_sweep_is_decoded_once(monkeypatch):
    decoded = []
    real = pipeline_module.pointcloud_to_xyz
    monkeypatch.setattr(pipeline_module, 'pointcloud_to_xyz',
                        lambda msg: decoded.append(msg) or real(msg))
    backend = RosbagsBackend()
    config = PipelineConfig.from_params(P.validate(ROOM.static_lidar_params('cam')))
    pipe = DepthPipeline(_Truth(FRAME.depth), config, backend)
    sweep = xyz_to_pointcloud(FRAME.lidar_points, backend.header(10**18, 'lidar'), backend)
    results = []
    for i in range(3):
        header = backend.header(10**18 + i * 33 * 10**6, 'cam')
        results.append(pipe.process(FrameInputs(
            image=rgb_to_image_msg(FRAME.rgb, header, backend),
            camera_info=backend.camera_info(header, **ROOM.camera_info_fields()), lidar=sweep)))
    assert decoded == [sweep]
    assert all(r.report.status == 'fitted' and r.anchors > 100 for r in results)
    assert all('scale_cpu' in r.timings and r.timings['scale_cpu'] >= 0 for r in results)


class _Truth:
    def __init__(self, depth):
        self.depth = np.nan_to_num(depth, nan=5.0).astype(np.float32) / 10.0

    def predict(self, rgb):
        return self.depth


@pytest.mark.parametrize('compiled', [True, False])
@pytest.mark.parametrize('edge_aware', [True, False])
def test_local_correction_is_its_grid_read_densely(edge_aware, compiled, monkeypatch):
    from fiffdepth_ros.scale import _compiled
    monkeypatch.setattr(_compiled, 'ENABLED', compiled and _compiled.ENABLED)
    anchors = lidar_anchors(FRAME.lidar_points, ROOM.camera_from_lidar, ROOM.camera)
    # A prediction bent across the image: the correction has something to do.
    relative = (FRAME.depth * (1 + 0.3 * np.linspace(0, 1, ROOM.camera.width))[None]) / 10
    x = relative[anchors.rows, anchors.cols]
    fit = fit_scale_shift(x, anchors.depth, anchors.weight)
    aligned = apply_fit(relative, fit.scale, fit.shift, 'depth')
    options = lc.LocalCorrectionOptions(edge_aware=edge_aware)
    out = lc.local_correction(aligned, anchors.rows, anchors.cols, anchors.depth, anchors.weight,
                              options)
    guide = lc.log_guide(aligned).copy() if edge_aware else None
    plan = lc.correction_grid(aligned.shape, anchors.rows, anchors.cols, anchors.depth,
                              anchors.weight, lambda r, c: aligned[r, c],
                              lc.guide_range(guide) if edge_aware else None, options)
    assert plan.factor.shape[2] == (plan.grid.bins if edge_aware else 1)
    import cv2
    half = lc._slice(plan.factor, plan.grid, guide)
    # The detail level (on by default), upsampled 2x onto the half-resolution read.
    half *= cv2.resize(plan.detail, half.shape[::-1], interpolation=cv2.INTER_LINEAR)
    factor = cv2.resize(half, (aligned.shape[1], aligned.shape[0]),
                        interpolation=cv2.INTER_LINEAR)
    # Bit for bit on the numpy path; the compiled path fuses each 2x upsampling with its
    # product (the same weights, float32 rounding apart).
    if _compiled.ENABLED:
        np.testing.assert_allclose(out.depth, factor * aligned, rtol=2e-6, atol=0)
    else:
        np.testing.assert_array_equal(out.depth, factor * aligned)
    np.testing.assert_array_equal(out.weights, plan.weights)
    assert np.count_nonzero(out.weights) > 100
    # It did correct: the bend is gone where anchors are.
    err_before = np.abs(aligned[anchors.rows, anchors.cols] / anchors.depth - 1)
    err_after = np.abs(out.depth[anchors.rows, anchors.cols] / anchors.depth - 1)
    assert np.median(err_after) < 0.5 * np.median(err_before)
