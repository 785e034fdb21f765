"""process_bag on the recordings robots really have: ROS 1 bags (one file or several), topic names
without a leading slash, camera_info that is off-stamp or recorded once, and no camera_info at all
(a calibration file instead). The bags are written here with rosbags; the model is the tiny one."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.convert.converter import convert
from rosbags.rosbag1 import Reader as Ros1Reader
from rosbags.typesys import Stores, get_typestore

from fiffdepth_ros.bag.process_bag import main
from fiffdepth_ros.bag.reader import BagReader, normalize_topic
from fiffdepth_ros.bag.synthetic import (CAMERA_FRAME, SyntheticBagSpec, lidar_extrinsic_params,
                                         write_synthetic_bag)
from fiffdepth_ros.bag.writer import BagWriter, publisher_qos
from fiffdepth_ros.conversions.backends import RosbagsBackend, stamp_to_ns
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.conversions.images import image_msg_to_depth
from fiffdepth_ros.demo.scene import SyntheticRoom

BACKEND = RosbagsBackend()
TYPESTORE = BACKEND.typestore
MS = 1_000_000


def run(argv, capsys):
    code = main([str(a) for a in argv] + ['--no-progress'])
    out, err = capsys.readouterr()
    return code, out, err


def read_bag(path):
    """topic -> [(bag time, message)] of a rosbag2 output."""
    out = {}
    with BagReader(path) as reader:
        for raw in reader.messages():
            out.setdefault(raw.topic, []).append(
                (raw.bag_time_ns, TYPESTORE.deserialize_cdr(raw.data, raw.msgtype)))
    return out


def median_relative_error(depth_msg, truth):
    depth = image_msg_to_depth(depth_msg)
    valid = np.isfinite(depth)
    assert valid.mean() > 0.9
    return float(np.median(np.abs(depth[valid] - truth[valid]) / truth[valid]))


def to_ros1(src: Path, dst: Path) -> None:
    """rosbag2 -> ROS 1 .bag with ROS 1 (noetic) message definitions, as a ROS 1 recorder
    would have written them (CameraInfo's D/K/R/P, Header with seq)."""
    convert([src], dst, 'mcap', 8, None, 'file', None, get_typestore(Stores.ROS1_NOETIC),
            [], [], [], [])


# ---------------------------------------------------------------------- ROS 1
@pytest.fixture(scope='module')
def ros1_recording(tmp_path_factory):
    """One recording in two ROS 1 files: raw and compressed images, camera_info, a LiDAR cloud
    and /tf_static in the first file."""
    tmp = tmp_path_factory.mktemp('ros1')
    truth, room = [], None
    start = 1_700_000_000 * 10**9
    for part, frames in enumerate((3, 3)):
        spec = SyntheticBagSpec(frames=frames, width=320, height=240, both_image_kinds=True,
                                lidar_lines=32, lidar_columns=1024, tf_static=part == 0,
                                start_ns=start + part * 3 * 100 * MS)
        room, part_truth = write_synthetic_bag(tmp / f'part{part}', spec)
        truth += part_truth
        to_ros1(tmp / f'part{part}', tmp / f'part{part}.bag')
    return tmp, [tmp / 'part0.bag', tmp / 'part1.bag'], room, truth


def test_ros1_files_hold_ros1_definitions(ros1_recording):
    _, files, _, _ = ros1_recording
    with Ros1Reader(files[0]) as reader:
        defs = {c.topic: c.msgdef.data for c in reader.connections}
    assert 'float64[9] K' in defs['/camera/camera_info']
    assert 'uint32 seq' in defs['/camera/image_raw'] or 'Header header' in defs[
        '/camera/image_raw']


def test_ros1_bags_read_as_ros2_messages(ros1_recording):
    _, files, room, _ = ros1_recording
    with BagReader(files) as reader:
        topics = reader.topics()
        assert topics['/camera/image_raw'].count == 6
        assert topics['/camera/image_raw/compressed'].msgtype == 'sensor_msgs/msg/CompressedImage'
        assert topics['/tf_static'].msgtype == 'tf2_msgs/msg/TFMessage'
        infos = [TYPESTORE.deserialize_cdr(m.data, m.msgtype)
                 for m in reader.messages(['/camera/camera_info'])]
    assert len(infos) == 6
    np.testing.assert_allclose(infos[0].k, room.camera_info_fields()['k'])
    assert infos[0].header.frame_id == CAMERA_FRAME and infos[0].width == 320


@pytest.mark.parametrize('transport', ['raw', 'compressed'])
def test_ros1_recording_processed_end_to_end(ros1_recording, tiny_checkpoint, capsys, transport):
    tmp, files, room, truth = ros1_recording
    out = tmp / f'out_{transport}'
    params = dict(lidar_extrinsic_params(room), processing_res=128, device='cpu',
                  image_transport=transport)
    (tmp / f'{transport}.yaml').write_text(yaml.safe_dump(params))
    code, printed, err = run([*files, out, '--model', tiny_checkpoint, '--params',
                              tmp / f'{transport}.yaml', '--lidar-topic', '/lidar/points',
                              '--copy-input'], capsys)
    assert code == 0, err
    got = read_bag(out)
    depth = got['/camera/depth/image']
    assert len(depth) == 6 and len(got['/camera/depth/camera_info']) == 6
    assert len(got['/camera/depth/points']) == 6
    stamps = [stamp_to_ns(m.header.stamp) for _, m in depth]
    assert stamps == sorted(stamps) and len(set(stamps)) == 6
    # Metric through the LiDAR anchors of both files (a random model carries no depth).
    errors = [median_relative_error(m, t) for (_, m), t in zip(depth, truth)]
    assert np.median(errors) < 0.08, errors
    # Copies are ROS 2 messages with ROS 2 definitions: CameraInfo's k, no header seq.
    info = got['/camera/camera_info'][0][1]
    np.testing.assert_allclose(info.k, room.camera_info_fields()['k'])
    with BagReader(out) as reader:
        conns = {c.topic: c for c in reader.connections}
    assert 'float64[9] k' in conns['/camera/camera_info'].msgdef.data
    assert conns['/camera/camera_info'].digest.startswith('RIHS01_')
    assert 'metric frames 6 (100%)' in printed


# ---------------------------------------------------------------------- names without a slash
def test_slash_less_topic_names_find_the_camera_info_of_the_image(tmp_path, tiny_checkpoint,
                                                                  capsys):
    spec = SyntheticBagSpec(frames=2, compressed=True, lidar=False,
                            namespace='raspicam_node/camera')
    write_synthetic_bag(tmp_path / 'in', spec)
    with BagReader(tmp_path / 'in') as reader:
        raw_names = {c.topic for c in reader.connections}
        assert 'raspicam_node/camera/camera_info' in raw_names       # as ROS 1 converters write
        assert '/raspicam_node/camera/camera_info' in reader.topics()
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '-p', 'processing_res:=64', '-p', 'device:=cpu'], capsys)
    assert code == 0, err
    assert 'camera_info /raspicam_node/camera/camera_info' in err
    got = read_bag(tmp_path / 'out')
    assert len(got['/raspicam_node/camera/depth/image']) == 2
    assert len(got['/raspicam_node/camera/depth/points']) == 2
    # A flag given without the slash names the same topic.
    code, _, err = run([tmp_path / 'in', tmp_path / 'out2', '--model', tiny_checkpoint,
                        '-p', 'processing_res:=64', '--image-topic',
                        'raspicam_node/camera/image_raw/compressed'], capsys)
    assert code == 0, err


