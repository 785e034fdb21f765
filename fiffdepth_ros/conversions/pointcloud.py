"""Point clouds: depth -> PointCloud2 (depth_image_proc layout) and LiDAR PointCloud2 -> points.

Depth clouds are byte-compatible with depth_image_proc's point_cloud_xyz / point_cloud_xyzrgb:
organised (image height x width), x, y, z FLOAT32 at offsets 0, 4, 8 with point_step 16, or with
``rgb`` FLOAT32 at offset 16 (bytes b, g, r, 0) and point_step 32; little-endian; invalid depth
gives NaN coordinates and ``is_dense`` false. x = (u - cx) z / fx, y = (v - cy) z / fy, with the
per-pixel rays of the CameraModel (P for rectified images, undistorted K/D rays for raw ones).
"""
from __future__ import annotations

import numpy as np

from ..geometry.camera_model import CameraModel
from .backends import FLOAT32, FLOAT64, INT8, INT16, INT32, UINT8, UINT16, UINT32, MessageBackend

_NUMPY_TYPES = {INT8: 'i1', UINT8: 'u1', INT16: 'i2', UINT16: 'u2', INT32: 'i4', UINT32: 'u4',
                FLOAT32: 'f4', FLOAT64: 'f8'}


class PointCloudError(ValueError):
    """A PointCloud2 that cannot be read (missing fields, inconsistent sizes)."""


def _xyz_fields(backend: MessageBackend, with_rgb: bool) -> list:
    fields = [backend.point_field(name, 4 * i, FLOAT32) for i, name in enumerate('xyz')]
    if with_rgb:
        fields.append(backend.point_field('rgb', 16, FLOAT32))
    return fields


def _packed_bgr0(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint32 whose little-endian bytes are b, g, r, 0: PCL's packed ``rgb`` float."""
    import cv2
    bgra = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGRA)
    packed = bgra.view('<u4')[..., 0]
    packed &= 0x00FFFFFF                  # alpha byte 0, as depth_image_proc leaves it
    return packed


class DepthCloudBuilder:
    """Builds clouds from depth images; keeps per-camera rays and a reusable buffer."""

    def __init__(self):
        self._rays_key = None
        self._rays: tuple[np.ndarray, np.ndarray] | None = None
        self._buffer: np.ndarray | None = None

    def _strided_rays(self, camera: CameraModel, stride: int):
        key = (camera.key, stride)
        if key != self._rays_key:
            rx, ry = camera.rays()
            self._rays = (np.ascontiguousarray(rx[::stride, ::stride]),
                          np.ascontiguousarray(ry[::stride, ::stride]))
            self._rays_key = key
        return self._rays

    def _output_buffer(self, h: int, w: int, floats: int, reuse: bool) -> np.ndarray:
        buf = self._buffer
        if not reuse or buf is None or buf.shape != (h, w, floats):
            buf = np.zeros((h, w, floats), np.float32)   # padding bytes stay 0
            if reuse:
                self._buffer = buf
        return buf

    def build(self, depth: np.ndarray, camera: CameraModel, header, backend: MessageBackend,
              rgb: np.ndarray | None = None, min_range: float = 0.0,
              max_range: float = np.inf, stride: int = 1, organized: bool = True):
        """PointCloud2 of ``depth`` (float32 metres, NaN invalid) seen by ``camera``.

        min_range/max_range bound z (outside: invalid); stride keeps every Nth row and column;
        organized=False drops invalid points (height 1, is_dense true).
        """
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise PointCloudError(f'depth must be HxW, got shape {depth.shape}')
        camera.check_image_size(depth.shape[1], depth.shape[0])
        if rgb is not None and rgb.shape[:2] != depth.shape:
            raise PointCloudError(f'rgb {rgb.shape[:2]} and depth {depth.shape} differ in size')
        stride = max(int(stride), 1)
        rx, ry = self._strided_rays(camera, stride)
        z = depth[::stride, ::stride].astype(np.float32, copy=False)
        invalid = ~((z >= min_range) & (z <= max_range))       # NaN compares False: invalid
        z = np.where(invalid, np.float32(np.nan), z)
        with_rgb = rgb is not None
        floats = 8 if with_rgb else 4
        if organized:
            h, w = z.shape
            buf = self._output_buffer(h, w, floats, reuse=backend.copies_data)
            np.multiply(rx, z, out=buf[..., 0])
            np.multiply(ry, z, out=buf[..., 1])
            buf[..., 2] = z
            if with_rgb:
                buf.view(np.uint32)[..., 4] = _packed_bgr0(rgb[::stride, ::stride])
            is_dense = False
        else:
            keep = ~invalid
            zk = z[keep]
            h, w = 1, int(zk.size)
            buf = np.zeros((1, w, floats), np.float32)
            buf[0, :, 0] = rx[keep] * zk
            buf[0, :, 1] = ry[keep] * zk
            buf[0, :, 2] = zk
            if with_rgb:
                buf.view(np.uint32)[0, :, 4] = _packed_bgr0(rgb[::stride, ::stride])[keep]
            is_dense = True
        point_step = floats * 4
        return backend.point_cloud2(header, h, w, _xyz_fields(backend, with_rgb), point_step,
                                    point_step * w, buf, is_dense=is_dense)


