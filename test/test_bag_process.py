"""process_bag end to end: synthetic bags in, tiny model, output bags read back and checked.

The tiny model is random; metric accuracy comes from the anchors (LiDAR or stereo) of a
synthetic room whose true depth is known, through the same pipeline the node runs.
"""
from collections import defaultdict

import numpy as np
import pytest
import yaml
from rosbags.interfaces import QosDurability, QosHistory, QosReliability
from rosbags.rosbag2.metadata import parse_qos

from fiffdepth_ros.bag.process_bag import main
from fiffdepth_ros.bag.reader import BagReader
from fiffdepth_ros.bag.synthetic import (CAMERA_FRAME, SyntheticBagSpec, lidar_extrinsic_params,
                                         write_synthetic_bag)
from fiffdepth_ros.conversions.backends import RosbagsBackend, stamp_to_ns
from fiffdepth_ros.conversions.images import image_msg_to_depth
from fiffdepth_ros.conversions.pointcloud import pointcloud_to_xyz

TYPESTORE = RosbagsBackend().typestore
MS = 1_000_000
OUT = {'depth': '/camera/depth/image', 'camera_info': '/camera/depth/camera_info',
       'points': '/camera/depth/points', 'relative': '/camera/depth/relative',
       'colorized': '/camera/depth/colorized'}
TYPES = {'depth': 'sensor_msgs/msg/Image', 'camera_info': 'sensor_msgs/msg/CameraInfo',
         'points': 'sensor_msgs/msg/PointCloud2', 'relative': 'sensor_msgs/msg/Image',
         'colorized': 'sensor_msgs/msg/Image'}


class BagContents:
    """Everything in a bag: raw messages per topic (bag time, bytes) and connections."""

    def __init__(self, path):
        self.path = path
        self.raw = defaultdict(list)
        with BagReader(path) as reader:
            self.connections = {c.topic: c for c in reader.connections}
            for m in reader.messages():
                self.raw[m.topic].append((m.bag_time_ns, bytes(m.data)))
        self.metadata = yaml.safe_load((path / 'metadata.yaml').read_text())[
            'rosbag2_bagfile_information']

    def msgs(self, topic):
        msgtype = self.connections[topic].msgtype
        return [(t, TYPESTORE.deserialize_cdr(data, msgtype)) for t, data in self.raw[topic]]


def assert_publisher_qos(raw) -> None:
    """One profile as a normal reliable publisher offers it (either metadata version)."""
    qos = parse_qos(raw)
    assert len(qos) == 1
    assert (qos[0].reliability, qos[0].history, qos[0].durability, qos[0].depth) == (
        QosReliability.RELIABLE, QosHistory.KEEP_LAST, QosDurability.VOLATILE, 1)


def run(argv, capsys):
    code = main([str(a) for a in argv] + ['--no-progress'])
    out, err = capsys.readouterr()
    return code, out, err


def relative_errors(contents, truth):
    errors = []
    for (_, msg), true in zip(contents.msgs(OUT['depth']), truth):
        depth = image_msg_to_depth(msg)
        valid = np.isfinite(depth)
        assert valid.mean() > 0.9
        errors.append(float(np.median(np.abs(depth[valid] - true[valid]) / true[valid])))
    return errors


# ---------------------------------------------------------------------- LiDAR, MCAP, raw
LIDAR_SPEC = SyntheticBagSpec(frames=4, width=320, height=240, lidar_lines=32,
                              lidar_columns=1024, stereo=True, tf_static=True)


@pytest.fixture(scope='module')
def lidar_run(tmp_path_factory, tiny_checkpoint):
    """MCAP in and out, raw images, LiDAR anchors with the extrinsic from a params file,
    --copy-input and the relative output on."""
    tmp = tmp_path_factory.mktemp('bag_lidar')
    room, truth = write_synthetic_bag(tmp / 'in', LIDAR_SPEC, storage='mcap')
    params = dict(lidar_extrinsic_params(room), processing_res=128, device='cpu',
                  publish_relative=True, use_sim_time=False)
    (tmp / 'params.yaml').write_text(yaml.safe_dump({'depth_node': {'ros__parameters': params}}))
    capture = _Capture()
    try:
        code = main([str(tmp / 'in'), str(tmp / 'out'), '--model', str(tiny_checkpoint),
                     '--params', str(tmp / 'params.yaml'), '--lidar-topic', '/lidar/points',
                     '--copy-input', '--no-progress'])
    finally:
        printed = capture.stop()
    return dict(code=code, out=printed, input=BagContents(tmp / 'in'),
                output=BagContents(tmp / 'out'), truth=truth, room=room)


