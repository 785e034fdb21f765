"""Bag reading, writing, frame matching and extrinsics of process_bag (no model needed)."""
import numpy as np
import pytest
import yaml
from rosbags.interfaces import QosDurability, QosHistory, QosReliability
from rosbags.rosbag2.metadata import parse_qos

from fiffdepth_ros.bag.frames import CopyItem, FrameItem, FrameSource, SkipItem, Window
from fiffdepth_ros.bag.reader import BagReader, BagReadError
from fiffdepth_ros.bag.synthetic import (CAMERA_FRAME, LIDAR_FRAME, SyntheticBagSpec,
                                         write_synthetic_bag)
from fiffdepth_ros.bag.tf_static import BagExtrinsics, read_static_tf
from fiffdepth_ros.bag.topics import choose_topics
from fiffdepth_ros.bag.writer import BagWriteError, check_output
from fiffdepth_ros.conversions.backends import RosbagsBackend, stamp_to_ns
from fiffdepth_ros.pipeline import StaticExtrinsic
from fiffdepth_ros.geometry.transforms import RigidTransform
from fiffdepth_ros.sync import FrameAssembler

TYPESTORE = RosbagsBackend().typestore
MS = 1_000_000


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / 'bag'
    spec = SyntheticBagSpec(frames=6, stereo=True, tf_static=True, corrupt_images=(3,))
    room, truth = write_synthetic_bag(path, spec, storage=request.param)
    return path, spec, room, request.param


def _source(path, spec, window=Window(), copy_input=False, max_age=0.1):
    reader = BagReader(path)
    types = {t: s.msgtype for t, s in reader.topics().items()}
    choice = choose_topics(types, lidar='/lidar/points', stereo='/stereo/depth')
    assembler = FrameAssembler(max_age, use_lidar=True, use_stereo=True)
    return reader, FrameSource(reader, choice, TYPESTORE, assembler, window,
                               companion_wait_s=0.1, copy_input=copy_input)


def test_written_bag_reads_back_with_types_counts_order_and_metadata(bag):
    path, spec, _, storage = bag
    with BagReader(path) as reader:
        topics = reader.topics()
        assert topics['/camera/image_raw'].msgtype == 'sensor_msgs/msg/Image'
        assert topics['/camera/image_raw'].count == spec.frames
        assert topics['/lidar/points'].count == spec.frames
        assert topics['/tf_static'].count == 1
        times = [m.bag_time_ns for m in reader.messages()]
        assert times == sorted(times) and len(times) == reader.message_count
        # Every connection carries its message definition (what ros2 bag play needs).
        assert all(c.msgdef.data and c.digest.startswith('RIHS01_') for c in reader.connections)
        start = reader.start_ns
        window = [m for m in reader.messages(['/camera/image_raw'], start + 150 * MS,
                                              start + 350 * MS)]
        assert [m.bag_time_ns - spec.start_ns for m in window] == [205 * MS, 305 * MS]
    meta = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == storage and meta['version'] == 8
    for entry in meta['topics_with_message_count']:
        # Version 8: QoS as a YAML string (what ros2 bag before Jazzy parses).
        raw = entry['topic_metadata']['offered_qos_profiles']
        assert isinstance(raw, str)
        qos = parse_qos(raw)[0]
        assert (qos.reliability, qos.history, qos.durability) == (
            QosReliability.RELIABLE, QosHistory.KEEP_LAST, QosDurability.VOLATILE)


def test_lookahead_matches_the_nearest_sweep_even_when_recorded_after_the_image(bag):
    path, spec, _, _ = bag
    reader, source = _source(path, spec)
    with reader:
        items = list(source)
    frames = [i for i in items if isinstance(i, FrameItem)]
    skips = [i for i in items if isinstance(i, SkipItem)]
    assert len(frames) == spec.frames - 1 and len(skips) == 1
    assert 'corrupt' in skips[0].reason
    assert source.stats.corrupt == {'/camera/image_raw': 1}
    for f in frames:
        image_stamp = stamp_to_ns(f.inputs.image.header.stamp)
        # The sweep stamped 10 ms after the image (recorded 40 ms after it), not the one
        # stamped 90 ms before it that was already there when the image was read.
        assert stamp_to_ns(f.inputs.lidar.header.stamp) == image_stamp + 10 * MS
        assert stamp_to_ns(f.inputs.camera_info.header.stamp) == image_stamp
        assert stamp_to_ns(f.inputs.stereo.header.stamp) == image_stamp
        assert f.inputs.notes == []
    # Frames come out in bag order, the skipped one in its place.
    order = [i.bag_time_ns for i in items]
    assert order == sorted(order)


