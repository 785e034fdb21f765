"""Depth -> PointCloud2 (depth_image_proc layout) and LiDAR PointCloud2 -> points."""
import struct
from types import SimpleNamespace as NS
from unittest import mock

import numpy as np
import pytest

from fiffdepth_ros.conversions.backends import FLOAT32, FLOAT64, UINT16, UINT32
from fiffdepth_ros.conversions.pointcloud import (LIDAR_POINT_STEP, DepthCloudBuilder,
                                                  PointCloudError, pointcloud_to_xyz,
                                                  xyz_to_pointcloud)
from fiffdepth_ros.geometry.camera_model import CameraInfoError, CameraModel
from msg_factories import BACKEND_IDS, BACKENDS

CAM = CameraModel.pinhole(5, 4, 100.0, 110.0, 2.0, 1.5)
DEPTH = np.array([[1.0, 2.0, np.nan, 4.0, 5.0],
                  [1.5, 2.5, 3.5, np.inf, 5.5],
                  [0.05, 2.0, 3.0, 4.0, 50.0],
                  [1.0, -1.0, 1.0, 0.0, 1.0]], np.float32)
RGB = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)


def reference_bytes(depth, camera, rgb=None, min_range=0.0, max_range=np.inf, stride=1):
    """depth_image_proc's loop, one point at a time with struct."""
    fx, fy, cx, cy = camera.intrinsics
    out = bytearray()
    for v in range(0, depth.shape[0], stride):
        for u in range(0, depth.shape[1], stride):
            z = float(depth[v, u])
            if not (min_range <= z <= max_range) or z == float('inf'):
                x = y = z = float('nan')
            else:
                x, y = (u - cx) * z / fx, (v - cy) * z / fy
            out += struct.pack('<fff', x, y, z) + b'\0' * 4
            if rgb is not None:
                r, g, b = (int(c) for c in rgb[v, u])
                out += bytes([b, g, r, 0]) + b'\0' * 12
    return bytes(out)


def assert_same_cloud_bytes(got: bytes, want: bytes, point_step: int):
    got = np.frombuffer(got, np.uint8).reshape(-1, point_step)
    want = np.frombuffer(want, np.uint8).reshape(-1, point_step)
    assert got.shape == want.shape
    # Coordinates to float32 rounding (the reference computes in float64), NaN where invalid;
    # padding and colour bytes exactly.
    np.testing.assert_allclose(got[:, :12].copy().view('<f4'), want[:, :12].copy().view('<f4'),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[:, 12:], want[:, 12:])


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('with_rgb', [False, True], ids=['xyz', 'xyzrgb'])
def test_organised_cloud_is_byte_compatible_with_depth_image_proc(backend, with_rgb):
    rgb = RGB if with_rgb else None
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(9, 'cam'), backend, rgb=rgb,
                                    min_range=0.1, max_range=20.0)
    assert (msg.height, msg.width) == (4, 5) and not msg.is_dense and not msg.is_bigendian
    assert msg.point_step == (32 if with_rgb else 16) and msg.row_step == 5 * msg.point_step
    names = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    expected = [('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT32, 1)]
    assert names == expected + ([('rgb', 16, FLOAT32, 1)] if with_rgb else [])
    assert_same_cloud_bytes(bytes(msg.data), reference_bytes(DEPTH, CAM, rgb, 0.1, 20.0),
                            msg.point_step)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.nanosec == 9


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_default_range_keeps_zero_and_drops_negative_and_infinite_depth(backend):
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, 'c'), backend)
    assert_same_cloud_bytes(bytes(msg.data), reference_bytes(DEPTH, CAM), 16)
    z = np.frombuffer(bytes(msg.data), '<f4').reshape(4, 5, 4)[..., 2]
    assert z[3, 3] == 0.0 and np.isnan(z[[1, 3], [3, 1]]).all()


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_round_trip_depth_cloud_points(backend):
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, 'cam'), backend, rgb=RGB,
                                    min_range=0.1)
    xyz = pointcloud_to_xyz(msg)
    valid = np.isfinite(DEPTH) & (DEPTH >= 0.1)
    assert xyz.dtype == np.float32 and len(xyz) == valid.sum()
    np.testing.assert_array_equal(xyz[:, 2], DEPTH[valid])
    fx, fy, cx, cy = CAM.intrinsics
    vv, uu = np.nonzero(valid)
    np.testing.assert_allclose(xyz[:, 0], (uu - cx) * DEPTH[valid] / fx, rtol=1e-6)
    np.testing.assert_allclose(xyz[:, 1], (vv - cy) * DEPTH[valid] / fy, rtol=1e-6)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize('stride', [2, 3])
