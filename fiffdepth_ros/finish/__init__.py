"""Finishing a frame in torch on the model's device (CUDA): the per-pixel work where the depth
already is, one copy of the finished bytes to the host.

- ``lidar``: LiDAR projection, z-buffer and occlusion filter (``scale.anchors.lidar_anchors``)
- ``depth``: the scale recovery plan applied densely, range clip, 16UC1 millimetres
- ``local_correction``: the local correction's dense read (its coarse grid from the anchors is
  built on the host by ``scale.local_correction.correction_grid``)
- ``cloud``: the organised cloud's back-projection and packing (``conversions.pointcloud``)
- ``device``: ``DeviceFinisher``, which the pipeline uses when the model runs on CUDA

Every function gives the bytes its numpy twin gives (tests run both on the CPU device), except
the local correction: equal to float32 rounding (torch's and numpy's log differ in the last
bits). The numpy path stays the one for CPU models: on a CPU, torch has no advantage and costs
import time.
"""
