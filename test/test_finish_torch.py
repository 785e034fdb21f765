"""Finishing in torch (fiffdepth_ros.finish) on the CPU device gives the numpy path's output."""
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from fiffdepth_ros import params as P
from fiffdepth_ros.conversions.backends import RclpyBackend, RosbagsBackend
from fiffdepth_ros.conversions.depth_image import depth_to_16uc1, rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import DepthCloudBuilder, xyz_to_pointcloud
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.finish.cloud import DeviceCloudBuilder
from fiffdepth_ros.finish.depth import apply_plan_torch, depth_to_16uc1_torch
from fiffdepth_ros.finish.device import DeviceFinisher
from fiffdepth_ros.finish.lidar import lidar_anchors_torch
from fiffdepth_ros.geometry.camera_model import CameraModel
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.pipeline import OUTPUTS, DepthPipeline, PipelineConfig
from fiffdepth_ros.scale.anchors import Anchors, lidar_anchors
from fiffdepth_ros.scale.recovery import ScaleRecovery, ScaleRecoveryConfig
from fiffdepth_ros.sync import FrameInputs

ROOM = SyntheticRoom(320, 240, lidar_lines=32)
FRAME = ROOM.render(t=0.3)
STAMP = 1_700_000_000 * 10**9
# The locally corrected depth on the torch path: float32 rounding apart (16 ulp; measured <= 6).
LOCAL_RTOL = 2e-6


def _same_anchors(a: Anchors, b: Anchors):
    assert len(a) == len(b) > 0 and a.offered == b.offered and a.source == b.source
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.cols, b.cols)
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-6)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5)


def _cameras():
    info = NS(**ROOM.camera_info_fields(), binning_x=0, binning_y=0,
              roi=NS(x_offset=0, y_offset=0, width=0, height=0))
    rectified = CameraModel.from_camera_info(info)
    stereo_right = CameraModel.from_camera_info(NS(**{**vars(info), 'p': [
        *info.p[:3], -0.12 * info.p[0], *info.p[4:]]}))            # P with Tx (right camera)
    raw = CameraModel.from_camera_info(NS(**{**vars(info), 'd': [-0.25, 0.08, 0.001, -0.001,
                                                                 0.0]}), rectified=False)
    return {'rectified': rectified, 'stereo-right': stereo_right, 'raw-distorted': raw}


@pytest.mark.parametrize('name', ['rectified', 'stereo-right', 'raw-distorted'])
def test_lidar_anchors_match_the_numpy_path(name):
    camera = _cameras()[name]
    rng = np.random.default_rng(3)
    # The room's sweep plus clutter: NaN points, points behind the camera, far points.
    junk = rng.normal(0, 8, (2000, 3)).astype(np.float32)
    junk[::7] = np.nan
    points = np.concatenate([FRAME.lidar_points, junk])
    ref = lidar_anchors(points, ROOM.camera_from_lidar, camera, min_depth=0.1, max_depth=20.0)
    got = lidar_anchors_torch(points, ROOM.camera_from_lidar, camera, 'cpu', min_depth=0.1,
                              max_depth=20.0)
    _same_anchors(got, ref)
    # The occlusion filter did work (the room's box hides some of the LiDAR's view).
    unfiltered = lidar_anchors(points, ROOM.camera_from_lidar, camera, min_depth=0.1,
                               max_depth=20.0, occlusion_window=1)
    assert len(unfiltered) > len(ref)
    _same_anchors(lidar_anchors_torch(points, ROOM.camera_from_lidar, camera, 'cpu',
                                      min_depth=0.1, max_depth=20.0, occlusion_window=1),
                  unfiltered)


def test_lidar_anchors_of_nothing_usable_are_empty():
    camera = _cameras()['rectified']
    got = lidar_anchors_torch(np.full((10, 3), np.nan, np.float32), ROOM.camera_from_lidar,
                              camera)
    assert len(got) == 0 and got.offered == 10


