"""Point clouds: depth -> PointCloud2 (depth_image_proc layout) and LiDAR PointCloud2 -> points.

Depth clouds are byte-compatible with depth_image_proc's point_cloud_xyz / point_cloud_xyzrgb:
organised (image height x width), x, y, z FLOAT32 at offsets 0, 4, 8 with point_step 16, or with
``rgb`` FLOAT32 at offset 16 (bytes b, g, r, 0) and point_step 32; little-endian; invalid depth
gives NaN coordinates and ``is_dense`` false. x = (u - cx) z / fx, y = (v - cy) z / fy, with the
per-pixel rays of the CameraModel (P for rectified images, undistorted K/D rays for raw ones).

Reading accepts any driver layout through a numpy structured dtype laid over the message bytes
(no per-point Python).
"""
from __future__ import annotations

import numpy as np

from ..geometry.camera_model import CameraModel
from .backends import FLOAT32, FLOAT64, INT8, INT16, INT32, UINT8, UINT16, UINT32, MessageBackend

_NUMPY_TYPES = {INT8: 'i1', UINT8: 'u1', INT16: 'i2', UINT16: 'u2', INT32: 'i4', UINT32: 'u4',
                FLOAT32: 'f4', FLOAT64: 'f8'}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class PointCloudError(ValueError):
    """A depth image or PointCloud2 that cannot be converted; the message says why."""


# ---------------------------------------------------------------------------- depth -> cloud
def check_cloud_arguments(stride, min_range, max_range) -> int:
    """The stride as an int; PointCloudError for a stride or range no cloud can have (shared
    by the numpy builder and the torch one in fiffdepth_ros.finish)."""
    if int(stride) != stride or stride < 1:
        raise PointCloudError(f'stride must be a positive integer, got {stride}')
    if not float(min_range) <= float(max_range):
        raise PointCloudError(f'min_range {min_range} must not exceed max_range {max_range}')
    return int(stride)


def _xyz_fields(backend: MessageBackend, with_rgb: bool) -> list:
    fields = [backend.point_field(name, 4 * i, FLOAT32) for i, name in enumerate('xyz')]
    if with_rgb:
        fields.append(backend.point_field('rgb', 16, FLOAT32))
    return fields


class _Scratch:
    """Work arrays for one output shape, reused from frame to frame."""

    def __init__(self, h: int, w: int):
        self.z = np.empty((h, w), np.float32)
        self.too_near = np.empty((h, w), bool)
        self.too_far = np.empty((h, w), bool)
        self.points: dict[int, np.ndarray] = {}      # floats per point -> (h, w, floats)

    def points_buffer(self, floats: int) -> np.ndarray:
        buf = self.points.get(floats)
        if buf is None:
            buf = self.points[floats] = _new_points_buffer(self.z.shape, floats)
        return buf


def _new_points_buffer(shape: tuple[int, int], floats: int) -> np.ndarray:
    # Zeroed once: the padding words are never written afterwards and must read as 0.
    return np.zeros(shape + (floats,), np.float32)


