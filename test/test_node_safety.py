"""The installed node over DDS: no wrong metres on the metric topics, latched camera_info,
repeated Ctrl-C, and the lifecycle (managed) variant."""
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fiffdepth_ros.conversions.backends import RclpyBackend, stamp_to_ns
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.images import image_msg_to_depth
from fiffdepth_ros.demo.harness import NodeProcess, StreamClient
from fiffdepth_ros.demo.scene import SyntheticRoom

pytestmark = pytest.mark.timeout(240)

ROOM = SyntheticRoom(320, 240, lidar_lines=32)
RUN = f'safety{os.getpid()}'
MS = 1_000_000


def ns(name):
    return f'{RUN}/{name}'


def lidar_params():
    return {**ROOM.static_lidar_params(), 'max_anchor_age': 0.05}


def node_process(tmp_path, tiny_checkpoint, install_prefix, namespace, executable='depth_node',
                 **params):
    base = {'model': str(tiny_checkpoint), 'device': 'cpu', 'processing_res': 64,
            'publish_relative': True, 'diagnostics_period': 0.2, 'qos_output_depth': 5}
    base.update(params)
    node = NodeProcess(tmp_path / 'node', base, prefix=install_prefix,
                       extra_args=['-r', f'__ns:=/{ns(namespace)}'])
    if executable != 'depth_node':
        node.command[0] = str(Path(node.command[0]).with_name(executable))
    return node


def stamps_of(client, output):
    return {stamp_to_ns(m.header.stamp) for m in client.messages(output)}


@pytest.fixture(scope='module')
def gate_node(tmp_path_factory, tiny_checkpoint, install_prefix):
    """A LiDAR-anchored node; the SIGINT test at the end of this file stops it."""
    node = node_process(tmp_path_factory.mktemp('gate'), tiny_checkpoint, install_prefix, 'gate',
                        companion_wait=0.3, **lidar_params()).start()
    assert node.wait_for_log('ready:', 120), node.log()
    yield node
    node.stop()


def test_first_image_whose_companions_come_late_or_never_is_not_published_as_metric(
        gate_node, rclpy_context):
    node = gate_node
    client = StreamClient(namespace=ns('gate'), node_name='gate_client')
    backend = RclpyBackend()
    try:
        assert client.wait_for_node(30, lidar=True), node.log()
        frame = ROOM.render()
        # 1. An image alone (its LiDAR sweep and camera_info lost to discovery): never comes.
        lonely = 1_700_000_000 * 10**9
        client.image_pub.publish(rgb_to_image_msg(frame.rgb, backend.header(
            lonely, 'camera_optical'), backend))
        assert client.wait_until(lambda: lonely in stamps_of(client, 'relative'), 20), node.log()
        # 2. An image whose companions arrive 1 s late (past companion_wait).
        late = lonely + 100 * MS
        client.image_pub.publish(rgb_to_image_msg(frame.rgb, backend.header(
            late, 'camera_optical'), backend))
        assert client.wait_until(lambda: late in stamps_of(client, 'relative'), 20), node.log()
        time.sleep(1.0)
        from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
        client.info_pub.publish(backend.camera_info(backend.header(late, 'camera_optical'),
                                                    **ROOM.camera_info_fields()))
        client.lidar_pub.publish(xyz_to_pointcloud(frame.lidar_points,
                                                   backend.header(late, 'lidar'), backend))
        def withheld_status():
            for msg in reversed(client.messages('diagnostics')):
                values = {kv.key: kv.value for kv in msg.status[0].values}
                if int(values.get('withheld frames (no scale fit)', '0')) >= 2:
                    return msg.status[0], values
            return None
        assert client.wait_until(lambda: withheld_status() is not None, 10), node.log()
        status, values = withheld_status()
        from diagnostic_msgs.msg import DiagnosticStatus
        assert status.level == DiagnosticStatus.WARN
        assert 'metric outputs withheld' in status.message
        assert 'no scale fit and no held estimate' in status.message
        # Neither frame reached a metric topic, not even once its companions were there.
        metric_stamps = stamps_of(client, 'depth') | stamps_of(client, 'points') | \
            stamps_of(client, 'camera_info')
        assert lonely not in metric_stamps and late not in metric_stamps
        # 3. With its companions a frame is metric and published on depth/image.
        good = late + 100 * MS
        client.publish_frame(ROOM, frame, good)
        assert client.wait_until(lambda: good in stamps_of(client, 'depth'), 20), node.log()
        depth = image_msg_to_depth(next(m for m in client.messages('depth')
                                        if stamp_to_ns(m.header.stamp) == good))
        valid = np.isfinite(depth)
        assert np.median(np.abs(depth[valid] - frame.depth[valid]) / frame.depth[valid]) < 0.1
        assert lonely not in stamps_of(client, 'depth')
        assert 'metric outputs withheld' in node.log()
    finally:
        client.close()