class _Capture:
    """stdout capture for a module fixture (capsys is function scoped)."""

    def __init__(self):
        import io
        import sys
        self._old, self._buf = sys.stdout, io.StringIO()
        sys.stdout = self._buf

    def stop(self) -> str:
        import sys
        sys.stdout = self._old
        return self._buf.getvalue()


def test_outputs_have_the_topics_types_and_counts(lidar_run):
    assert lidar_run['code'] == 0, lidar_run['out']
    out, n = lidar_run['output'], LIDAR_SPEC.frames
    inputs = set(lidar_run['input'].connections)
    assert set(out.connections) == set(OUT.values()) | inputs
    for name, topic in OUT.items():
        assert out.connections[topic].msgtype == TYPES[name]
        assert len(out.raw[topic]) == n, topic


def test_outputs_keep_the_source_header_and_bag_time(lidar_run):
    source = lidar_run['input'].msgs('/camera/image_raw')
    for topic in OUT.values():
        outputs = lidar_run['output'].msgs(topic)
        assert len(outputs) == len(source)
        for (src_time, src), (out_time, msg) in zip(source, outputs):
            assert out_time == src_time                    # bag time of the source image
            assert stamp_to_ns(msg.header.stamp) == stamp_to_ns(src.header.stamp)
            assert msg.header.frame_id == CAMERA_FRAME


def test_lidar_anchored_depth_is_metric(lidar_run):
    errors = relative_errors(lidar_run['output'], lidar_run['truth'])
    # A random model carries no depth: this is the anchors' fit + local correction.
    assert max(errors) < 0.10, errors
    out = lidar_run['output']
    info = out.msgs(OUT['camera_info'])[0][1]
    np.testing.assert_allclose(info.k, lidar_run['room'].camera_info_fields()['k'])
    assert (info.width, info.height) == (320, 240)
    depth = image_msg_to_depth(out.msgs(OUT['depth'])[0][1])
    cloud = out.msgs(OUT['points'])[0][1]
    assert (cloud.height, cloud.width) == (240, 320)
    xyz = pointcloud_to_xyz(cloud)
    np.testing.assert_allclose(xyz[:, 2], depth[np.isfinite(depth)], rtol=1e-5)
    relative = image_msg_to_depth(out.msgs(OUT['relative'])[0][1])
    assert np.nanmin(relative) >= 0.0 and np.nanmax(relative) <= 1.0
    assert out.msgs(OUT['colorized'])[0][1].encoding == 'rgb8'


def test_copy_input_copies_every_topic_byte_for_byte(lidar_run):
    src, out = lidar_run['input'], lidar_run['output']
    assert set(src.raw) <= set(out.raw)
    for topic, messages in src.raw.items():
        assert out.raw[topic] == messages, topic                 # bag times and bytes
        a, b = src.connections[topic], out.connections[topic]
        assert (b.msgtype, b.digest, b.msgdef.data) == (a.msgtype, a.digest, a.msgdef.data)
        assert b.ext.offered_qos_profiles == a.ext.offered_qos_profiles


def test_output_metadata_has_definitions_and_publisher_qos(lidar_run):
    meta = lidar_run['output'].metadata
    assert (meta['storage_identifier'], meta['version']) == ('mcap', 8)
    assert meta['message_count'] == sum(len(v) for v in lidar_run['output'].raw.values())
    by_topic = {e['topic_metadata']['name']: e for e in meta['topics_with_message_count']}
    for topic in OUT.values():
        entry = by_topic[topic]
        assert entry['message_count'] == LIDAR_SPEC.frames
        assert entry['topic_metadata']['type_description_hash'].startswith('RIHS01_')
        assert_publisher_qos(entry['topic_metadata']['offered_qos_profiles'])
        assert lidar_run['output'].connections[topic].msgdef.data   # definition stored


def test_summary_reports_counts_anchors_and_scale(lidar_run):
    text = lidar_run['out']
    assert 'processed:   4' in text and 'skipped:     0' in text
    assert '4 of 4 frames had anchors' in text
    assert 'scale range:' in text and 'wall time:' in text


