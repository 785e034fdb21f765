"""End-to-end: the colcon-installed depth_node in its own process, driven over real DDS.

The node runs a tiny random model; metric accuracy therefore comes from the anchors (LiDAR or
stereo) of a synthetic room whose true depth is known.
"""
import os
import time

import numpy as np
import pytest

from fiffdepth_ros.conversions.backends import RclpyBackend, stamp_to_ns
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.images import image_msg_to_depth
from fiffdepth_ros.conversions.pointcloud import pointcloud_to_xyz, xyz_to_pointcloud
from fiffdepth_ros.demo.harness import NodeProcess, StreamClient
from fiffdepth_ros.demo.scene import SyntheticRoom

pytestmark = pytest.mark.timeout(240)

ROOM = SyntheticRoom(640, 480, lidar_lines=32)
MS = 1_000_000
# Namespaces unique to this run: even another test run that drew the same ROS_DOMAIN_ID on
# this machine cannot cross-talk with ours.
RUN = f'run{os.getpid()}'


def ns(name):
    return f'{RUN}/{name}'



def lidar_params():
    return {**ROOM.static_lidar_params(), 'max_anchor_age': 0.05}


def start_node(tmp_path, tiny_checkpoint, install_prefix, namespace, **params):
    """The installed node in its own process and namespace (tests never hear each other)."""
    base = {'model': str(tiny_checkpoint), 'device': 'cpu', 'processing_res': 128,
            'companion_wait': 1.0,         # generous: CI machines may be loaded
            'publish_relative': True, 'diagnostics_period': 0.2,
            'qos_output_depth': 5}     # the recorder must not miss frames of big clouds
    base.update(params)
    node = NodeProcess(tmp_path / 'node', base, prefix=install_prefix,
                       extra_args=['-r', f'__ns:=/{ns(namespace)}'])
    node.start()
    assert node.wait_for_log('ready:', 120), node.log()
    return node


def wait_for(client, output, stamp_ns, timeout_s=20.0):
    """The recorded ``output`` message with this stamp, waiting for it; None if none came."""
    found = []

    def arrived():
        found[:] = [m for m in client.messages(output) if stamp_to_ns(m.header.stamp) == stamp_ns]
        return bool(found)
    client.wait_until(arrived, timeout_s)
    return found[0] if found else None


def send_and_wait(client, stamp_ns, frame=None, output='depth', timeout_s=20.0, **kwargs):
    """Publish one frame and wait for the output with that stamp; returns it or None."""
    frame = frame or ROOM.render(t=stamp_ns * 1e-9)
    client.publish_frame(ROOM, frame, stamp_ns, **kwargs)
    return wait_for(client, output, stamp_ns, timeout_s)


@pytest.fixture(scope='module')
def lidar_node(tmp_path_factory, tiny_checkpoint, install_prefix, rclpy_context):
    node = start_node(tmp_path_factory.mktemp('lidar_node'), tiny_checkpoint, install_prefix,
                      'lidar_e2e', **lidar_params())
    client = StreamClient(namespace=ns('lidar_e2e'), node_name='e2e_client')
    assert client.wait_for_node(30, lidar=True), node.log()
    # Stamps before every test's own, so tests see time move forward.
    assert client.warm_up(ROOM, ROOM.render(), 1_650_000_000 * 10**9), node.log()
    yield node, client
    client.close()
    node.stop()


def test_node_loads_its_compiled_scale_kernels_before_frames_and_says_so(lidar_node):
    """The scale recovery's compiled kernels are loaded (a first run: compiled) while the
    node starts, not on its first frame, and its log says so (a first run takes seconds)."""
    from fiffdepth_ros.scale import _compiled
    node, _ = lidar_node
    log = node.log()
    if _compiled.ENABLED:
        assert 'compiled scale-recovery kernels ready in' in log, log
        assert log.index('compiled scale-recovery kernels ready') < log.index('ready:'), log
    else:
        assert 'scale-recovery kernels' not in log, log