def test_16uc1_bytes_match_the_numpy_path():
    depth = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 0.0004, 0.0005, 0.0015, 0.0025],
                      [1.2345, 10.0, 65.535, 65.5355, 70.0, 1e30, 3.0, 0.1, 19.99]], np.float32)
    ref = depth_to_16uc1(depth).view(np.uint8).reshape(-1)
    got = depth_to_16uc1_torch(torch.from_numpy(depth)).numpy().reshape(-1)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize('space', ['depth', 'inverse'])
@pytest.mark.parametrize('local', [False, True])
def test_scale_plan_applied_in_torch_matches_numpy(space, local):
    cfg = ScaleRecoveryConfig(fit_space=space, local_correction=local, max_depth=3.5)
    camera = _cameras()['rectified']
    anchors = lidar_anchors(FRAME.lidar_points, ROOM.camera_from_lidar, camera)
    truth = np.nan_to_num(FRAME.depth, nan=5.0)
    relative = (truth / 12.0 if space == 'depth' else 0.5 / truth).astype(np.float32)
    relative[::17, ::13] *= 1.2                               # local errors to correct
    ref_depth, ref_report = ScaleRecovery(cfg).process(relative, anchors, 1.0)
    finisher = DeviceFinisher('cpu')
    got, report = finisher.recover(ScaleRecovery(cfg), torch.from_numpy(relative), anchors, 1.0)
    assert report == ref_report and report.status == 'fitted'
    assert (report.local_inliers > 0) is local
    if local:       # torch's and numpy's float32 log differ in the last bits: a few ulp
        np.testing.assert_allclose(got.numpy(), ref_depth, rtol=LOCAL_RTOL, atol=0)
        np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(ref_depth))
    else:
        np.testing.assert_array_equal(got.numpy(), ref_depth)     # NaN in the same places too
    assert np.isnan(ref_depth).any()                          # the range clip did something


def test_fixed_mapping_without_anchors_matches_numpy():
    cfg = ScaleRecoveryConfig(fixed_scale=7.0, fixed_shift=0.5)
    relative = np.linspace(-0.1, 3.0, 600, dtype=np.float32).reshape(20, 30)
    ref, ref_report = ScaleRecovery(cfg).process(relative, None, 0.0)
    recovery = ScaleRecovery(cfg)
    plan = recovery.estimate(relative.shape, None, None, 0.0)
    got = apply_plan_torch(recovery, torch.from_numpy(relative), plan)
    np.testing.assert_array_equal(got.numpy(), ref)
    assert plan.report == ref_report and plan.report.status == 'none'


@pytest.mark.parametrize('rgb,stride,organized', [(False, 1, True), (True, 1, True),
                                                  (True, 3, True), (True, 2, False),
                                                  (False, 1, False)])
def test_cloud_bytes_match_the_numpy_builder(rgb, stride, organized):
    backend = RosbagsBackend()
    camera = _cameras()['raw-distorted']        # per-pixel rays, not a separable grid
    depth = FRAME.depth.copy()
    depth[5:9, 10:40] = np.nan
    depth[50:60, 50:60] = np.inf
    colour = FRAME.rgb if rgb else None
    header = backend.header(STAMP, 'cam')
    ref = DepthCloudBuilder().build(depth, camera, header, backend, rgb=colour, min_range=0.5,
                                    max_range=6.0, stride=stride, organized=organized)
    h, w, step, data, dense = DeviceCloudBuilder('cpu').build(
        torch.from_numpy(depth), camera, rgb=colour, min_range=0.5, max_range=6.0,
        stride=stride, organized=organized)
    assert (h, w, step, dense) == (ref.height, ref.width, ref.point_step, ref.is_dense)
    np.testing.assert_array_equal(data.numpy(), np.asarray(ref.data))


@pytest.fixture(scope='module')
def estimator(tiny_checkpoint):
    return DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=64)