# ---------------------------------------------------------------------- stereo, sqlite3, jpeg
def test_sqlite3_compressed_images_with_stereo_anchors(tmp_path, tiny_checkpoint, capsys):
    spec = SyntheticBagSpec(frames=3, width=320, height=240, compressed=True, stereo=True,
                            lidar=False)
    _, truth = write_synthetic_bag(tmp_path / 'in', spec, storage='sqlite3')
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                          '--device', 'cpu', '--processing-res', '128',
                          '--stereo-depth-topic', '/stereo/depth', '--storage', 'sqlite3',
                          '--no-publish-colorized', '--bag-version', '9'], capsys)
    assert code == 0, err
    assert 'image /camera/image_raw/compressed' in err
    contents = BagContents(tmp_path / 'out')
    assert (contents.metadata['storage_identifier'], contents.metadata['version']) == (
        'sqlite3', 9)
    for entry in contents.metadata['topics_with_message_count']:
        raw = entry['topic_metadata']['offered_qos_profiles']
        assert isinstance(raw, list)              # version 9: QoS as a YAML list
        assert_publisher_qos(raw)
    assert set(contents.connections) == {OUT['depth'], OUT['camera_info'], OUT['points']}
    assert all(len(contents.raw[t]) == spec.frames for t in contents.connections)
    errors = relative_errors(contents, truth)
    assert max(errors) < 0.10, errors


def test_lidar_extrinsic_from_the_bag_tf_static(tmp_path, tiny_checkpoint, capsys):
    """lidar_use_tf (the default): the camera <- LiDAR chain comes from the bag's /tf_static,
    as the node would get it from tf2; no extrinsic parameters are given."""
    spec = SyntheticBagSpec(frames=2, width=320, height=240, lidar_lines=32,
                            lidar_columns=1024, tf_static=True)
    _, truth = write_synthetic_bag(tmp_path / 'in', spec)
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                          '--device', 'cpu', '--processing-res', '128',
                          '--lidar-topic', '/lidar/points'], capsys)
    assert code == 0, err
    assert 'LiDAR extrinsic from the bag /tf_static' in err
    errors = relative_errors(BagContents(tmp_path / 'out'), truth)
    assert max(errors) < 0.10, errors


def test_without_camera_info_depth_is_still_written_for_every_frame(tmp_path, tiny_checkpoint,
                                                                    capsys):
    spec = SyntheticBagSpec(frames=3, lidar=False, camera_info=False)
    write_synthetic_bag(tmp_path / 'in', spec)
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                          '--device', 'cpu', '--processing-res', '64'], capsys)
    assert code == 0, err
    contents = BagContents(tmp_path / 'out')
    assert len(contents.raw[OUT['depth']]) == spec.frames
    # No intrinsics: no cloud and no depth camera_info (the node publishes none either).
    assert OUT['points'] not in contents.raw and OUT['camera_info'] not in contents.raw
    assert 'no camera_info' in err and '3  no camera_info within the age limit' in out


# ---------------------------------------------------------------------- selection and safety
def test_start_end_stride_corrupt_message_and_overwrite(tmp_path, tiny_checkpoint, capsys):
    spec = SyntheticBagSpec(frames=10, lidar=False, corrupt_images=(4,))
    write_synthetic_bag(tmp_path / 'in', spec, storage='mcap')
    write_synthetic_bag(tmp_path / 'out', SyntheticBagSpec(frames=1))     # an older output
    # Bag start = first camera_info (1 ms after the first stamp); images are recorded 5 ms
    # after their stamps, every 100 ms: 0.15..0.75 s holds images 2..7, stride 2 keeps 2, 4, 6.
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                          '--device', 'cpu', '--processing-res', '64', '--start', '0.15',
                          '--end', '0.75', '--stride', '2', '--overwrite'], capsys)
    assert code == 0, err
    contents = BagContents(tmp_path / 'out')
    depth_times = [t - spec.start_ns for t, _ in contents.raw[OUT['depth']]]
    assert depth_times == [205 * MS, 605 * MS]          # image 4 is corrupt: skipped, counted
    assert '/camera/image_raw' not in contents.raw      # the old output is gone
    assert '6 images in the window, 3 selected' in out
    assert 'processed:   2' in out and 'skipped:     1' in out
    assert 'corrupt messages skipped: /camera/image_raw 1' in out


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys):
    write_synthetic_bag(tmp_path / 'in', SyntheticBagSpec(frames=1))
    write_synthetic_bag(tmp_path / 'out', SyntheticBagSpec(frames=1))
    before = (tmp_path / 'out' / 'metadata.yaml').read_text()
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', 'unused'], capsys)
    assert code == 1 and '--overwrite' in err
    assert (tmp_path / 'out' / 'metadata.yaml').read_text() == before