def test_stride_keeps_every_nth_row_and_column(backend, stride):
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, 'c'), backend, rgb=RGB,
                                    stride=stride)
    rows, cols = len(range(0, 4, stride)), len(range(0, 5, stride))
    assert (msg.height, msg.width, msg.row_step) == (rows, cols, cols * 32)
    assert_same_cloud_bytes(bytes(msg.data), reference_bytes(DEPTH, CAM, RGB, stride=stride), 32)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_unorganised_cloud_drops_invalid_points(backend):
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, 'c'), backend, rgb=RGB,
                                    max_range=4.2, organized=False)
    keep = np.isfinite(DEPTH) & (DEPTH >= 0) & (DEPTH <= 4.2)
    assert (msg.height, msg.width) == (1, keep.sum()) and msg.is_dense
    assert msg.row_step == msg.width * 32
    reference = np.frombuffer(reference_bytes(DEPTH, CAM, RGB, max_range=4.2), np.uint8)
    assert_same_cloud_bytes(bytes(msg.data), reference.reshape(-1, 32)[keep.ravel()].tobytes(),
                            32)
    empty = DepthCloudBuilder().build(np.full((4, 5), np.nan, np.float32), CAM,
                                      backend.header(1, 'c'), backend, organized=False)
    assert (empty.height, empty.width, len(bytes(empty.data))) == (1, 0, 0)
    assert pointcloud_to_xyz(empty).shape == (0, 3)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_messages_keep_their_bytes_when_the_builder_is_reused(backend):
    builder = DepthCloudBuilder()
    clouds = [builder.build(DEPTH, CAM, backend.header(1, 'c'), backend, rgb=RGB),
              builder.build(DEPTH, CAM, backend.header(1, 'c'), backend),
              builder.build(DEPTH, CAM, backend.header(1, 'c'), backend, organized=False)]
    before = [bytes(c.data) for c in clouds]
    for organized in (True, False):
        builder.build(DEPTH * 2, CAM, backend.header(2, 'c'), backend, rgb=RGB[::-1].copy(),
                      organized=organized)
        builder.build(DEPTH * 3, CAM, backend.header(2, 'c'), backend, organized=organized)
    assert [bytes(c.data) for c in clouds] == before


def test_rays_follow_a_changed_camera():
    builder, backend = DepthCloudBuilder(), BACKENDS[0]
    other = CameraModel.pinhole(5, 4, 50.0, 55.0, 2.5, 1.0)
    for camera in (CAM, other, CAM):
        msg = builder.build(DEPTH, camera, backend.header(1, 'c'), backend)
        assert_same_cloud_bytes(bytes(msg.data), reference_bytes(DEPTH, camera), 16)


def test_rays_are_computed_once_per_camera_key_and_stride():
    """Equal calibrations (a new CameraModel per camera_info message) share the cached rays."""
    builder, backend = DepthCloudBuilder(), BACKENDS[1]
    with mock.patch.object(CameraModel, 'rays', autospec=True,
                           side_effect=CameraModel.rays) as rays:
        for _ in range(3):
            same = CameraModel.pinhole(5, 4, 100.0, 110.0, 2.0, 1.5)      # equal key, new object
            msg = builder.build(DEPTH, same, backend.header(1, 'c'), backend)
        assert rays.call_count == 1
        builder.build(DEPTH, CAM, backend.header(1, 'c'), backend, stride=2)
        assert rays.call_count == 2                  # another stride: strided rays rebuilt
    assert_same_cloud_bytes(bytes(msg.data), reference_bytes(DEPTH, CAM), 16)


