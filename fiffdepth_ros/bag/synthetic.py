"""Synthetic rosbag2 recordings of the SyntheticRoom with known metric truth.

For the bag tests and the throughput benchmark (no recorded data can be downloaded here): a
camera (raw or JPEG-compressed), its camera_info, a LiDAR sweep, a stereo depth image and
/tf_static, written with ``rosbags`` as a recorder would: bag time = header stamp plus a
per-sensor transport latency, so a LiDAR sweep may be recorded after the image it belongs to.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..conversions.backends import RosbagsBackend
from ..conversions.depth_image import depth_to_image_msg, rgb_to_image_msg
from ..conversions.pointcloud import xyz_to_pointcloud
from ..demo.scene import SyntheticRoom
from ..geometry.transforms import RigidTransform
from .writer import BagWriter, publisher_qos

CAMERA_FRAME = 'camera_optical'
LIDAR_FRAME = 'lidar'


@dataclass
class SyntheticBagSpec:
    frames: int = 5
    width: int = 160
    height: int = 120
    rate_hz: float = 10.0
    start_ns: int = 1_700_000_000 * 1_000_000_000
    compressed: bool = False          # camera as CompressedImage (jpeg) instead of Image
    both_image_kinds: bool = False    # raw and compressed of the same camera
    camera_info: bool = True
    lidar: bool = True
    lidar_lines: int = 16
    lidar_columns: int = 512
    lidar_latency_s: float = 0.03     # recorded this long after its stamp (after the image)
    lidar_offset_s: float = 0.01      # sweep stamped this long after the image
    stereo: bool = False
    tf_static: bool = False
    extra_camera: bool = False        # a second camera stream (makes the choice ambiguous)
    distinct_scenes: int = 0          # >0: render this many poses and cycle (fast big bags)
    corrupt_images: tuple = ()        # frame indices whose image message is cut in half
    namespace: str = '/camera'


def write_synthetic_bag(path: str | Path, spec: SyntheticBagSpec = SyntheticBagSpec(),
                        storage: str = 'mcap'):
    """Write the bag; returns (room, truth): truth[i] is frame i's metric depth (HxW)."""
    backend = RosbagsBackend()
    room = SyntheticRoom(spec.width, spec.height, lidar_lines=spec.lidar_lines,
                         lidar_columns=spec.lidar_columns)
    ns = spec.namespace.rstrip('/')
    image_topic = f'{ns}/image_raw'
    qos = publisher_qos('reliable', 10)
    writer = BagWriter(path, backend.typestore, storage=storage)
    topics = []
    if not spec.compressed or spec.both_image_kinds:
        topics.append((image_topic, 'sensor_msgs/msg/Image'))
    if spec.compressed or spec.both_image_kinds:
        topics.append((f'{image_topic}/compressed', 'sensor_msgs/msg/CompressedImage'))
    if spec.camera_info:
        topics.append((f'{ns}/camera_info', 'sensor_msgs/msg/CameraInfo'))
    if spec.lidar:
        topics.append(('/lidar/points', 'sensor_msgs/msg/PointCloud2'))
    if spec.stereo:
        topics.append(('/stereo/depth', 'sensor_msgs/msg/Image'))
    if spec.tf_static:
        topics.append(('/tf_static', 'tf2_msgs/msg/TFMessage'))
    if spec.extra_camera:
        topics.append(('/rear/image_raw', 'sensor_msgs/msg/Image'))
    for topic, msgtype in topics:
        writer.add_topic(topic, msgtype, qos)

    pending = []           # (bag time, topic, message), written in bag-time order
    if spec.tf_static:
        pending.append((spec.start_ns - 1, '/tf_static', _tf_message(backend, room, spec)))
    truth, cache = [], {}
    period_ns = int(1e9 / spec.rate_hz)
    try:
        for i in range(spec.frames):
            stamp = spec.start_ns + i * period_ns
            # Everything of later frames is recorded at or after its stamp: flush what is older.
            _flush(writer, pending, before_ns=stamp)
            key = i % spec.distinct_scenes if spec.distinct_scenes else i
            if key not in cache:
                cache[key] = room.render(t=key / spec.rate_hz)
            frame = cache[key]
            truth.append(frame.depth)
            pending.extend(_frame_messages(backend, room, spec, topics, frame, i, stamp))
        _flush(writer, pending, before_ns=None)
    finally:
        writer.close()
    return room, truth