def test_outputs_have_types_encodings_sizes_headers(lidar_node):
    node, client = lidar_node
    stamp = 1_700_000_000 * 1_000_000_000 + 5 * MS
    depth = send_and_wait(client, stamp)
    assert depth is not None, node.log()
    by_stamp = {name: wait_for(client, name, stamp, 10)
                for name in ('camera_info', 'points', 'relative', 'colorized')}
    assert all(by_stamp.values()), by_stamp
    assert (depth.encoding, depth.width, depth.height) == ('32FC1', 640, 480)
    assert depth.header.frame_id == 'camera_optical'
    info = by_stamp['camera_info']
    assert (info.width, info.height) == (640, 480) and info.header.frame_id == 'camera_optical'
    np.testing.assert_allclose(np.asarray(info.k), ROOM.camera_info_fields()['k'])
    cloud = by_stamp['points']
    assert (cloud.height, cloud.width, cloud.point_step) == (480, 640, 32)
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    assert cloud.header.frame_id == 'camera_optical' and not cloud.is_dense
    assert by_stamp['relative'].encoding == '32FC1'
    assert by_stamp['colorized'].encoding == 'rgb8'
    relative = image_msg_to_depth(by_stamp['relative'])
    assert np.nanmin(relative) >= 0.0 and np.nanmax(relative) <= 1.0


def test_lidar_anchored_depth_is_metric(lidar_node):
    node, client = lidar_node
    errors = []
    for i in range(3):
        stamp = 1_700_000_100 * 1_000_000_000 + i * 100 * MS
        frame = ROOM.render(t=i * 0.1)
        depth_msg = send_and_wait(client, stamp, frame)
        assert depth_msg is not None, node.log()
        depth = image_msg_to_depth(depth_msg)
        valid = np.isfinite(depth)
        assert valid.mean() > 0.9
        errors.append(np.median(np.abs(depth[valid] - frame.depth[valid]) / frame.depth[valid]))
    # A random model carries no depth: this is the anchors' global fit + local correction.
    assert np.median(errors) < 0.08, errors
    cloud = wait_for(client, 'points', stamp)
    xyz = pointcloud_to_xyz(cloud)
    assert len(xyz) > 0.9 * 640 * 480
    assert np.median(np.abs(xyz[:, 2] - frame.depth[np.isfinite(depth)].ravel())) < 0.5


def _bad_image(backend, header, encoding='rgb8', width=640, height=480, step=None, size=None):
    step = step if step is not None else width * 3
    size = size if size is not None else step * height
    return backend.image(header, height, width, encoding, step, np.zeros(size, np.uint8))


def test_bad_inputs_leave_the_node_running(lidar_node):
    node, client = lidar_node
    backend = RclpyBackend()
    base = 1_700_000_200 * 1_000_000_000
    stamp = base

    def good_frame_works():
        # The node still processes frames: depth/relative always goes out (depth/image may be
        # withheld when a sweep comes too late for the frame, e.g. right after the clock jump).
        nonlocal stamp
        stamp += 200 * MS
        return send_and_wait(client, stamp, output='relative') is not None

    header = backend.header(base, 'camera_optical')
    client.image_pub.publish(_bad_image(backend, header, encoding='32FC3', step=640 * 12))
    assert good_frame_works(), node.log()
    client.image_pub.publish(_bad_image(backend, header, size=100))         # truncated data
    assert good_frame_works(), node.log()
    client.image_pub.publish(_bad_image(backend, header, width=0, height=0, step=0, size=0))
    assert good_frame_works(), node.log()

    # Image size disagreeing with camera_info: depth still published, no cloud, a warning.
    stamp += 200 * MS
    small = ROOM.render()
    small.rgb = small.rgb[:240, :320].copy()
    depth = send_and_wait(client, stamp, small)
    assert depth is not None and (depth.width, depth.height) == (320, 240)
    assert good_frame_works()

    # camera_info with K all zeros: depth still published, no cloud, a warning.
    stamp += 200 * MS
    zero_k = backend.camera_info(backend.header(stamp, 'camera_optical'), 480, 640, 'plumb_bob',
                                 [0.0] * 5, [0.0] * 9, np.eye(3), [0.0] * 12)
    client.info_pub.publish(zero_k)
    client.image_pub.publish(rgb_to_image_msg(ROOM.render().rgb,
                                              backend.header(stamp, 'camera_optical'), backend))
    assert wait_for(client, 'depth', stamp) is not None
    assert good_frame_works(), node.log()

    # Empty and all-NaN LiDAR sweeps with a good camera_info: anchors ignored, frame published.
    for points in (np.zeros((0, 3), np.float32), np.full((100, 3), np.nan, np.float32)):
        stamp += 200 * MS
        header = backend.header(stamp, 'camera_optical')
        client.info_pub.publish(backend.camera_info(header, **ROOM.camera_info_fields()))
        client.lidar_pub.publish(xyz_to_pointcloud(points, backend.header(stamp, 'lidar'),
                                                   backend))
        time.sleep(0.2)
        client.image_pub.publish(rgb_to_image_msg(ROOM.render().rgb, header, backend))
        assert wait_for(client, 'depth', stamp) is not None, node.log()
    assert good_frame_works(), node.log()

    # Clock jump backwards (a bag played in a loop).
    stamp = 1_600_000_000 * 1_000_000_000
    assert good_frame_works(), node.log()
    assert node.running
    log = node.log()
    for expected in ('32FC3', 'expected step x height', 'image is 320x240 but camera_info',
                     'zero focal length', 'LiDAR cloud ignored: no finite points',
                     'clock jumped backwards'):
        assert expected in log, expected