def test_normalize_topic():
    assert normalize_topic('a/b') == normalize_topic('/a/b') == '/a/b'
    assert normalize_topic('//a') == '/a'


# ---------------------------------------------------------------------- off-stamp camera_info
def _camera_bag(path, image_stamps, info_stamps, room, frame_id=CAMERA_FRAME, width=None):
    """Images and camera_info recorded at their stamps (bag time = stamp)."""
    writer = BagWriter(path, TYPESTORE)
    qos = publisher_qos()
    writer.add_topic('/cam/image_raw', 'sensor_msgs/msg/Image', qos)
    writer.add_topic('/cam/camera_info', 'sensor_msgs/msg/CameraInfo', qos)
    frame = room.render()
    items = [(t, '/cam/image_raw', rgb_to_image_msg(frame.rgb, BACKEND.header(t, CAMERA_FRAME),
                                                    BACKEND)) for t in image_stamps]
    fields = dict(room.camera_info_fields())
    if width:
        fields['width'] = width
    items += [(t, '/cam/camera_info', BACKEND.camera_info(BACKEND.header(t, frame_id), **fields))
              for t in info_stamps]
    for t, topic, msg in sorted(items, key=lambda x: x[0]):
        writer.write(topic, t, msg)
    writer.close()


def test_image_stamped_before_the_first_camera_info_gets_it(tmp_path, tiny_checkpoint, capsys):
    """The Raspberry Pi recording: the only image 0.46 s before the first camera_info."""
    room = SyntheticRoom(160, 120)
    t0 = 1_700_000_000 * 10**9
    _camera_bag(tmp_path / 'in', [t0], [t0 + 460 * MS, t0 + 1460 * MS], room)
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '-p', 'processing_res:=64'], capsys)
    assert code == 0, err
    got = read_bag(tmp_path / 'out')
    (_, info), = got['/cam/depth/camera_info']
    assert stamp_to_ns(info.header.stamp) == t0           # under the image's header
    np.testing.assert_allclose(info.k, room.camera_info_fields()['k'])
    assert len(got['/cam/depth/points']) == 1
    assert 'using its latest camera_info' in printed
    assert 'no camera_info within the age limit' not in printed


