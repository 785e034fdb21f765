"""Never wrong metres on the metric outputs: with anchors configured, a frame without a scale fit
and without a held estimate reaches only depth/relative (and the colourised picture)."""
import numpy as np
import pytest

from fiffdepth_ros import params as P
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.pipeline import METRIC_OUTPUTS, OUTPUTS, DepthPipeline, PipelineConfig
from fiffdepth_ros.sync import FrameAssembler, FrameInputs
from msg_factories import BACKENDS

ROOM = SyntheticRoom(160, 120, lidar_lines=32)
STAMP = 1_700_000_000 * 10**9
BACKEND = BACKENDS[1]


@pytest.fixture(scope='module')
def estimator(tiny_checkpoint):
    return DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=64)


def lidar_params(**extra):
    return P.validate(dict(ROOM.static_lidar_params('cam'), **extra))


def frame_inputs(stamp, lidar=True, info=True):
    frame = ROOM.render()
    header = BACKEND.header(stamp, 'cam')
    return FrameInputs(
        image=rgb_to_image_msg(frame.rgb, header, BACKEND),
        camera_info=BACKEND.camera_info(header, **ROOM.camera_info_fields()) if info else None,
        lidar=xyz_to_pointcloud(frame.lidar_points, BACKEND.header(stamp, 'lidar'), BACKEND)
        if lidar else None)


def test_config_knows_when_anchors_are_configured():
    assert PipelineConfig.from_params(lidar_params()).anchors_configured
    assert PipelineConfig.from_params(P.validate({'stereo_source': 'disparity'})).anchors_configured
    assert not PipelineConfig.from_params(P.validate({})).anchors_configured


def test_first_frame_without_companions_is_withheld_then_fitted_then_held(estimator):
    pipe = DepthPipeline(estimator, PipelineConfig.from_params(lidar_params()), BACKEND)
    # The first image arrives before its LiDAR sweep and camera_info (DDS discovery).
    first = pipe.process(frame_inputs(STAMP, lidar=False, info=False))
    assert not first.metric and first.report.status == 'none'
    assert first.withheld.startswith('no scale fit and no held estimate')
    assert not set(METRIC_OUTPUTS) & set(first.messages)
    assert {'relative', 'colorized'} <= set(first.messages)
    # With its anchors the next frame is fitted and every output goes out.
    fitted = pipe.process(frame_inputs(STAMP + 100_000_000))
    assert fitted.metric and fitted.report.status == 'fitted' and not fitted.withheld
    assert set(fitted.messages) == set(OUTPUTS)
    # A frame that loses its sweep keeps the held (valid) estimate: still metric, published.
    held = pipe.process(frame_inputs(STAMP + 200_000_000, lidar=False))
    assert held.report.status == 'held' and held.metric and not held.withheld
    assert {'depth', 'points', 'camera_info'} <= set(held.messages)
    # Past the hold timeout the estimate is dropped: withheld again.
    late = pipe.process(frame_inputs(STAMP + 5_000_000_000, lidar=False))
    assert late.report.status == 'none' and late.withheld and 'depth' not in late.messages


def test_the_withheld_reason_names_the_missing_companion(estimator):
    pipe = DepthPipeline(estimator, PipelineConfig.from_params(lidar_params()), BACKEND)
    assembler = FrameAssembler(0.1, use_lidar=True)
    inputs = assembler.assemble(frame_inputs(STAMP).image)      # nothing else arrived
    result = pipe.process(inputs)
    assert 'no LiDAR sweep within max_anchor_age' in result.withheld
    assert 'depth' not in result.messages


def test_publish_without_fit_restores_the_fixed_mapping_on_the_metric_topic(estimator):
    config = PipelineConfig.from_params(lidar_params(publish_without_fit=True, fixed_scale=2.0))
    result = DepthPipeline(estimator, config, BACKEND).process(frame_inputs(STAMP, lidar=False))
    assert not result.metric and not result.withheld
    assert {'depth', 'camera_info', 'points'} <= set(result.messages)
    ok = np.isfinite(result.depth)          # min_range clips the nearest pixels
    assert ok.mean() > 0.5
    np.testing.assert_allclose(result.depth[ok], 2.0 * result.relative[ok], rtol=1e-6)


def test_without_configured_anchors_the_fixed_mapping_is_published_as_before(estimator):
    config = PipelineConfig.from_params(P.validate({'fixed_scale': 3.0}))
    result = DepthPipeline(estimator, config, BACKEND).process(frame_inputs(STAMP, lidar=False))
    assert not result.metric and not result.withheld and set(result.messages) == set(OUTPUTS)


def test_a_metric_fixed_calibration_is_not_withheld(estimator):
    config = PipelineConfig.from_params(lidar_params(fixed_scale_is_metric=True))
    result = DepthPipeline(estimator, config, BACKEND).process(frame_inputs(STAMP, lidar=False))
    assert result.metric and not result.withheld and 'depth' in result.messages
