"""The per-frame pipeline shared by the node and process_bag, without a ROS graph."""
import numpy as np
import pytest

from fiffdepth_ros import params as P
from fiffdepth_ros.conversions.depth_image import depth_to_image_msg, rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.geometry.transforms import RigidTransform
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.pipeline import (OUTPUTS, DepthPipeline, FrameError, PipelineConfig,
                                    StaticExtrinsic, enabled_outputs)
from fiffdepth_ros.sync import FrameInputs
from msg_factories import BACKEND_IDS, BACKENDS

ROOM = SyntheticRoom(320, 240, lidar_lines=32)
STAMP = 1_700_000_000 * 10**9


@pytest.fixture(scope='module')
def estimator(tiny_checkpoint):
    return DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=64)


def lidar_config(**extra):
    return PipelineConfig.from_params(P.validate(dict(ROOM.static_lidar_params('cam'), **extra)))


def inputs(backend, frame, stamp=STAMP, lidar=True, info=True, stereo=None):
    header = backend.header(stamp, 'cam')
    return FrameInputs(
        image=rgb_to_image_msg(frame.rgb, header, backend),
        camera_info=backend.camera_info(header, **ROOM.camera_info_fields()) if info else None,
        lidar=xyz_to_pointcloud(frame.lidar_points, backend.header(stamp, 'lidar'), backend)
        if lidar else None,
        stereo=stereo)


def absrel(depth, truth):
    ok = np.isfinite(depth)
    return float(np.median(np.abs(depth[ok] - truth[ok]) / truth[ok]))


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_lidar_frame_gives_metric_outputs_with_the_image_header(estimator, backend):
    pipe = DepthPipeline(estimator, lidar_config(), backend)
    frame = ROOM.render()
    result = pipe.process(inputs(backend, frame))
    assert result.metric and result.report.status == 'fitted' and result.anchors > 500
    assert absrel(result.depth, frame.depth) < 0.08
    assert set(result.messages) == set(OUTPUTS)
    for msg in result.messages.values():
        assert msg.header.frame_id == 'cam'
        assert int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec) == STAMP
    assert result.messages['depth'].encoding == '32FC1'
    assert (result.messages['points'].height, result.messages['points'].width) == (240, 320)
    assert set(result.timings) >= {'decode', 'inference', 'scale', 'convert'}


def test_only_requested_outputs_are_built(estimator):
    backend = BACKENDS[1]
    pipe = DepthPipeline(estimator, lidar_config(), backend)
    result = pipe.process(inputs(backend, ROOM.render()), outputs=['depth'])
    assert set(result.messages) == {'depth'}


def test_camera_info_problems_keep_depth_but_drop_cloud_and_lidar(estimator):
    backend = BACKENDS[1]
    # publish_without_fit: the unfitted frame's depth is kept (test_metric_gate covers the gate).
    pipe = DepthPipeline(estimator, lidar_config(publish_without_fit=True), backend)
    frame = ROOM.render()
    small = inputs(backend, frame)
    small.image = rgb_to_image_msg(frame.rgb[:120, :160].copy(), backend.header(STAMP, 'cam'),
                                   backend)
    result = pipe.process(small)
    assert 'depth' in result.messages and 'points' not in result.messages
    assert 'camera_info' not in result.messages
    assert any('image is 160x120 but camera_info describes 320x240' in n for n in result.notes)
    assert any('LiDAR anchors ignored' in n for n in result.notes)


def test_no_anchor_source_is_not_metric(estimator):
    backend = BACKENDS[1]
    config = PipelineConfig.from_params(P.validate({'fixed_scale': 3.0, 'fixed_shift': 1.0}))
    result = DepthPipeline(estimator, config, backend).process(
        inputs(backend, ROOM.render(), lidar=False))
    assert not result.metric and result.report.status == 'none'
    np.testing.assert_allclose(result.depth, 3.0 * result.relative + 1.0, rtol=1e-6)
    metric_config = PipelineConfig.from_params(P.validate(
        {'fixed_scale': 3.0, 'fixed_shift': 1.0, 'fixed_scale_is_metric': True}))
    assert DepthPipeline(estimator, metric_config, backend).process(
        inputs(backend, ROOM.render(), lidar=False)).metric


