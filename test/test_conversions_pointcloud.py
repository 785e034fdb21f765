"""Depth -> PointCloud2 (depth_image_proc layout) and LiDAR PointCloud2 -> points."""
import struct
from types import SimpleNamespace as NS

import numpy as np
import pytest

from fiffdepth_ros.conversions.backends import FLOAT32, FLOAT64, UINT16
from fiffdepth_ros.conversions.pointcloud import (DepthCloudBuilder, PointCloudError,
                                                  pointcloud_to_xyz, xyz_to_pointcloud)
from fiffdepth_ros.geometry.camera_model import CameraInfoError, CameraModel
from msg_factories import BACKEND_IDS, BACKENDS

CAM = CameraModel.pinhole(5, 4, 100.0, 110.0, 2.0, 1.5)
DEPTH = np.array([[1.0, 2.0, np.nan, 4.0, 5.0],
                  [1.5, 2.5, 3.5, 4.5, 5.5],
                  [0.05, 2.0, 3.0, 4.0, 50.0],
                  [1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
RGB = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)


def reference_bytes(depth, camera, rgb=None, min_range=0.0, max_range=np.inf):
    """depth_image_proc's loop, one point at a time with struct."""
    fx, fy, cx, cy = camera.intrinsics
    out = bytearray()
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            z = float(depth[v, u])
            if not (min_range <= z <= max_range):
                x = y = z = float('nan')
            else:
                x, y = (u - cx) * z / fx, (v - cy) * z / fy
            out += struct.pack('<fff', x, y, z) + b'\0' * 4
            if rgb is not None:
                r, g, b = (int(c) for c in rgb[v, u])
                out += bytes([b, g, r, 0]) + b'\0' * 12
    return bytes(out)


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
    got = np.frombuffer(bytes(msg.data), np.uint8).reshape(20, -1)
    want = np.frombuffer(reference_bytes(DEPTH, CAM, rgb, 0.1, 20.0), np.uint8).reshape(20, -1)
    assert got.shape == want.shape
    # Coordinates agree to float32 rounding (NaN where invalid); padding and rgb bytes exactly.
    np.testing.assert_allclose(got[:, :12].copy().view('<f4'), want[:, :12].copy().view('<f4'),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[:, 12:], want[:, 12:])
    assert msg.header.frame_id == 'cam'


def test_round_trip_depth_cloud_points():
    backend = BACKENDS[1]
    msg = DepthCloudBuilder().build(DEPTH, CAM, backend.header(1, 'cam'), backend)
    xyz = pointcloud_to_xyz(msg)
    valid = np.isfinite(DEPTH)
    assert len(xyz) == valid.sum()
    np.testing.assert_allclose(xyz[:, 2], DEPTH[valid])
    fx, fy, cx, cy = CAM.intrinsics
    vv, uu = np.nonzero(valid)
    np.testing.assert_allclose(xyz[:, 0], (uu - cx) * DEPTH[valid] / fx, rtol=1e-6)
    np.testing.assert_allclose(xyz[:, 1], (vv - cy) * DEPTH[valid] / fy, rtol=1e-6)


def test_stride_unorganised_and_buffer_reuse():
    builder, backend = DepthCloudBuilder(), BACKENDS[0]
    strided = builder.build(DEPTH, CAM, backend.header(1, 'c'), backend, rgb=RGB, stride=2)
    assert (strided.height, strided.width) == (2, 3)
    xyz = np.frombuffer(bytes(strided.data), '<f4').reshape(2, 3, 8)
    np.testing.assert_array_equal(xyz[..., 2], DEPTH[::2, ::2])
    dense = builder.build(DEPTH, CAM, backend.header(1, 'c'), backend, rgb=RGB, max_range=4.2,
                          organized=False)
    keep = np.isfinite(DEPTH) & (DEPTH <= 4.2)
    assert dense.height == 1 and dense.width == keep.sum() and dense.is_dense
    raw = np.frombuffer(bytes(dense.data), np.uint8).reshape(-1, 32)
    np.testing.assert_array_equal(raw[:, 16:19], RGB[keep][:, ::-1])
    # The rclpy message owns its bytes: building the next cloud must not change this one.
    first = builder.build(DEPTH, CAM, backend.header(1, 'c'), backend)
    before = bytes(first.data)
    builder.build(DEPTH * 2, CAM, backend.header(2, 'c'), backend)
    assert bytes(first.data) == before


def test_rosbags_clouds_are_not_overwritten_by_later_frames():
    builder, backend = DepthCloudBuilder(), BACKENDS[1]
    first = builder.build(DEPTH, CAM, backend.header(1, 'c'), backend)
    before = first.data.copy()
    builder.build(DEPTH * 2, CAM, backend.header(2, 'c'), backend)
    np.testing.assert_array_equal(first.data, before)


def test_raw_camera_uses_undistorted_rays():
    K = np.array([[300.0, 0, 32], [0, 300.0, 24], [0, 0, 1]])
    raw = CameraModel(width=64, height=48, K=K, D=np.array([-0.3, 0.1, 0, 0, 0]),
                      P=np.hstack([K, np.zeros((3, 1))]), rectified=False)
    depth = np.full((48, 64), 2.0, np.float32)
    backend = BACKENDS[1]
    xyz = pointcloud_to_xyz(DepthCloudBuilder().build(depth, raw, backend.header(1, 'c'),
                                                      backend)).astype(np.float64)
    u, v, ok = raw.project(xyz)
    assert ok.all()
    uu, vv = np.meshgrid(np.arange(64), np.arange(48))
    np.testing.assert_allclose(u, uu.ravel(), atol=1e-3)
    np.testing.assert_allclose(v, vv.ravel(), atol=1e-3)


def test_size_mismatch_is_refused():
    backend = BACKENDS[1]
    with pytest.raises(CameraInfoError, match='image is 4x4'):
        DepthCloudBuilder().build(np.ones((4, 4), np.float32), CAM, backend.header(1, 'c'),
                                  backend)


def lidar_msg(points, fields, point_step, bigendian=False, height=1, row_pad=0, extra=None):
    """A driver-style cloud: given field layout, padding and byte order."""
    order = '>' if bigendian else '<'
    dtype = np.dtype({'names': [f[0] for f in fields],
                      'formats': [order + f[2] for f in fields],
                      'offsets': [f[1] for f in fields], 'itemsize': point_step})
    arr = np.zeros(len(points), dtype)
    for i, name in enumerate('xyz'):
        if name in dtype.names:
            arr[name] = points[:, i]
    if extra:
        for name, values in extra.items():
            arr[name] = values
    width = len(points) // height
    rows = arr.view(np.uint8).reshape(height, width * point_step)
    data = np.zeros((height, width * point_step + row_pad), np.uint8)
    data[:, :width * point_step] = rows
    types = {'f4': FLOAT32, 'f8': FLOAT64, 'u2': UINT16}
    return NS(height=height, width=width, point_step=point_step,
              row_step=width * point_step + row_pad, is_bigendian=bigendian,
              fields=[NS(name=n, offset=o, datatype=types[t], count=1) for n, o, t in fields],
              data=data.tobytes(), header=NS(frame_id='lidar', stamp=NS(sec=0, nanosec=0)))


POINTS = np.random.default_rng(5).uniform(-10, 10, (12, 3))


@pytest.mark.parametrize('kind', ['f4', 'f8'])
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('row_pad', [0, 8])
def test_lidar_layouts(kind, bigendian, row_pad):
    size = 4 if kind == 'f4' else 8
    fields = [('intensity', 0, 'f4'), ('x', 4, kind), ('y', 4 + size, kind),
              ('z', 4 + 2 * size, kind), ('ring', 4 + 3 * size, 'u2')]
    msg = lidar_msg(POINTS, fields, point_step=4 + 3 * size + 6, bigendian=bigendian,
                    height=3, row_pad=row_pad, extra={'ring': np.arange(12), 'intensity': 7.0})
    xyz = pointcloud_to_xyz(msg)
    assert xyz.dtype == np.float32
    np.testing.assert_allclose(xyz, POINTS, rtol=1e-6)


def test_lidar_nan_points_dropped_and_errors():
    points = POINTS.copy()
    points[[1, 4]] = np.nan
    fields = [('x', 0, 'f4'), ('y', 4, 'f4'), ('z', 8, 'f4')]
    assert len(pointcloud_to_xyz(lidar_msg(points, fields, 16, height=2))) == 10
    with pytest.raises(PointCloudError, match=r'no field\(s\) z'):
        pointcloud_to_xyz(lidar_msg(POINTS, fields[:2] + [('zz', 8, 'f4')], 16))
    truncated = lidar_msg(POINTS, fields, 16)
    truncated.data = truncated.data[:-3]
    with pytest.raises(PointCloudError, match='expected row_step x height'):
        pointcloud_to_xyz(truncated)
    overflowing = lidar_msg(POINTS, fields, 16)
    overflowing.fields[2] = NS(name='z', offset=12, datatype=FLOAT64, count=1)
    with pytest.raises(PointCloudError, match='does not fit point_step'):
        pointcloud_to_xyz(overflowing)


@pytest.mark.parametrize('backend', BACKENDS, ids=BACKEND_IDS)
def test_xyz_to_pointcloud_writes_an_ouster_like_layout(backend):
    msg = xyz_to_pointcloud(POINTS, backend.header(3, 'lidar'), backend,
                            intensity=np.arange(12.0), ring=np.arange(12) % 4)
    assert msg.point_step == 48 and msg.height == 1 and msg.width == 12
    assert [f.name for f in msg.fields][:3] == ['x', 'y', 'z']
    np.testing.assert_allclose(pointcloud_to_xyz(msg), POINTS, rtol=1e-6)
    empty = xyz_to_pointcloud(np.zeros((0, 3)), backend.header(3, 'lidar'), backend)
    assert pointcloud_to_xyz(empty).shape == (0, 3)