def _set_parameters(client, values):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    service = client.node.create_client(SetParameters, 'depth_node/set_parameters')
    assert service.wait_for_service(timeout_sec=10)
    request = SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()
                    for name, value in values.items()])
    future = service.call_async(request)
    deadline = time.monotonic() + 10
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.node.destroy_client(service)
    return future.result().results


def test_parameters_validated_at_run_time(lidar_node):
    node, client = lidar_node
    bad = _set_parameters(client, {'cloud_type': 'xyzi'})
    assert not bad[0].successful and "'xyz', 'xyzrgb', 'none'" in bad[0].reason
    bad_range = _set_parameters(client, {'min_range': 50.0})        # above max_range
    assert not bad_range[0].successful and 'max_range' in bad_range[0].reason
    read_only = _set_parameters(client, {'model': '/elsewhere'})
    assert not read_only[0].successful
    ok = _set_parameters(client, {'output_encoding': '16UC1', 'cloud_stride': 2})
    assert all(r.successful for r in ok)
    stamp = 1_700_000_400 * 1_000_000_000
    depth = send_and_wait(client, stamp)
    assert depth is not None and depth.encoding == '16UC1'
    cloud = wait_for(client, 'points', stamp)
    assert (cloud.height, cloud.width) == (240, 320)
    assert all(r.successful for r in _set_parameters(client, {'output_encoding': '32FC1',
                                                              'cloud_stride': 1}))


