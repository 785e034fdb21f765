"""A message backend for benchmarks on machines without ROS and without rosbags (the GPU check
kit's bare CUDA machine): messages are plain namespaces with the ROS field names, ``data`` a
uint8 numpy array (one copy, as the rosbags backend keeps it). Nothing serialises them: what
publishing would cost on top is not measured with this backend.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fiffdepth_ros.conversions.backends import MessageBackend, _as_byte_view


class PlainBackend(MessageBackend):
    name = 'plain'

    def _make(self, type_name: str, **fields):
        return SimpleNamespace(**fields)

    def blob(self, buffer):
        return np.frombuffer(_as_byte_view(buffer), dtype=np.uint8).copy()


def backend(name: str):
    """'rclpy' (with serialize_message), 'plain' (no serialisation) or 'auto' (rclpy when it
    imports). Returns (backend, serialise function or None)."""
    if name in ('auto', 'rclpy'):
        try:
            from rclpy.serialization import serialize_message

            from fiffdepth_ros.conversions.backends import RclpyBackend
            return RclpyBackend(), serialize_message
        except ImportError:
            if name == 'rclpy':
                raise
    return PlainBackend(), None