def test_single_latched_camera_info_serves_ten_seconds_of_images(
        tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo
    import rclpy
    backend = RclpyBackend()
    # The driver publishes camera_info once, transient-local, before the node even starts.
    driver = rclpy.create_node('latched_driver', namespace=ns('latched'))
    latched = driver.create_publisher(CameraInfo, 'camera_info', QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
        reliability=ReliabilityPolicy.RELIABLE))
    t0 = 1_700_001_000 * 10**9
    latched.publish(backend.camera_info(backend.header(t0, 'camera_optical'),
                                        **ROOM.camera_info_fields()))
    node = node_process(tmp_path, tiny_checkpoint, install_prefix, 'latched').start()
    client = StreamClient(namespace=ns('latched'), node_name='latched_client')
    # The driver is the only camera_info publisher (the client's own would be a second one).
    client.node.destroy_publisher(client.info_pub)
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor()
    executor.add_node(driver)
    try:
        assert node.wait_for_log('ready:', 120), node.log()
        assert client.wait_until(lambda: all(
            s.get_publisher_count() > 0 for s in client.subscriptions.values()) and
            client.image_pub.get_subscription_count() > 0, 30), node.log()
        frame = ROOM.render()
        sent = []
        start = time.monotonic()
        while time.monotonic() - start < 10.0:        # images for 10 s, 4 per second
            stamp = t0 + int((time.monotonic() - start + 1.0) * 1e9)
            client.image_pub.publish(rgb_to_image_msg(frame.rgb, backend.header(
                stamp, 'camera_optical'), backend))
            sent.append(stamp)
            executor.spin_once(timeout_sec=0.25)
        assert client.wait_until(lambda: sent[-1] in stamps_of(client, 'depth'), 20), node.log()
        depth = stamps_of(client, 'depth')
        # Every depth image has its camera_info and cloud (latest-only may drop inputs).
        assert len(depth) >= len(sent) // 2, (len(depth), len(sent))
        assert depth <= stamps_of(client, 'camera_info')
        assert depth <= stamps_of(client, 'points')
        info = client.messages('camera_info')[-1]
        np.testing.assert_allclose(np.asarray(info.k), ROOM.camera_info_fields()['k'])
        assert node.log().count('using its latest camera_info') == 1
    finally:
        client.close()
        node.stop()
        executor.remove_node(driver)
        driver.destroy_node()