def test_diagnostics_report_rates_scale_and_device(lidar_node):
    node, client = lidar_node
    # The tiny random model's prediction can contradict a frame's LiDAR: the fit's scale comes
    # out negative and the node rightly withholds the metric depth (seen at 1_700_000_600:
    # "full fit gave an absurd scale -1.819"). So up to three frames, one of which must come
    # back metric. Before, this test read whatever diagnostics came last, often older frames'.
    assert client.wait_for_node(10, lidar=True), node.log()
    stamps = [(1_700_000_600 + i) * 1_000_000_000 for i in range(3)]
    assert any(send_and_wait(client, s, timeout_s=10) is not None for s in stamps), node.log()
    # Diagnostics come every diagnostics_period and describe the last finished frame: one sent
    # before this frame was done (under load, an older frame's) would be stale, so wait for
    # two more after its output arrived.
    seen = client.count('diagnostics')
    assert client.wait_until(lambda: client.count('diagnostics') >= seen + 2, 10), node.log()
    status = client.messages('diagnostics')[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    for key in ('input rate (Hz)', 'output rate (Hz)', 'latency median (ms)',
                'inference median (ms)', 'frames dropped', 'anchors used', 'scale', 'shift',
                'fit status', 'device', 'precision', 'model'):
        assert key in values, key
    assert values['device'].startswith('cpu') and values['metric'] == 'true'
    assert int(values['anchors used']) > 100


def test_qos_best_effort_peers_interoperate(tmp_path, tiny_checkpoint, install_prefix,
                                            rclpy_context):
    """Reliable outputs reach best-effort subscribers; a best-effort camera that appears after
    the node started is matched (BEST_AVAILABLE re-subscribes on the incompatibility)."""
    from sensor_msgs.msg import Image

    from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
    from fiffdepth_ros.ros.qos import profile
    node = start_node(tmp_path, tiny_checkpoint, install_prefix, 'qos_e2e')
    # keep: the recorder stores what the function gives, not the message.
    client = StreamClient(namespace=ns('qos_e2e'), node_name='e2e_qos', outputs=['depth'],
                          keep={'depth': lambda m: (m.width, m.height)})
    try:
        assert client.wait_for_node(30), node.log()
        got = []
        client.node.create_subscription(Image, 'depth/image', got.append,
                                        profile('best_effort', 1))
        be_pub = client.node.create_publisher(Image, 'image', profile('best_effort', 1))
        backend = RclpyBackend()
        # Small frames: best effort loses large fragmented images, which is why the node
        # prefers reliable inputs.
        rgb = ROOM.render().rgb[::4, ::4].copy()
        for i in range(40):
            be_pub.publish(rgb_to_image_msg(rgb, backend.header(1_700_000_500 * 10**9 + i,
                                                                'camera_optical'), backend))
            if client.wait_until(lambda: len(got) > 0, 0.5):
                break
        assert got, node.log()
        time.sleep(0.5)
        assert 're-subscribing' in node.log(), node.log()
        assert (got[0].width, got[0].height) == (160, 120)
        assert client.wait_until(lambda: client.count('depth') > 0, 5.0)
        assert client.messages('depth')[0] == (160, 120)
    finally:
        client.close()
        node.stop()


def test_clean_shutdown_on_sigint(tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    node = start_node(tmp_path, tiny_checkpoint, install_prefix, 'shutdown_e2e')
    code, seconds = node.stop(timeout_s=10)
    assert code == 0, node.log()
    assert seconds < 3.0, f'shutdown took {seconds:.2f} s'
    assert 'Traceback' not in node.log()
    # The large-data Fast DDS profile was loaded without complaint.
    assert node.env['FASTDDS_DEFAULT_PROFILES_FILE'].endswith('fastdds_large_data.xml')
    assert 'XMLPARSER' not in node.log() and 'XML' not in node.log()


def test_compressed_transport_without_anchors_is_flagged_relative(
        tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    node = start_node(tmp_path, tiny_checkpoint, install_prefix, 'compressed_e2e',
                      image_transport='compressed', fixed_scale=2.0, fixed_shift=0.5)
    client = StreamClient(namespace=ns('compressed_e2e'), node_name='e2e_compressed')
    try:
        assert client.wait_for_node(30, compressed=True), node.log()
        stamp = 1_700_000_700 * 1_000_000_000
        depth_msg = send_and_wait(client, stamp, compressed=True, lidar=False)
        assert depth_msg is not None, node.log()
        relative = wait_for(client, 'relative', stamp)
        assert relative is not None
        depth, rel = image_msg_to_depth(depth_msg), image_msg_to_depth(relative)
        valid = np.isfinite(depth) & np.isfinite(rel)
        np.testing.assert_allclose(depth[valid], 2.0 * rel[valid] + 0.5, rtol=1e-5, atol=1e-5)
        def status_after_frames():
            if not client.count('diagnostics'):
                return None
            status = client.messages('diagnostics')[-1].status[0]
            values = {kv.key: kv.value for kv in status.values}
            return (status, values) if int(values['frames processed']) >= 1 else None
        client.wait_until(lambda: status_after_frames() is not None, 10)
        status, values = status_after_frames()
        assert values['metric'] == 'false'
        assert 'relative' in status.message
    finally:
        client.close()
        node.stop()


def test_model_that_cannot_load_exits_nonzero(tmp_path, install_prefix):
    node = NodeProcess(tmp_path, {'model': str(tmp_path / 'no_such_model'), 'device': 'cpu'},
                       prefix=install_prefix).start()
    node.proc.wait(timeout=120)
    assert node.proc.returncode != 0
    assert 'no_such_model' in node.log() and 'cannot start' in node.log()


def test_invalid_parameter_at_start_exits_nonzero(tmp_path, tiny_checkpoint, install_prefix):
    node = NodeProcess(tmp_path, {'model': str(tiny_checkpoint), 'cloud_type': 'mesh'},
                       prefix=install_prefix).start()
    node.proc.wait(timeout=120)
    assert node.proc.returncode == 1
    assert "'xyz', 'xyzrgb', 'none'" in node.log()