def test_stereo_depth_and_disparity_anchors(estimator):
    backend = BACKENDS[1]
    frame = ROOM.render()
    config = PipelineConfig.from_params(P.validate({'stereo_source': 'depth',
                                                    'stereo_grid_step': 8}))
    stereo = depth_to_image_msg(frame.depth, backend.header(STAMP, 'cam'), backend, '16UC1')
    result = DepthPipeline(estimator, config, backend).process(
        inputs(backend, frame, lidar=False, stereo=stereo))
    assert result.metric and result.anchors > 500 and absrel(result.depth, frame.depth) < 0.05
    # DisparityImage: d = f T / z.
    f, T = 300.0, 0.12
    disparity = (f * T / frame.depth).astype(np.float32)
    typestore = backend.typestore
    Disparity = typestore.types['stereo_msgs/msg/DisparityImage']
    msg = Disparity(header=backend.header(STAMP, 'cam'),
                    image=depth_to_image_msg(disparity, backend.header(STAMP, 'cam'), backend),
                    f=f, t=T, valid_window=backend.region_of_interest(),
                    min_disparity=0.0, max_disparity=100.0, delta_d=0.1)
    config = PipelineConfig.from_params(P.validate({'stereo_source': 'disparity'}))
    result = DepthPipeline(estimator, config, backend).process(
        inputs(backend, frame, lidar=False, stereo=msg))
    assert result.metric and absrel(result.depth, frame.depth) < 0.05


def test_bad_image_raises_frame_error(estimator):
    backend = BACKENDS[1]
    bad = inputs(backend, ROOM.render())
    bad.image = backend.image(backend.header(STAMP, 'cam'), 2, 2, '32FC3', 24, np.zeros(48))
    with pytest.raises(FrameError, match="unsupported image encoding '32FC3'"):
        DepthPipeline(estimator, lidar_config(), backend).process(bad)


def test_config_updates_apply_and_scale_changes_reset_the_filter(estimator):
    backend = BACKENDS[1]
    pipe = DepthPipeline(estimator, lidar_config(), backend)
    pipe.process(inputs(backend, ROOM.render()))
    assert pipe.scale._state.filter.has_estimate
    pipe.config = lidar_config(output_encoding='16UC1', cloud_stride=4)
    assert pipe.scale._state.filter.has_estimate          # output-only change: filter kept
    pipe.config = lidar_config(output_encoding='16UC1', cloud_stride=4,
                               filter_responsiveness=0.9)
    assert not pipe.scale._state.filter.has_estimate      # scale change: filter reset
    result = pipe.process(inputs(backend, ROOM.render(), stamp=STAMP + 10**8))
    assert result.messages['depth'].encoding == '16UC1'
    assert (result.messages['points'].height, result.messages['points'].width) == (60, 80)


def test_static_extrinsic_directions_and_fallback():
    T = RigidTransform(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))
    ext = StaticExtrinsic(T, 'cam', 'lidar')
    assert ext.camera_from('cam', 'lidar') is T
    np.testing.assert_allclose(ext.camera_from('lidar', 'cam').translation, [-0.1, -0.2, -0.3])
    with pytest.raises(LookupError, match="image frame is 'other'"):
        ext.camera_from('other', 'lidar')
    assert ext.fallback('cam', 'lidar', 'tf said no') is T
    unnamed = StaticExtrinsic(T)
    assert unnamed.camera_from('any', 'thing') is T
    with pytest.raises(LookupError, match='tf said no; set lidar_parent_frame'):
        unnamed.fallback('cam', 'lidar', 'tf said no')


def test_enabled_outputs_follow_parameters():
    assert enabled_outputs(P.validate({})) == ['depth', 'camera_info', 'points', 'colorized']
    assert enabled_outputs(P.validate({'cloud_type': 'none', 'publish_colorized': False,
                                       'publish_relative': True})) == \
        ['depth', 'camera_info', 'relative']