def test_ambiguous_topics_error_lists_candidates(tmp_path, capsys):
    write_synthetic_bag(tmp_path / 'in', SyntheticBagSpec(frames=1, extra_camera=True))
    code, out, err = run([tmp_path / 'in', tmp_path / 'out', '--model', 'unused'], capsys)
    assert code == 1
    assert '/camera/image_raw' in err and '/rear/image_raw' in err and '--image-topic' in err
    assert 'Traceback' not in err and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('make_input', ['missing', 'garbage'])
def test_unreadable_input_is_one_clear_error(tmp_path, capsys, make_input):
    path = tmp_path / 'in.mcap'
    if make_input == 'garbage':
        path.write_bytes(b'\x00' * 64)
    code, out, err = run([path, tmp_path / 'out', '--model', 'unused'], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('process_bag: error:'), err
    assert not (tmp_path / 'out').exists()


def test_bad_parameters_and_missing_model_are_refused(tmp_path, capsys):
    write_synthetic_bag(tmp_path / 'in', SyntheticBagSpec(frames=1))
    code, _, err = run([tmp_path / 'in', tmp_path / 'o1', '--model', 'x', '-p',
                        'max_range:=-3'], capsys)
    assert code == 1 and "max_range" in err
    code, _, err = run([tmp_path / 'in', tmp_path / 'o2', '--model', tmp_path / 'nope',
                        '--device', 'cpu'], capsys)
    assert code == 1 and 'process_bag: error:' in err and 'Traceback' not in err
    assert not (tmp_path / 'o2').exists()


# ---------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_finishes_the_frame_and_leaves_a_valid_bag_without_ros(tmp_path, tiny_checkpoint):
    import os
    import re
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    frames = 3000       # far more than even a fast machine processes before the interrupt
    write_synthetic_bag(tmp_path / 'in', SyntheticBagSpec(frames=frames, width=64, height=48,
                                                          lidar=False, distinct_scenes=3))
    root = Path(__file__).resolve().parents[1]
    # ROS Python packages are made unimportable: process_bag must work with rosbags alone.
    no_ros = ("import sys; sys.modules.update(rclpy=None, sensor_msgs=None); "
              "from fiffdepth_ros.bag.process_bag import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, '-c', no_ros, str(tmp_path / 'in'),
         str(tmp_path / 'out'), '--model', str(tiny_checkpoint), '--device', 'cpu',
         '--processing-res', '32', '--copy-input'],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(root)))
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(
        lambda: os.read(proc.stderr.fileno(), 4096), b'')), daemon=True)
    reader.start()

    def frames_done() -> int:
        # The progress bar ('12/1000') goes to stderr, refreshed every 2 s off a terminal.
        found = re.findall(rb'(\d+)/%d' % frames, b''.join(err_chunks))
        return int(found[-1]) if found else 0
    try:
        while frames_done() < 2:
            assert proc.poll() is None, b''.join(err_chunks).decode(errors='replace')
            threading.Event().wait(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    err = b''.join(err_chunks).decode(errors='replace')
    assert proc.returncode == 130, err
    assert 'INTERRUPTED' in stdout.decode()

    contents = BagContents(tmp_path / 'out')          # closed properly: readable, indexed
    counts = {name: len(contents.raw[topic]) for name, topic in OUT.items()
              if topic in contents.raw}
    done = counts['depth']
    assert 2 <= done < frames and set(counts.values()) == {done}, counts   # whole frames only
    assert contents.metadata['message_count'] == sum(len(v) for v in contents.raw.values())
    # Copies end where processing stopped: the output is a consistent prefix of the input.
    images = [t for t, _ in contents.raw['/camera/image_raw']]
    assert [t for t, _ in contents.raw[OUT['depth']]] == images[:done]
    assert len(images) < frames