def _frame_messages(backend, room, spec, topics, frame, i: int, stamp: int) -> list:
    ns = spec.namespace.rstrip('/')
    header = backend.header(stamp, CAMERA_FRAME)
    out = []
    for topic, msgtype in topics:
        if msgtype == 'sensor_msgs/msg/Image' and topic.endswith('image_raw'):
            msg = rgb_to_image_msg(frame.rgb, header, backend)
        elif msgtype == 'sensor_msgs/msg/CompressedImage':
            msg = _jpeg(frame.rgb, header, backend)
        else:
            continue
        if i in spec.corrupt_images:       # a truncated message, as a broken disk leaves it
            data = bytes(backend.typestore.serialize_cdr(msg, msgtype))
            msg = data[:len(data) // 2]
        out.append((stamp + 5_000_000, topic, msg))
    if spec.camera_info:
        out.append((stamp + 1_000_000, f'{ns}/camera_info',
                    backend.camera_info(header, **room.camera_info_fields())))
    if spec.lidar:
        lidar_stamp = stamp + int(spec.lidar_offset_s * 1e9)
        cloud = xyz_to_pointcloud(frame.lidar_points, backend.header(lidar_stamp, LIDAR_FRAME),
                                  backend)
        out.append((lidar_stamp + int(spec.lidar_latency_s * 1e9), '/lidar/points', cloud))
    if spec.stereo:
        out.append((stamp + 8_000_000, '/stereo/depth',
                    depth_to_image_msg(frame.depth, header, backend, '32FC1')))
    return out


def _flush(writer: BagWriter, pending: list, before_ns: int | None) -> None:
    pending.sort(key=lambda m: m[0])
    keep = [m for m in pending if before_ns is not None and m[0] >= before_ns]
    for bag_time, topic, msg in pending[:len(pending) - len(keep)]:
        if isinstance(msg, bytes):
            writer.write_serialized(topic, bag_time, msg)
        else:
            writer.write(topic, bag_time, msg)
    pending[:] = keep


def lidar_extrinsic_params(room: SyntheticRoom) -> dict:
    """The room's camera <- LiDAR extrinsic as node parameters (no tf)."""
    t = room.camera_from_lidar.translation
    q = room.camera_from_lidar.quaternion
    return {'use_lidar': True, 'lidar_use_tf': False,
            'lidar_translation': [float(v) for v in t], 'lidar_rotation': [float(v) for v in q],
            'lidar_parent_frame': CAMERA_FRAME, 'lidar_child_frame': LIDAR_FRAME}


def _jpeg(rgb: np.ndarray, header, backend):
    import cv2
    ok, data = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return backend.compressed_image(header, 'jpeg', data)


def _tf_message(backend, room: SyntheticRoom, spec: SyntheticBagSpec):
    """/tf_static: base_link -> camera_optical and base_link -> lidar (a chain to compose)."""
    types = backend.typestore.types
    Vec, Quat = types['geometry_msgs/msg/Vector3'], types['geometry_msgs/msg/Quaternion']
    Tf, Stamped = types['geometry_msgs/msg/Transform'], types['geometry_msgs/msg/TransformStamped']

    def stamped(parent, child, transform):
        t, q = transform.translation, transform.quaternion
        return Stamped(header=backend.header(spec.start_ns, parent), child_frame_id=child,
                       transform=Tf(translation=Vec(x=t[0], y=t[1], z=t[2]),
                                    rotation=Quat(x=q[0], y=q[1], z=q[2], w=q[3])))
    # The camera 0.2 m ahead of and 1 m above base_link, in the optical orientation; the tree
    # must compose camera_from_lidar = inverse(base_from_camera) @ base_from_lidar.
    base_from_camera = RigidTransform(np.array([0.2, 0.0, 1.0]),
                                      np.array([-0.5, 0.5, -0.5, 0.5]))
    base_from_lidar = base_from_camera @ room.camera_from_lidar
    return types['tf2_msgs/msg/TFMessage'](transforms=[
        stamped('base_link', CAMERA_FRAME, base_from_camera),
        stamped('base_link', LIDAR_FRAME, base_from_lidar)])