def test_raw_camera_uses_undistorted_rays():
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])          # wide angle
    raw = CameraModel(width=64, height=48, K=K, D=np.array([-0.3, 0.1, 0.001, -0.002, 0]),
                      P=np.hstack([K, np.zeros((3, 1))]), rectified=False)
    depth = np.random.default_rng(6).uniform(1.0, 3.0, (48, 64)).astype(np.float32)
    backend = BACKENDS[1]
    xyz = pointcloud_to_xyz(DepthCloudBuilder().build(depth, raw, backend.header(1, 'c'),
                                                      backend)).astype(np.float64)
    np.testing.assert_array_equal(xyz[:, 2], depth.ravel())
    u, v, ok = raw.project(xyz)
    assert ok.all()
    uu, vv = np.meshgrid(np.arange(64), np.arange(48))
    np.testing.assert_allclose(u, uu.ravel(), atol=1e-3)
    np.testing.assert_allclose(v, vv.ravel(), atol=1e-3)
    # ... and the distortion matters: pinhole rays of K would be pixels off at the corners.
    fx, fy, cx, cy = raw.intrinsics
    assert abs(xyz[0, 0] / xyz[0, 2] - (0 - cx) / fx) * fx > 2.0


def test_binned_roi_camera_points_project_back_to_their_pixels():
    info = NS(k=[400.0, 0, 319.5, 0, 410.0, 239.5, 0, 0, 1],
              p=[400.0, 0, 319.5, 0, 0, 410.0, 239.5, 0, 0, 0, 1, 0], d=[0.0] * 5,
              distortion_model='plumb_bob', width=640, height=480, binning_x=4, binning_y=4,
              roi=NS(x_offset=40, y_offset=80, width=200, height=160))
    camera = CameraModel.from_camera_info(info)
    assert (camera.width, camera.height) == (50, 40)
    depth = np.full((40, 50), 2.0, np.float32)
    xyz = pointcloud_to_xyz(DepthCloudBuilder().build(depth, camera, BACKENDS[0].header(1, 'c'),
                                                      BACKENDS[0]))
    full = CameraModel.from_camera_info(NS(**{**vars(info), 'binning_x': 0, 'binning_y': 0,
                                              'roi': NS(x_offset=0, y_offset=0, width=0,
                                                        height=0)}))
    u, v, _ = full.project(xyz)                 # full-resolution pixel of each point
    uu, vv = np.meshgrid(np.arange(50) * 4 + 40, np.arange(40) * 4 + 80)
    np.testing.assert_allclose(u, uu.ravel(), atol=1e-3)
    np.testing.assert_allclose(v, vv.ravel(), atol=1e-3)


def test_bad_inputs_are_refused():
    builder, backend = DepthCloudBuilder(), BACKENDS[1]
    header = backend.header(1, 'c')
    with pytest.raises(CameraInfoError, match='image is 4x4'):
        builder.build(np.ones((4, 4), np.float32), CAM, header, backend)
    with pytest.raises(PointCloudError, match=r'HxW array, got shape \(4, 5, 1\)'):
        builder.build(DEPTH[..., None], CAM, header, backend)
    with pytest.raises(PointCloudError, match=r'rgb must be a 4x5x3 uint8 .* \(4, 5\)'):
        builder.build(DEPTH, CAM, header, backend, rgb=RGB[..., 0])
    with pytest.raises(PointCloudError, match='rgb must be a 4x5x3 uint8 .*float32'):
        builder.build(DEPTH, CAM, header, backend, rgb=RGB.astype(np.float32))
    with pytest.raises(PointCloudError, match='stride must be a positive integer, got 0'):
        builder.build(DEPTH, CAM, header, backend, stride=0)
    with pytest.raises(PointCloudError, match='min_range 5.0 must not exceed max_range 1.0'):
        builder.build(DEPTH, CAM, header, backend, min_range=5.0, max_range=1.0)
    with pytest.raises(PointCloudError, match='float metres'):
        builder.build(DEPTH.astype(object), CAM, header, backend)


# ---------------------------------------------------------------------------- LiDAR in
def lidar_msg(points, fields, point_step, bigendian=False, height=1, row_pad=0, extra=None):
    """A driver-style cloud: the given field layout, padding and byte order."""
    order = '>' if bigendian else '<'
    dtype = np.dtype({'names': [f[0] for f in fields],
                      'formats': [order + f[2] for f in fields],
                      'offsets': [f[1] for f in fields], 'itemsize': point_step})
    arr = np.zeros(len(points), dtype)
    for i, name in enumerate('xyz'):
        if name in dtype.names:
            arr[name] = points[:, i]
    for name, values in (extra or {}).items():
        arr[name] = values
    width = len(points) // height
    rows = arr.view(np.uint8).reshape(height, width * point_step)
    data = np.full((height, width * point_step + row_pad), 0xEE, np.uint8)   # junk padding
    data[:, :width * point_step] = rows
    types = {'f4': FLOAT32, 'f8': FLOAT64, 'u2': UINT16, 'u4': UINT32}
    return NS(height=height, width=width, point_step=point_step,
              row_step=width * point_step + row_pad, is_bigendian=bigendian,
              fields=[NS(name=n, offset=o, datatype=types[t], count=1) for n, o, t in fields],
              data=data.tobytes(), header=NS(frame_id='lidar', stamp=NS(sec=0, nanosec=0)))


