"""Lazy outputs: the node builds and publishes only what someone subscribes to.

In one process (a private rclpy context, no spinning needed): the node's publishers see the
test's subscriptions through DDS discovery, frames go in through the node's own callbacks, and
the builders of the outputs nobody asked for fail the test if they run.
"""

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2

from fiffdepth_ros import pipeline as pipeline_module
from fiffdepth_ros.conversions.backends import RclpyBackend
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.pointcloud import DepthCloudBuilder, xyz_to_pointcloud
from fiffdepth_ros.demo.harness import wait_until
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.ros.depth_node import DepthNode

ROOM = SyntheticRoom(160, 120, lidar_lines=16, lidar_columns=512)
FRAME = ROOM.render()


class TruthModel:
    """Relative depth = the room's true depth / 10 (no network needed)."""

    def predict(self, rgb):
        return np.nan_to_num(FRAME.depth, nan=5.0).astype(np.float32) / 10.0

    def describe(self):
        return {'model': 'truth', 'family': 'test', 'device': 'cpu', 'precision': 'fp32',
                'processing_res': 0}


@pytest.fixture
def node_and_listener():
    context = rclpy.Context()
    rclpy.init(context=context)
    params = dict(ROOM.static_lidar_params(), publish_relative=True, publish_colorized=True,
                  cloud_type='xyzrgb', overlap_stages='off', companion_wait=0.0)
    node = DepthNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])
    node.start(TruthModel())
    listener = rclpy.create_node('lazy_listener', context=context)
    try:
        yield node, listener
    finally:
        node.stop()
        node.destroy_node()
        listener.destroy_node()
        rclpy.shutdown(context=context)


def _feed(node, i):
    backend = RclpyBackend()
    stamp = 10**18 + i * 10**8
    header = backend.header(stamp, 'camera_optical')
    node._on_camera_info(backend.camera_info(header, **ROOM.camera_info_fields()))
    node._on_lidar(xyz_to_pointcloud(FRAME.lidar_points, backend.header(stamp, 'lidar'),
                                     backend))
    node._on_image(rgb_to_image_msg(FRAME.rgb, header, backend))


def _until(predicate, timeout=20.0):
    return wait_until(predicate, timeout, poll_s=0.02)


def test_outputs_without_subscribers_are_neither_built_nor_published(node_and_listener,
                                                                      monkeypatch):
    node, listener = node_and_listener
    built = []
    real_build, real_colorize = DepthCloudBuilder.build, pipeline_module.colorize_depth
    monkeypatch.setattr(DepthCloudBuilder, 'build',
                        lambda *a, **k: built.append('points') or real_build(*a, **k))
    monkeypatch.setattr(pipeline_module, 'colorize_depth',
                        lambda *a, **k: built.append('colorized') or real_colorize(*a, **k))
    finished = []
    real_finish = node.pipeline.finish
    node.pipeline.finish = lambda frame, rel, outputs: (finished.append(set(outputs))
                                                        or real_finish(frame, rel, outputs))

    # Nobody listens: the frame is not even run through the model.
    _feed(node, 0)
    assert _until(lambda: node.stats.idle >= 1)
    assert finished == [] and built == []

    # Only the depth image is wanted: only it is built and published.
    listener.create_subscription(Image, 'depth/image', lambda m: None, 10)
    assert _until(lambda: node.publishers_by_output['depth'].get_subscription_count() > 0)
    _feed(node, 1)
    assert _until(lambda: node.stats.processed >= 1)
    assert finished == [{'depth'}] and built == []
    assert set(node.stats.publish_ms) == {'depth'}
    assert node.stats.publish_bytes['depth'] == ROOM.camera.width * ROOM.camera.height * 4

    # A cloud subscriber appears: from the next frame the cloud is built and published too.
    listener.create_subscription(PointCloud2, 'depth/points', lambda m: None, 10)
    assert _until(lambda: node.publishers_by_output['points'].get_subscription_count() > 0)
    _feed(node, 2)
    assert _until(lambda: node.stats.processed >= 2)
    assert finished[-1] == {'depth', 'points'} and built == ['points']
    assert set(node.stats.publish_ms) == {'depth', 'points'}