def test_latched_camera_info_serves_every_later_image(tmp_path, tiny_checkpoint, capsys):
    room = SyntheticRoom(160, 120)
    t0 = 1_700_000_000 * 10**9
    stamps = [t0 + i * 500 * MS for i in range(1, 7)]              # 0.5 .. 3 s after it
    _camera_bag(tmp_path / 'in', stamps, [t0], room)
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '-p', 'processing_res:=64'], capsys)
    assert code == 0, err
    got = read_bag(tmp_path / 'out')
    assert [stamp_to_ns(m.header.stamp) for _, m in got['/cam/depth/camera_info']] == stamps
    assert len(got['/cam/depth/points']) == 6
    # Said once, not per frame.
    assert printed.count('using its latest camera_info') == 1
    assert '1  camera ' in printed


def test_another_cameras_or_sizes_camera_info_is_not_taken(tmp_path, tiny_checkpoint, capsys):
    room = SyntheticRoom(160, 120)
    t0 = 1_700_000_000 * 10**9
    _camera_bag(tmp_path / 'in', [t0 + 1000 * MS], [t0], room, width=320)     # other size
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '-p', 'processing_res:=64'], capsys)
    assert code == 0, err
    got = read_bag(tmp_path / 'out')
    assert '/cam/depth/camera_info' not in got or not got['/cam/depth/camera_info']
    assert len(got['/cam/depth/image']) == 1
    assert 'no camera_info within the age limit' in printed


# ---------------------------------------------------------------------- calibration file
CALIBRATION = """image_width: 320
image_height: 240
camera_name: spot_frontleft
camera_matrix:
  rows: 3
  cols: 3
  data: [{fx}, 0, {cx}, 0, {fy}, {cy}, 0, 0, 1]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0, 0, 0, 0, 0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [{fx}, 0, {cx}, 0, 0, {fy}, {cy}, 0, 0, 0, 1, 0]
"""


def calibration_text(room):
    k = np.asarray(room.camera_info_fields()['k']).reshape(3, 3)
    return CALIBRATION.format(fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2])


def test_bag_without_camera_info_uses_the_calibration_file(tmp_path, tiny_checkpoint, capsys):
    """The Spot recording: images and LiDAR, no camera_info; intrinsics from camera_info_url."""
    spec = SyntheticBagSpec(frames=3, width=320, height=240, camera_info=False, lidar_lines=32,
                            lidar_columns=1024)
    room, truth = write_synthetic_bag(tmp_path / 'in', spec)
    (tmp_path / 'cal.yaml').write_text(calibration_text(room))
    params = dict(lidar_extrinsic_params(room), processing_res=128,
                  camera_info_url=f"file://{tmp_path / 'cal.yaml'}")
    (tmp_path / 'p.yaml').write_text(yaml.safe_dump(params))
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '--params', tmp_path / 'p.yaml', '--lidar-topic', '/lidar/points'],
                             capsys)
    assert code == 0, err
    got = read_bag(tmp_path / 'out')
    infos = got['/camera/depth/camera_info']
    assert len(infos) == 3 and infos[0][1].header.frame_id == CAMERA_FRAME
    np.testing.assert_allclose(infos[0][1].k, room.camera_info_fields()['k'])
    assert len(got['/camera/depth/points']) == 3
    errors = [median_relative_error(m, t) for (_, m), t in zip(got['/camera/depth/image'], truth)]
    assert np.median(errors) < 0.08, errors
    assert printed.count('using the calibration file') == 1


def test_without_camera_info_and_calibration_lidar_frames_are_withheld(tmp_path, tiny_checkpoint,
                                                                      capsys):
    spec = SyntheticBagSpec(frames=2, camera_info=False)
    room, _ = write_synthetic_bag(tmp_path / 'in', spec)
    params = dict(lidar_extrinsic_params(room), processing_res=64)
    (tmp_path / 'p.yaml').write_text(yaml.safe_dump(params))
    code, printed, err = run([tmp_path / 'in', tmp_path / 'out', '--model', tiny_checkpoint,
                              '--params', tmp_path / 'p.yaml', '--lidar-topic', '/lidar/points',
                              '--publish-relative'], capsys)
    assert code == 0, err
    got = read_bag(tmp_path / 'out')
    assert not got.get('/camera/depth/image') and len(got['/camera/depth/relative']) == 2
    assert 'withheld:    2 frames without a scale fit' in printed