def as_backend_cloud(msg, backend):
    fields = [backend.point_field(f.name, f.offset, f.datatype) for f in msg.fields]
    return backend.point_cloud2(backend.header(1, 'lidar'), msg.height, msg.width, fields,
                                msg.point_step, msg.row_step, np.frombuffer(msg.data, np.uint8),
                                is_dense=False, is_bigendian=msg.is_bigendian)


POINTS = np.random.default_rng(5).uniform(-10, 10, (12, 3))


@pytest.mark.parametrize('kind', ['f4', 'f8'])
@pytest.mark.parametrize('bigendian', [False, True], ids=['le', 'be'])
@pytest.mark.parametrize('row_pad', [0, 8])
@pytest.mark.parametrize('flavour', ['plain'] + BACKEND_IDS)
def test_lidar_layouts(kind, bigendian, row_pad, flavour):
    size = 4 if kind == 'f4' else 8
    # x, y, z after another field, followed by more, with spare bytes at the end of each point.
    fields = [('intensity', 0, 'f4'), ('x', 4, kind), ('y', 4 + size, kind),
              ('z', 4 + 2 * size, kind), ('ring', 4 + 3 * size, 'u2'), ('t', 8 + 3 * size, 'u4')]
    msg = lidar_msg(POINTS, fields, point_step=12 + 3 * size + 4, bigendian=bigendian,
                    height=3, row_pad=row_pad, extra={'ring': np.arange(12), 'intensity': 7.0,
                                                      't': 123456})
    if flavour != 'plain':
        msg = as_backend_cloud(msg, BACKENDS[BACKEND_IDS.index(flavour)])
    xyz = pointcloud_to_xyz(msg)
    assert xyz.dtype == np.float32 and xyz.shape == (12, 3)
    np.testing.assert_allclose(xyz, POINTS, rtol=1e-6)


