"""Message <-> array conversions shared by the node (rclpy) and the bag processor (rosbags)."""
from .camera_info import scale_camera_info
from .colorize import ColorizeError, colorize_depth
from .depth_image import depth_to_image_msg, rgb_to_image_msg
from .images import (SUPPORTED_ENCODINGS, ImageConversionError, compressed_to_rgb,
                     image_msg_to_depth, image_msg_to_float, image_to_rgb, message_to_rgb)
from .pointcloud import DepthCloudBuilder, PointCloudError, pointcloud_to_xyz, xyz_to_pointcloud

__all__ = ['ColorizeError', 'DepthCloudBuilder', 'ImageConversionError', 'PointCloudError',
           'SUPPORTED_ENCODINGS', 'colorize_depth', 'compressed_to_rgb', 'depth_to_image_msg',
           'image_msg_to_depth', 'image_msg_to_float', 'image_to_rgb', 'message_to_rgb',
           'pointcloud_to_xyz', 'rgb_to_image_msg', 'scale_camera_info', 'xyz_to_pointcloud']
