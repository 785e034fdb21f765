"""fiffdepth_ros: dense metric depth from one camera with FiffDepth, for ROS 2."""
__version__ = "0.1.0"