def test_latched_camera_info_missed_by_a_volatile_subscription_is_fetched(
        tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    """A volatile camera_info publisher is there when the node subscribes (so it settles on
    volatile) beside a latched driver that published before: once only latched publishers are
    left and nothing was heard, the node re-subscribes transient-local and gets the message."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo
    backend = RclpyBackend()
    client = StreamClient(namespace=ns('relatch'), node_name='relatch_client')
    latched = client.node.create_publisher(CameraInfo, 'camera_info', QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
        reliability=ReliabilityPolicy.RELIABLE))
    t0 = 1_700_003_000 * 10**9
    latched.publish(backend.camera_info(backend.header(t0, 'camera_optical'),
                                        **ROOM.camera_info_fields()))
    node = node_process(tmp_path, tiny_checkpoint, install_prefix, 'relatch').start()
    try:
        assert node.wait_for_log('ready:', 120), node.log()
        assert client.wait_for_node(30), node.log()
        time.sleep(1.0)
        assert 're-subscribing transient-local' not in node.log()
        client.node.destroy_publisher(client.info_pub)           # only the latched one left
        assert node.wait_for_log('re-subscribing transient-local', 20), node.log()
        stamp = t0 + 2 * 10**9
        rgb = ROOM.render().rgb
        for i in range(20):
            client.image_pub.publish(rgb_to_image_msg(rgb, backend.header(
                stamp + i * MS, 'camera_optical'), backend))
            if client.wait_until(lambda: bool(stamps_of(client, 'camera_info')), 0.5):
                break
        assert stamps_of(client, 'camera_info'), node.log()
        assert 'using its latest camera_info' in node.log()
    finally:
        client.close()
        node.stop()


def test_two_sigints_50ms_apart_exit_0_without_traceback_within_1s(gate_node):
    node = gate_node
    assert node.running, node.log()
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    node.proc.send_signal(signal.SIGINT)
    node.proc.wait(timeout=10)
    seconds = time.monotonic() - t0
    code, _ = node.stop()
    assert code == 0, node.log()
    assert 'Traceback' not in node.log() and 'KeyboardInterrupt' not in node.log(), node.log()
    assert seconds < 1.0, f'took {seconds:.2f} s'


def _lifecycle(client_node, namespace):
    from lifecycle_msgs.srv import ChangeState, GetState
    base = f'/{namespace}/depth_node'
    change = client_node.create_client(ChangeState, f'{base}/change_state')
    get = client_node.create_client(GetState, f'{base}/get_state')
    return change, get


def _call(client, request, timeout_s=60.0):
    assert client.wait_for_service(timeout_sec=30)
    future = client.call_async(request)
    deadline = time.monotonic() + timeout_s
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.done(), 'service call timed out'
    return future.result()


def test_lifecycle_transitions(tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    node = node_process(tmp_path, tiny_checkpoint, install_prefix, 'managed',
                        executable='depth_lifecycle_node').start()
    client = StreamClient(namespace=ns('managed'), node_name='managed_client')
    change, get = _lifecycle(client.node, ns('managed'))

    def state():
        return _call(get, GetState.Request()).current_state.label

    def transition(tid):
        return _call(change, ChangeState.Request(transition=Transition(id=tid))).success

    def depth_publishers():
        return client.subscriptions['depth'].get_publisher_count()
    try:
        assert node.wait_for_log('lifecycle node up', 120), node.log()
        assert state() == 'unconfigured' and depth_publishers() == 0
        assert 'configured: model' not in node.log()
        assert transition(Transition.TRANSITION_CONFIGURE)          # loads the model
        assert state() == 'inactive' and 'configured: model' in node.log()
        time.sleep(0.5)
        assert depth_publishers() == 0                               # not publishing yet
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state() == 'active'
        assert client.wait_for_node(30), node.log()
        stamp = 1_700_002_000 * 10**9
        client.publish_frame(ROOM, ROOM.render(), stamp, lidar=False)
        assert client.wait_until(lambda: stamp in stamps_of(client, 'depth'), 30), node.log()
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == 'inactive'
        assert client.wait_until(lambda: depth_publishers() == 0, 10)
        client.clear()
        client.image_pub.publish(rgb_to_image_msg(ROOM.render().rgb, RclpyBackend().header(
            stamp + 100 * MS, 'camera_optical'), RclpyBackend()))
        time.sleep(1.0)
        assert client.count('depth') == 0 and client.image_pub.get_subscription_count() == 0
        assert transition(Transition.TRANSITION_CLEANUP)              # frees the model
        assert state() == 'unconfigured' and 'model released' in node.log()
        # Configure and activate again: a full second cycle works.
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert client.wait_for_node(30), node.log()
        client.publish_frame(ROOM, ROOM.render(), stamp + 200 * MS, lidar=False)
        assert client.wait_until(lambda: stamp + 200 * MS in stamps_of(client, 'depth'), 30)
    finally:
        client.close()
        code, _ = node.stop()
    assert code == 0 and 'Traceback' not in node.log(), node.log()
