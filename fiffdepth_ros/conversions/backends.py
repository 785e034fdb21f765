"""Message backends: build ROS messages for rclpy (the node) or rosbags (the bag processor).

Conversions compute numpy buffers and hand them to a backend, so one conversion serves both the
live node and offline processing. Reading messages needs no backend: rclpy and rosbags messages
share field names, and the readers only use those.

Big ``data`` fields take the fast path: rclpy gets an ``array.array('B')`` filled with one memcpy
(assigning numpy arrays or memoryviews makes rclpy check every element, ~90 ms for a 640x480
float image), rosbags gets a uint8 numpy array, which its CDR serialiser requires. Either way the
message owns its bytes (one copy), so callers may reuse their buffers for the next frame.
"""
from __future__ import annotations

import array
from typing import Any, Sequence

import numpy as np

# sensor_msgs/PointField datatypes (REP 117/118 and PointCloud2 use these numbers).
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_sec(stamp) -> float:
    return stamp_to_ns(stamp) * 1e-9


class MessageBackend:
    """Interface: message constructors with every field given explicitly."""

    name = 'abstract'

    def blob(self, buffer) -> Any:
        """A copy of a bytes-like buffer (numpy array, bytes) as the value of a uint8[] field."""
        raise NotImplementedError

    def _make(self, type_name: str, **fields):
        raise NotImplementedError

    def time(self, ns: int):
        return self._make('builtin_interfaces/msg/Time', sec=int(ns // 1_000_000_000),
                          nanosec=int(ns % 1_000_000_000))

    def header(self, stamp_ns: int, frame_id: str):
        return self._make('std_msgs/msg/Header', stamp=self.time(stamp_ns), frame_id=frame_id)

    def copy_header(self, header):
        """A header of this backend with the same stamp and frame_id as ``header``."""
        return self.header(stamp_to_ns(header.stamp), str(header.frame_id))

    def image(self, header, height: int, width: int, encoding: str, step: int, data,
              is_bigendian: bool = False):
        return self._make('sensor_msgs/msg/Image', header=header, height=int(height),
                          width=int(width), encoding=encoding, is_bigendian=int(is_bigendian),
                          step=int(step), data=self.blob(data))

    def compressed_image(self, header, fmt: str, data):
        return self._make('sensor_msgs/msg/CompressedImage', header=header, format=fmt,
                          data=self.blob(data))

    def region_of_interest(self, x_offset=0, y_offset=0, height=0, width=0, do_rectify=False):
        return self._make('sensor_msgs/msg/RegionOfInterest', x_offset=int(x_offset),
                          y_offset=int(y_offset), height=int(height), width=int(width),
                          do_rectify=bool(do_rectify))

    def camera_info(self, header, height: int, width: int, distortion_model: str, d, k, r, p,
                    binning_x: int = 0, binning_y: int = 0, roi=None):
        return self._make(
            'sensor_msgs/msg/CameraInfo', header=header, height=int(height), width=int(width),
            distortion_model=distortion_model, d=self._float64s(d),
            k=np.asarray(k, np.float64).reshape(9), r=np.asarray(r, np.float64).reshape(9),
            p=np.asarray(p, np.float64).reshape(12), binning_x=int(binning_x),
            binning_y=int(binning_y), roi=roi if roi is not None else self.region_of_interest())

    def point_field(self, name: str, offset: int, datatype: int, count: int = 1):
        return self._make('sensor_msgs/msg/PointField', name=name, offset=int(offset),
                          datatype=int(datatype), count=int(count))

    def point_cloud2(self, header, height: int, width: int, fields: Sequence, point_step: int,
                     row_step: int, data, is_dense: bool, is_bigendian: bool = False):
        return self._make('sensor_msgs/msg/PointCloud2', header=header, height=int(height),
                          width=int(width), fields=list(fields), is_bigendian=bool(is_bigendian),
                          point_step=int(point_step), row_step=int(row_step),
                          data=self.blob(data), is_dense=bool(is_dense))

    def _float64s(self, values):
        return np.asarray(values, np.float64).reshape(-1)


def _as_byte_view(buffer) -> memoryview:
    if isinstance(buffer, np.ndarray):
        # Flat: memoryview cannot cast an empty multi-dimensional array (an empty cloud).
        buffer = np.ascontiguousarray(buffer).reshape(-1)
    return memoryview(buffer).cast('B')


class RclpyBackend(MessageBackend):
    """Messages of the ROS 2 Python client library (imported on first use)."""

    name = 'rclpy'

    def __init__(self):
        import importlib
        self._importlib = importlib
        self._classes: dict[str, type] = {}

    def _cls(self, type_name: str) -> type:
        cls = self._classes.get(type_name)
        if cls is None:
            pkg, _, name = type_name.split('/')
            cls = getattr(self._importlib.import_module(f'{pkg}.msg'), name)
            self._classes[type_name] = cls
        return cls

    def _make(self, type_name: str, **fields):
        cls = self._cls(type_name)
        data = fields.pop('data', None)
        if data is None:
            return cls(**fields)
        # Constructors copy ``data`` whatever it is; the setter stores an array.array('B') as
        # it is when fields are checked (always before Jazzy; asked for here on newer
        # distros), so the bytes are copied once, in blob().
        if '_check_fields' in cls.__slots__:
            fields['check_fields'] = True
        msg = cls(**fields)
        msg.data = data
        return msg

    def blob(self, buffer):
        out = array.array('B')
        out.frombytes(_as_byte_view(buffer))
        return out

    def _float64s(self, values):
        return array.array('d', np.asarray(values, np.float64).reshape(-1).tobytes())


class RosbagsBackend(MessageBackend):
    """Messages of a ``rosbags`` typestore, for reading and writing bags without ROS."""

    name = 'rosbags'

    def __init__(self, typestore=None):
        if typestore is None:
            from rosbags.typesys import Stores, get_typestore
            typestore = get_typestore(Stores.ROS2_KILTED)
        self.typestore = typestore

    def _make(self, type_name: str, **fields):
        return self.typestore.types[type_name](**fields)

    def blob(self, buffer):
        return np.frombuffer(_as_byte_view(buffer), dtype=np.uint8).copy()
