"""A LiDAR sweep matched to several images is projected once (the pipeline's sweep cache)."""
import numpy as np

from fiffdepth_ros import params as P
from fiffdepth_ros import pipeline as pipeline_module
from fiffdepth_ros.conversions.backends import RosbagsBackend
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.pipeline import DepthPipeline, PipelineConfig
from fiffdepth_ros.sync import FrameInputs

ROOM = SyntheticRoom(160, 120, lidar_lines=16, lidar_columns=512)


class FlatModel:
    """Relative depth = the room's true depth / 10 (no network needed for this test)."""

    def __init__(self, depth):
        self.depth = np.nan_to_num(depth, nan=5.0).astype(np.float32) / 10.0

    def predict(self, rgb):
        return self.depth


def test_a_sweep_reused_by_the_next_image_is_not_projected_again(monkeypatch):
    calls = []
    real = pipeline_module.lidar_anchors
    monkeypatch.setattr(pipeline_module, 'lidar_anchors',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    backend = RosbagsBackend()
    frame = ROOM.render()
    config = PipelineConfig.from_params(P.validate(ROOM.static_lidar_params('cam')))
    pipe = DepthPipeline(FlatModel(frame.depth), config, backend)
    sweep = xyz_to_pointcloud(frame.lidar_points, backend.header(10**18, 'lidar'), backend)
    results = []
    for i, cloud in enumerate([sweep, sweep, xyz_to_pointcloud(
            frame.lidar_points, backend.header(10**18 + 10**8, 'lidar'), backend)]):
        header = backend.header(10**18 + i * 33 * 10**6, 'cam')
        results.append(pipe.process(FrameInputs(
            image=rgb_to_image_msg(frame.rgb, header, backend),
            camera_info=backend.camera_info(header, **ROOM.camera_info_fields()), lidar=cloud)))
    assert len(calls) == 2                       # the second image reused the first projection
    assert results[0].anchors == results[1].anchors == results[2].anchors > 100
    assert all(r.report.status == 'fitted' for r in results)
    pipe.update(max_range=3.0)                   # another range: projected anew
    header = backend.header(10**18 + 10**8, 'cam')
    pipe.process(FrameInputs(image=rgb_to_image_msg(frame.rgb, header, backend),
                             camera_info=backend.camera_info(header, **ROOM.camera_info_fields()),
                             lidar=sweep))
    assert len(calls) == 3
