"""Offline processing of rosbag2 recordings with the node's pipeline (``process_bag``).

reader      open a bag (folder, .mcap/.db3 file or ROS 1 .bag files), list topics (names
            normalised to a leading slash), raw ROS 2 messages in time order
ros1        ROS 1 .bag input through rosbags' AnyReader, converted to ROS 2 types
topics      which topics feed the pipeline; where the outputs go
frames      raw messages -> matched frames in bag order (look-ahead for late companions)
tf_static   camera <- LiDAR extrinsic from the bag's /tf_static or the static parameters
runner      read / infer / finish / write stages in threads around the shared DepthPipeline
writer      the output bag (MCAP or sqlite3), copies of input topics
summary     counts, skips, anchors, scale and time of a run
process_bag the command line
process_bags many recordings: inputs (paths, folders, globs, @lists), jobs (.partial outputs
            renamed when complete), fleet (on Ray, optional: reader and writer actors near
            the data, model actors that only predict), fleet_report (bar and table)
synthetic   synthetic recordings with known metric truth (tests, benchmark)

Only ``rosbags`` is needed: no ROS installation, no rclpy.
"""
