"""camera <- LiDAR extrinsic: tf2 when available, the static parameters otherwise."""
from __future__ import annotations

from ..geometry.transforms import RigidTransform
from ..pipeline import StaticExtrinsic


class ExtrinsicResolver:
    """Callable (camera_frame, cloud_frame, stamp_ns) -> camera_from_cloud RigidTransform."""

    def __init__(self, node, static: StaticExtrinsic, use_tf: bool):
        self.static = static
        self.tf_buffer = None
        self.tf_error: str | None = None
        if use_tf:
            try:
                import tf2_ros
            except ImportError:
                self.tf_error = 'tf2_ros is not installed: using the static lidar_* parameters'
            else:
                self.tf_buffer = tf2_ros.Buffer()
                self._listener = tf2_ros.TransformListener(self.tf_buffer, node)

    def __call__(self, camera_frame: str, cloud_frame: str, stamp_ns: int) -> RigidTransform:
        if camera_frame == cloud_frame:
            return RigidTransform.identity()
        if self.tf_buffer is not None:
            from rclpy.duration import Duration
            from rclpy.time import Time
            try:
                stamped = self.tf_buffer.lookup_transform(
                    camera_frame, cloud_frame, Time(nanoseconds=stamp_ns),
                    timeout=Duration(seconds=0.0))
                return RigidTransform.from_msg(stamped.transform)
            except Exception as exc:   # tf2 lookup/extrapolation/connectivity errors
                return self.static.fallback(
                    camera_frame, cloud_frame,
                    f'tf2 has no {camera_frame} <- {cloud_frame} transform ({exc})')
        return self.static.camera_from(camera_frame, cloud_frame)