def test_predict_on_device_is_predict_left_on_the_device(estimator):
    rel = estimator.predict_on_device(FRAME.rgb)
    assert isinstance(rel, torch.Tensor) and rel.dtype == torch.float32
    np.testing.assert_array_equal(rel.numpy(), estimator.predict(FRAME.rgb))


def _config(**extra):
    return PipelineConfig.from_params(P.validate(dict(
        ROOM.static_lidar_params('cam'), publish_relative=True, **extra)))


def _inputs(backend, frame, stamp):
    header = backend.header(stamp, 'cam')
    return FrameInputs(image=rgb_to_image_msg(frame.rgb, header, backend),
                       camera_info=backend.camera_info(header, **ROOM.camera_info_fields()),
                       lidar=xyz_to_pointcloud(frame.lidar_points,
                                               backend.header(stamp, 'lidar'), backend))


@pytest.mark.parametrize('extra', [{}, {'output_encoding': '16UC1', 'cloud_type': 'xyz'},
                                   {'cloud_stride': 2, 'cloud_organized': False,
                                    'local_correction': False}])
def test_pipeline_on_the_torch_path_publishes_the_numpy_paths_bytes(estimator, extra):
    """Two frames through both pipelines (the temporal filter carries state): every message
    byte for byte, the reports and the host depth equal; with the local correction the metric
    images and clouds to float32 rounding (16UC1 to the millimetre)."""
    local = _config(**extra).scale.local_correction
    backend = RclpyBackend()
    numpy_pipe = DepthPipeline(estimator, _config(**extra), backend, finish_device=None)
    torch_pipe = DepthPipeline(estimator, _config(**extra), backend, finish_device='cpu')
    assert numpy_pipe.finisher is None and torch_pipe.finisher is not None
    for i in range(2):
        frame = ROOM.render(t=0.1 * i)
        ref = numpy_pipe.process(_inputs(backend, frame, STAMP + i * 10**8))
        got = torch_pipe.process(_inputs(backend, frame, STAMP + i * 10**8))
        assert got.report == ref.report and got.metric == ref.metric and ref.metric
        assert set(got.messages) == set(ref.messages) == set(OUTPUTS)
        for name, msg in ref.messages.items():
            if local and name in ('depth', 'points', 'colorized'):
                _close_data(got.messages[name], msg)
                got.messages[name].data = msg.data
            assert got.messages[name] == msg, name      # rclpy messages compare every field
        if local:
            np.testing.assert_allclose(got.depth, ref.depth, rtol=LOCAL_RTOL, atol=0)
            np.testing.assert_array_equal(np.isnan(got.depth), np.isnan(ref.depth))
        else:
            np.testing.assert_array_equal(got.depth, ref.depth)
        assert isinstance(got.depth, np.ndarray)


def _close_data(got, ref):
    if getattr(ref, 'encoding', '') in ('16UC1', 'rgb8'):
        # 16UC1: one millimetre of rounding; colourised: one step of the colour map.
        kind, most = (np.uint16, 1) if ref.encoding == '16UC1' else (np.uint8, 8)
        diff = np.frombuffer(got.data, kind).astype(int) - np.frombuffer(ref.data, kind)
        assert np.abs(diff).max() <= most and np.count_nonzero(diff) < 0.01 * len(diff)
        return
    a, b = np.frombuffer(got.data, np.float32), np.frombuffer(ref.data, np.float32)
    np.testing.assert_allclose(a, b, rtol=LOCAL_RTOL, atol=0, equal_nan=True)


def test_auto_finishes_on_the_device_only_for_cuda_models(estimator):
    backend = RosbagsBackend()
    assert DepthPipeline(estimator, _config(), backend).finisher is None      # CPU model
    cuda_model = NS(device=torch.device('cuda'), output_space='depth')
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):                   # no CUDA here
            DepthPipeline(cuda_model, _config(), backend)
    else:
        assert DepthPipeline(cuda_model, _config(), backend).finisher.device.type == 'cuda'