class DepthCloudBuilder:
    """Builds clouds from depth images; keeps per-camera rays and reusable work buffers.

    One builder per output stream (it is not thread-safe): the rays of the last camera and
    stride, and the work buffers of the last output size, are kept between frames.
    """

    def __init__(self):
        self._rays_key = None
        self._rays: tuple[np.ndarray, np.ndarray] | None = None
        self._scratch: _Scratch | None = None

    def _strided_rays(self, camera: CameraModel, stride: int):
        key = (camera.key, stride)
        if key != self._rays_key:
            rx, ry = camera.rays()
            self._rays = (np.ascontiguousarray(rx[::stride, ::stride]),
                          np.ascontiguousarray(ry[::stride, ::stride]))
            self._rays_key = key
        return self._rays

    def _scratch_for(self, h: int, w: int) -> _Scratch:
        if self._scratch is None or self._scratch.z.shape != (h, w):
            self._scratch = _Scratch(h, w)
        return self._scratch

    def build(self, depth: np.ndarray, camera: CameraModel, header, backend: MessageBackend,
              rgb: np.ndarray | None = None, min_range: float = 0.0,
              max_range: float = np.inf, stride: int = 1, organized: bool = True):
        """PointCloud2 of ``depth`` (HxW metres, NaN invalid) seen by ``camera``.

        z outside [min_range, max_range], infinite or NaN is invalid (NaN coordinates); stride N
        keeps every Nth row and column starting at the first; organized=False drops invalid
        points (height 1, is_dense true). ``rgb`` (HxWx3 uint8) adds the packed ``rgb`` field.
        The header is used as given.
        """
        depth = np.asarray(depth)
        if depth.ndim != 2 or depth.size == 0:
            raise PointCloudError(f'depth must be a non-empty HxW array, got shape {depth.shape}')
        if not np.issubdtype(depth.dtype, np.floating):
            # An integer array is most likely 16UC1 millimetres: refuse rather than build a
            # cloud 1000x too large (image_msg_to_depth converts such images to metres).
            raise PointCloudError(f'depth must be float metres, got dtype {depth.dtype}')
        camera.check_image_size(depth.shape[1], depth.shape[0])
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.dtype != np.uint8 or rgb.shape != depth.shape + (3,):
                raise PointCloudError(f'rgb must be a {depth.shape[0]}x{depth.shape[1]}x3 uint8 '
                                      f'array like the depth, got {rgb.dtype} {rgb.shape}')
        stride = check_cloud_arguments(stride, min_range, max_range)

        rx, ry = self._strided_rays(camera, stride)
        h, w = rx.shape
        scratch = self._scratch_for(h, w)
        z = scratch.z
        np.copyto(z, depth[::stride, ::stride], casting='unsafe')
        # Out of range (and +-inf) -> NaN. NaN depth fails every comparison and stays NaN.
        np.less(z, max(float(min_range), -_FLOAT32_MAX), out=scratch.too_near)
        np.greater(z, min(float(max_range), _FLOAT32_MAX), out=scratch.too_far)
        np.logical_or(scratch.too_near, scratch.too_far, out=scratch.too_near)
        np.copyto(z, np.float32(np.nan), where=scratch.too_near)

        floats = 8 if rgb is not None else 4
        # The backend copies the buffer into the message: one reused buffer serves every frame.
        points = scratch.points_buffer(floats)
        np.multiply(rx, z, out=points[..., 0])
        np.multiply(ry, z, out=points[..., 1])
        points[..., 2] = z
        if rgb is not None:
            _write_bgr0(points, rgb[::stride, ::stride])

        if organized:
            is_dense = False
        else:
            points = points.reshape(1, -1, floats)[:, np.isfinite(z).reshape(-1)]
            h, w, is_dense = 1, points.shape[1], True
        point_step = floats * 4
        return backend.point_cloud2(header, h, w, _xyz_fields(backend, rgb is not None),
                                    point_step, point_step * w, points, is_dense=is_dense)


def _write_bgr0(points: np.ndarray, rgb: np.ndarray) -> None:
    """PCL's packed ``rgb`` float: bytes b, g, r, 0 at byte offset 16 of every point."""
    import cv2
    h, w, floats = points.shape
    as_bytes = points.view(np.uint8).reshape(h, w, floats * 4)   # OpenCV: floats*4 channels
    cv2.mixChannels([np.ascontiguousarray(rgb)], [as_bytes], [2, 16, 1, 17, 0, 18])


# ---------------------------------------------------------------------------- cloud -> points
def _message_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast('B'), np.uint8)