def test_window_and_stride_select_images_and_copies_stay_in_time_order(bag):
    path, spec, _, _ = bag
    with BagReader(path) as reader:
        start = reader.start_ns
    window = Window(start + 150 * MS, start + 420 * MS, stride=2)
    reader, source = _source(path, spec, window, copy_input=True)
    with reader:
        items = list(source)
    frames = [i for i in items if isinstance(i, (FrameItem, SkipItem))]
    # Images at 205, 305 (corrupt), 405 ms are in the window; stride 2 keeps 205 and 405.
    assert source.stats.images_in_window == 3 and source.stats.selected == 2
    assert [f.bag_time_ns - spec.start_ns for f in frames] == [205 * MS, 405 * MS]
    copies = [i.raw for i in items if isinstance(i, CopyItem)]
    assert copies and all(window.contains(c.bag_time_ns) for c in copies)
    times = [i.raw.bag_time_ns if isinstance(i, CopyItem) else i.bag_time_ns for i in items]
    assert times == sorted(times)
    # The sweep of the last image (stamped 410 ms, recorded at 440 ms, after the window's end)
    # is still matched: companions are read ahead beyond the window.
    last = [f for f in frames if isinstance(f, FrameItem)][-1]
    assert stamp_to_ns(last.inputs.lidar.header.stamp) == spec.start_ns + 410 * MS


def test_static_tf_of_the_bag_gives_the_camera_from_lidar_extrinsic(bag):
    path, spec, room, _ = bag
    with BagReader(path) as reader:
        tree, bad = read_static_tf(reader, TYPESTORE)
    assert bad == 0 and len(tree) == 2
    lookup = BagExtrinsics(StaticExtrinsic(RigidTransform.identity()), tree)
    got = lookup(CAMERA_FRAME, LIDAR_FRAME, 0)
    np.testing.assert_allclose(got.matrix, room.camera_from_lidar.matrix, atol=1e-9)
    np.testing.assert_allclose(lookup(LIDAR_FRAME, CAMERA_FRAME, 0).matrix,
                               np.linalg.inv(room.camera_from_lidar.matrix), atol=1e-9)
    # Unknown frames and no static fallback naming its frames: refused, not identity.
    with pytest.raises(LookupError, match='lidar_parent_frame'):
        lookup(CAMERA_FRAME, 'other_lidar', 0)


@pytest.mark.parametrize('name, content, expected', [
    ('missing', None, 'does not exist'),
    ('folder', 'dir', 'no metadata.yaml'),
    ('notes.txt', b'hello', 'expected a rosbag2 folder'),
    ('garbage.bag', b'not a ROS 1 bag', 'cannot read ROS 1 input'),
    ('garbage.mcap', b'not an mcap file at all', 'cannot read input bag'),
    ('empty.db3', b'', 'cannot read input bag'),
])
def test_unreadable_input_is_one_clear_error(tmp_path, name, content, expected):
    path = tmp_path / name
    if content == 'dir':
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(BagReadError, match=expected):
        BagReader(path)


def test_truncated_mcap_error_says_how_to_repair(tmp_path):
    write_synthetic_bag(tmp_path / 'bag', SyntheticBagSpec(frames=2))
    mcap = tmp_path / 'bag' / 'bag.mcap'
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])
    with pytest.raises(BagReadError, match='truncated'):
        BagReader(tmp_path / 'bag')


def test_output_checks_refuse_to_lose_data(tmp_path):
    src = tmp_path / 'in'
    write_synthetic_bag(src, SyntheticBagSpec(frames=1))
    existing = tmp_path / 'old'
    write_synthetic_bag(existing, SyntheticBagSpec(frames=1))
    with pytest.raises(BagWriteError, match='--overwrite'):
        check_output(existing, False, src)
    assert check_output(existing, True, src) == existing          # a bag: may be replaced
    (tmp_path / 'notabag').mkdir()
    (tmp_path / 'notabag' / 'thesis.tex').write_text('precious')
    with pytest.raises(BagWriteError, match='not a rosbag2 bag'):
        check_output(tmp_path / 'notabag', True, src)
    with pytest.raises(BagWriteError, match='replace the input'):
        check_output(src, True, src)
    with pytest.raises(BagWriteError, match='bag folder'):
        check_output(tmp_path / 'out.mcap', False, src)
    assert check_output(tmp_path / 'new', False, src) == tmp_path / 'new'


def test_damage_in_the_middle_ends_reading_with_what_came_before(tmp_path, monkeypatch):
    from rosbags.rosbag2.errors import ReaderError
    write_synthetic_bag(tmp_path / 'bag', SyntheticBagSpec(frames=3))
    with BagReader(tmp_path / 'bag') as reader:
        real = reader._reader.messages

        def damaged(*args, **kwargs):        # the storage fails after two good messages
            for i, message in enumerate(real(*args, **kwargs)):
                if i == 2:
                    raise ReaderError('Invalid message record length 3.')
                yield message
        monkeypatch.setattr(reader._reader, 'messages', damaged)
        got = list(reader.messages())
    assert len(got) == 2
    assert 'ends early' in reader.read_error and 'record length' in reader.read_error


def test_a_single_storage_file_reads_like_its_bag_folder(bag):
    path, spec, _, storage = bag
    single = path / ('bag.mcap' if storage == 'mcap' else 'bag.db3')
    with BagReader(path) as folder, BagReader(single) as file:
        assert {t: (s.msgtype, s.count) for t, s in file.topics().items()} == {
            t: (s.msgtype, s.count) for t, s in folder.topics().items()}
        assert [(m.topic, m.bag_time_ns, bytes(m.data)) for m in file.messages()] == [
            (m.topic, m.bag_time_ns, bytes(m.data)) for m in folder.messages()]
