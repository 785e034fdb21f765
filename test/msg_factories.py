"""Test helpers: message backends of both kinds and plain message stand-ins."""
from types import SimpleNamespace as NS

import numpy as np

from fiffdepth_ros.conversions.backends import RclpyBackend, RosbagsBackend

BACKENDS = [RclpyBackend(), RosbagsBackend()]
BACKEND_IDS = [b.name for b in BACKENDS]


def image_msg(array: np.ndarray, encoding: str, step: int | None = None,
              bigendian: bool = False):
    """A duck-typed sensor_msgs/Image holding ``array`` (rows padded to ``step`` bytes)."""
    array = np.ascontiguousarray(array)
    if bigendian:
        array = array.astype(array.dtype.newbyteorder('>'))
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    step = row.shape[1] if step is None else step
    data = np.zeros((h, step), np.uint8)
    data[:, :row.shape[1]] = row
    return NS(header=NS(stamp=NS(sec=1, nanosec=2), frame_id='cam'), height=h, width=w,
              encoding=encoding, is_bigendian=int(bigendian), step=step,
              data=data.tobytes())