def _field_dtype(msg, names: tuple[str, ...]) -> np.dtype:
    fields = {str(f.name): f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise PointCloudError(f"PointCloud2 has no field(s) {', '.join(missing)} "
                              f"(fields: {', '.join(fields) or 'none'})")
    order = '>' if msg.is_bigendian else '<'
    point_step = int(msg.point_step)
    formats, offsets = [], []
    for name in names:
        f = fields[name]
        kind = _NUMPY_TYPES.get(int(f.datatype))
        if kind is None:
            raise PointCloudError(f"PointCloud2 field '{name}' has unknown datatype {f.datatype}")
        if int(f.offset) < 0 or int(f.offset) + np.dtype(kind).itemsize > point_step:
            raise PointCloudError(f"PointCloud2 field '{name}' at offset {f.offset} does not fit "
                                  f'point_step {point_step}')
        formats.append(order + kind)
        offsets.append(int(f.offset))
    return np.dtype({'names': list(names), 'formats': formats, 'offsets': offsets,
                     'itemsize': point_step})


def pointcloud_to_xyz(msg) -> np.ndarray:
    """(N, 3) float32 of the finite points of any PointCloud2 layout (LiDAR drivers, depth clouds).

    x, y, z may be FLOAT32 or FLOAT64 (or integers) among other fields, with padding inside
    point_step, row padding (row_step), either byte order, organised or not. The message bytes
    are read in place through a strided structured view; only x, y, z are copied out.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = _field_dtype(msg, ('x', 'y', 'z'))
    buf = _message_bytes(msg.data)
    if height * width == 0:
        return np.zeros((0, 3), np.float32)
    if row_step < width * point_step:
        raise PointCloudError(f'PointCloud2 row_step {row_step} < width x point_step = '
                              f'{width} x {point_step}')
    if buf.size != row_step * height:
        raise PointCloudError(f'PointCloud2 data has {buf.size} bytes, expected row_step x '
                              f'height = {row_step} x {height} = {row_step * height}')
    points = np.ndarray((height, width), dtype, buffer=buf, strides=(row_step, point_step))
    # Planar first (one contiguous array per coordinate): masks and selections over contiguous
    # 1-D arrays are several times faster than over the rows of an (N, 3) array.
    planar = np.empty((3, height, width), np.float32)
    for i, name in enumerate('xyz'):
        planar[i] = points[name]              # casts FLOAT64, swaps big-endian bytes
    planar = planar.reshape(3, -1)
    keep = np.isfinite(planar[0])
    keep &= np.isfinite(planar[1])
    keep &= np.isfinite(planar[2])
    xyz = np.empty((int(np.count_nonzero(keep)), 3), np.float32)
    for i in range(3):
        xyz[:, i] = planar[i][keep]
    return xyz


# ---------------------------------------------------------------------------- points -> LiDAR
# An Ouster-like driver layout (ouster_ros' PointOS): what real LiDAR clouds look like, with
# padding after z, extra fields and a point_step larger than the fields need.
LIDAR_LAYOUT = (('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32),
                ('intensity', 16, FLOAT32), ('t', 20, UINT32), ('reflectivity', 24, UINT16),
                ('ring', 26, UINT16), ('ambient', 28, UINT16), ('range', 32, UINT32))
LIDAR_POINT_STEP = 48
_LIDAR_DTYPE = np.dtype({'names': [name for name, _, _ in LIDAR_LAYOUT],
                         'formats': ['<' + _NUMPY_TYPES[t] for _, _, t in LIDAR_LAYOUT],
                         'offsets': [offset for _, offset, _ in LIDAR_LAYOUT],
                         'itemsize': LIDAR_POINT_STEP})


def xyz_to_pointcloud(points: np.ndarray, header, backend: MessageBackend,
                      intensity: np.ndarray | None = None, ring: np.ndarray | None = None,
                      t: np.ndarray | None = None, height: int = 1):
    """A LiDAR-style PointCloud2 (Ouster-like layout, point_step 48) of Nx3 points.

    ``height`` > 1 writes an organised cloud (rows x N/rows, e.g. rings x azimuths) as spinning
    LiDAR drivers do; ``range`` is filled in millimetres, 0 for non-finite points.
    """
    points = np.asarray(points, np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise PointCloudError(f'points must be an Nx3 array, got shape {points.shape}')
    n = len(points)
    if height < 1 or n % height:
        raise PointCloudError(f'{n} points cannot form {height} rows')
    cloud = np.zeros(n, _LIDAR_DTYPE)
    cloud['x'], cloud['y'], cloud['z'] = points[:, 0], points[:, 1], points[:, 2]
    with np.errstate(invalid='ignore', over='ignore'):
        range_mm = np.linalg.norm(points.astype(np.float64), axis=1) * 1000.0
    cloud['range'] = np.where(np.isfinite(range_mm), np.clip(range_mm, 0, 2 ** 32 - 1), 0)
    for name, values in (('intensity', intensity), ('ring', ring), ('t', t)):
        if values is not None:
            values = np.asarray(values)
            if values.shape not in ((), (n,)):
                raise PointCloudError(f'{name} must hold one value per point ({n}), got shape '
                                      f'{values.shape}')
            cloud[name] = values
    fields = [backend.point_field(name, offset, datatype)
              for name, offset, datatype in LIDAR_LAYOUT]
    width = n // height
    return backend.point_cloud2(header, height, width, fields, LIDAR_POINT_STEP,
                                LIDAR_POINT_STEP * width, cloud,
                                is_dense=bool(np.isfinite(points).all()))