def test_organised_lidar_cloud_with_nan_points():
    points = POINTS.copy()
    points[[1, 4, 11]] = np.nan
    points[7, 2] = np.inf                      # one coordinate not finite: dropped as well
    fields = [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')]
    xyz = pointcloud_to_xyz(lidar_msg(points, fields, 16, height=4, row_pad=4))
    keep = np.isfinite(points).all(axis=1)
    assert len(xyz) == 8
    np.testing.assert_allclose(xyz, points[keep], rtol=1e-6)


def test_lidar_errors_name_the_problem():
    fields = [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')]
    with pytest.raises(PointCloudError, match=r'no field\(s\) z \(fields: x, y, zz\)'):
        pointcloud_to_xyz(lidar_msg(POINTS, fields[:2] + [('zz', 8, 'f4')], 16))
    with pytest.raises(PointCloudError, match=r'no field\(s\) x, y, z \(fields: none\)'):
        pointcloud_to_xyz(NS(**{**vars(lidar_msg(POINTS, fields, 16)), 'fields': []}))
    truncated = lidar_msg(POINTS, fields, 16)
    truncated.data = truncated.data[:-3]
    with pytest.raises(PointCloudError, match='189 bytes, expected row_step x height = 192 x 1'):
        pointcloud_to_xyz(truncated)
    overflowing = lidar_msg(POINTS, fields, 16)
    overflowing.fields[2] = NS(name='z', offset=12, datatype=FLOAT64, count=1)
    with pytest.raises(PointCloudError, match="field 'z' at offset 12 does not fit point_step 16"):
        pointcloud_to_xyz(overflowing)
    unknown = lidar_msg(POINTS, fields, 16)
    unknown.fields[0] = NS(name='x', offset=0, datatype=42, count=1)
    with pytest.raises(PointCloudError, match="field 'x' has unknown datatype 42"):
        pointcloud_to_xyz(unknown)
    narrow = lidar_msg(POINTS, fields, 16)
    narrow.row_step = 100
    with pytest.raises(PointCloudError, match='row_step 100 < width x point_step = 12 x 16'):
        pointcloud_to_xyz(narrow)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_xyz_to_pointcloud_writes_an_ouster_like_layout(backend):
    msg = xyz_to_pointcloud(POINTS, backend.header(3, 'lidar'), backend,
                            intensity=np.arange(12.0), ring=np.arange(12) % 4, t=np.arange(12))
    assert msg.point_step == LIDAR_POINT_STEP == 48 and (msg.height, msg.width) == (1, 12)
    assert msg.row_step == 12 * 48 and msg.is_dense and not msg.is_bigendian
    layout = {f.name: (f.offset, f.datatype) for f in msg.fields}
    assert layout['x'] == (0, FLOAT32) and layout['z'] == (8, FLOAT32)
    assert layout['intensity'] == (16, FLOAT32) and layout['ring'] == (26, UINT16)
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(12, 48)
    np.testing.assert_array_equal(raw[:, 26:28].copy().view('<u2').ravel(), np.arange(12) % 4)
    np.testing.assert_array_equal(raw[:, 16:20].copy().view('<f4').ravel(), np.arange(12.0))
    ranges = raw[:, 32:36].copy().view('<u4').ravel()
    np.testing.assert_allclose(ranges, np.linalg.norm(POINTS, axis=1) * 1000, atol=1)
    np.testing.assert_allclose(pointcloud_to_xyz(msg), POINTS, rtol=1e-6)
    organised = xyz_to_pointcloud(POINTS, backend.header(3, 'lidar'), backend, height=3)
    assert (organised.height, organised.width, organised.row_step) == (3, 4, 4 * 48)
    np.testing.assert_allclose(pointcloud_to_xyz(organised), POINTS, rtol=1e-6)
    empty = xyz_to_pointcloud(np.zeros((0, 3)), backend.header(3, 'lidar'), backend)
    assert pointcloud_to_xyz(empty).shape == (0, 3)
    holes = POINTS.copy()
    holes[2] = np.nan
    sparse = xyz_to_pointcloud(holes, backend.header(3, 'lidar'), backend)
    assert not sparse.is_dense and len(pointcloud_to_xyz(sparse)) == 11


def test_xyz_to_pointcloud_errors():
    backend = BACKENDS[1]
    with pytest.raises(PointCloudError, match=r'Nx3 array, got shape \(12, 2\)'):
        xyz_to_pointcloud(POINTS[:, :2], backend.header(1, 'l'), backend)
    with pytest.raises(PointCloudError, match='12 points cannot form 5 rows'):
        xyz_to_pointcloud(POINTS, backend.header(1, 'l'), backend, height=5)
    with pytest.raises(PointCloudError, match=r'intensity must hold one value per point \(12\)'):
        xyz_to_pointcloud(POINTS, backend.header(1, 'l'), backend, intensity=np.ones(3))


@pytest.mark.parametrize('frame_id', ['l', 'lidar', 'lidar_top'])
def test_clouds_read_back_from_serialised_bag_messages(frame_id):
    """The bag processor reads messages deserialised by rosbags: views into the CDR bytes."""
    backend = BACKENDS[1]
    store = backend.typestore
    valid_depth = int((np.isfinite(DEPTH) & (DEPTH >= 0)).sum())
    for msg, count in ((xyz_to_pointcloud(POINTS, backend.header(1, frame_id), backend,
                                          height=2), len(POINTS)),
                       (DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, frame_id),
                                                  backend), valid_depth)):
        raw = store.serialize_cdr(msg, 'sensor_msgs/msg/PointCloud2')
        back = store.deserialize_cdr(raw, 'sensor_msgs/msg/PointCloud2')
        assert len(pointcloud_to_xyz(back)) == count
        np.testing.assert_array_equal(pointcloud_to_xyz(back), pointcloud_to_xyz(msg))


def test_integer_depth_is_refused_not_taken_as_metres():
    backend = BACKENDS[1]
    with pytest.raises(PointCloudError, match='float metres'):
        DepthCloudBuilder().build((DEPTH * 1000).astype(np.uint16), CAM,
                                  backend.header(1, 'c'), backend)