def _field_dtype(msg, names: tuple[str, ...]) -> np.dtype:
    fields = {str(f.name): f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise PointCloudError(f"PointCloud2 has no field(s) {', '.join(missing)} "
                              f"(fields: {', '.join(fields) or 'none'})")
    order = '>' if msg.is_bigendian else '<'
    formats, offsets = [], []
    for name in names:
        f = fields[name]
        kind = _NUMPY_TYPES.get(int(f.datatype))
        if kind is None:
            raise PointCloudError(f"PointCloud2 field '{name}' has unknown datatype {f.datatype}")
        formats.append(order + kind)
        offsets.append(int(f.offset))
        if int(f.offset) + np.dtype(kind).itemsize > int(msg.point_step):
            raise PointCloudError(f"PointCloud2 field '{name}' at offset {f.offset} does not fit "
                                  f'point_step {msg.point_step}')
    return np.dtype({'names': list(names), 'formats': formats, 'offsets': offsets,
                     'itemsize': int(msg.point_step)})


def pointcloud_to_xyz(msg) -> np.ndarray:
    """(N, 3) float32 of the finite points of any PointCloud2 layout (LiDAR drivers, depth clouds).

    x, y, z may be FLOAT32 or FLOAT64 among other fields, with padding inside point_step, row
    padding (row_step), either byte order, organised or not.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = _field_dtype(msg, ('x', 'y', 'z'))
    if height * width == 0:
        return np.zeros((0, 3), np.float32)
    if row_step < width * point_step:
        raise PointCloudError(f'PointCloud2 row_step {row_step} < width x point_step = '
                              f'{width} x {point_step}')
    data = msg.data
    buf = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else \
        np.frombuffer(memoryview(data).cast('B'), np.uint8)
    if buf.size != row_step * height:
        raise PointCloudError(f'PointCloud2 data has {buf.size} bytes, expected row_step x '
                              f'height = {row_step} x {height} = {row_step * height}')
    if row_step == width * point_step:
        points = buf.view(dtype)
    else:
        rows = np.lib.stride_tricks.as_strided(buf, shape=(height, width * point_step),
                                               strides=(row_step, 1))
        points = np.ascontiguousarray(rows).reshape(-1).view(dtype)
    xyz = np.empty((points.size, 3), np.float32)
    xyz[:, 0], xyz[:, 1], xyz[:, 2] = points['x'], points['y'], points['z']
    return xyz[np.isfinite(xyz).all(axis=1)]


# An Ouster-like driver layout: what real LiDAR clouds look like (padding and extra fields).
LIDAR_LAYOUT = [('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32),
                ('intensity', 16, FLOAT32), ('t', 20, UINT32), ('reflectivity', 24, UINT16),
                ('ring', 26, UINT16), ('ambient', 28, UINT16), ('range', 32, UINT32)]
LIDAR_POINT_STEP = 48


def xyz_to_pointcloud(points: np.ndarray, header, backend: MessageBackend,
                      intensity: np.ndarray | None = None, ring: np.ndarray | None = None):
    """An unorganised LiDAR-style PointCloud2 (Ouster-like layout) of Nx3 points."""
    points = np.asarray(points, np.float32).reshape(-1, 3)
    n = len(points)
    dtype = np.dtype({'names': [name for name, _, _ in LIDAR_LAYOUT],
                      'formats': ['<' + _NUMPY_TYPES[t] for _, _, t in LIDAR_LAYOUT],
                      'offsets': [offset for _, offset, _ in LIDAR_LAYOUT],
                      'itemsize': LIDAR_POINT_STEP})
    cloud = np.zeros(n, dtype)
    cloud['x'], cloud['y'], cloud['z'] = points[:, 0], points[:, 1], points[:, 2]
    with np.errstate(invalid='ignore'):
        cloud['range'] = np.nan_to_num(np.linalg.norm(points, axis=1) * 1000.0).astype(np.uint32)
    if intensity is not None:
        cloud['intensity'] = intensity
    if ring is not None:
        cloud['ring'] = ring
    fields = [backend.point_field(name, offset, datatype) for name, offset, datatype in
              LIDAR_LAYOUT]
    return backend.point_cloud2(header, 1, n, fields, LIDAR_POINT_STEP, LIDAR_POINT_STEP * n,
                                cloud.view(np.uint8), is_dense=bool(np.isfinite(points).all()))
