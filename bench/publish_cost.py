#!/usr/bin/env python3
"""What each output costs to build and to publish, against its size: the node's messages for
one 640x480 frame (the synthetic room, its true depth as the metric depth), built by the
node's converters and published over Fast DDS (the package's large-data profile, the node's
output QoS) to a subscriber in another process that counts what arrives.

    python bench/publish_cost.py [--rounds 40] [--width 640 --height 480]

Printed per message: bytes, build and publish medians (p10-p90) in ms, publish MB/s, and how
many of the published messages the subscriber received. Rounds are interleaved (one of each
message per round) so that every row sees the same machine. The node builds and publishes an
output only while someone subscribes to it (test/test_node_lazy_outputs.py); this is what each
one costs when someone does, and what a smaller variant (16UC1, a strided or unorganised
cloud) saves.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.conversions.backends import RclpyBackend  # noqa: E402
from fiffdepth_ros.conversions.colorize import colorize_depth  # noqa: E402
from fiffdepth_ros.conversions.depth_image import (depth_to_image_msg,  # noqa: E402
                                                   rgb_to_image_msg)
from fiffdepth_ros.conversions.pointcloud import DepthCloudBuilder  # noqa: E402
from fiffdepth_ros.demo.harness import isolated_ros_env  # noqa: E402
from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402

SUBSCRIBER = r'''
import sys, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import Image, PointCloud2
rclpy.init()
node = rclpy.create_node('publish_cost_subscriber')
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
counts = {}
for topic, kind in (t.split(':') for t in sys.argv[1:]):
    node.create_subscription(Image if kind == 'image' else PointCloud2, topic,
                             lambda m, t=topic: counts.__setitem__(t, counts.get(t, 0) + 1), qos)
print('ready', flush=True)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
print(' '.join(f'{t}={n}' for t, n in counts.items()), flush=True)
'''


def variants(room, frame, backend):
    """name -> (topic kind, build function) for the node's outputs and their variants."""
    depth = np.where(frame.depth <= 20.0, frame.depth, np.nan).astype(np.float32)
    header = backend.header(time.time_ns(), 'camera_optical')
    clouds = DepthCloudBuilder()

    def cloud(rgb, stride=1, organized=True):
        return lambda: clouds.build(depth, room.camera, header, backend,
                                    rgb=frame.rgb if rgb else None, min_range=0.1,
                                    max_range=20.0, stride=stride, organized=organized)
    return {
        'depth 32FC1': ('image', lambda: depth_to_image_msg(depth, header, backend, '32FC1')),
        'depth 16UC1': ('image', lambda: depth_to_image_msg(depth, header, backend, '16UC1')),
        'colorized rgb8': ('image', lambda: rgb_to_image_msg(colorize_depth(depth), header,
                                                             backend)),
        'points xyz': ('cloud', cloud(False)),
        'points xyzrgb': ('cloud', cloud(True)),
        'points xyzrgb stride 2': ('cloud', cloud(True, 2)),
        'points xyzrgb stride 4': ('cloud', cloud(True, 4)),
        'points xyzrgb unorganised': ('cloud', cloud(True, 1, False)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rounds', type=int, default=40)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--gap', type=float, default=0.02,
                    help='seconds between publishes (the subscriber drains meanwhile)')
    args = ap.parse_args()

    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2

    room = SyntheticRoom(args.width, args.height, lidar_lines=32)
    frame = room.render()
    backend = RclpyBackend()
    table = variants(room, frame, backend)
    topics = {name: f'/bench/{name.replace(" ", "_").lower()}' for name in table}
    sub = subprocess.Popen([sys.executable, '-c', SUBSCRIBER]
                           + [f'{topics[n]}:{kind}' for n, (kind, _) in table.items()],
                           env=env, stdout=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node('publish_cost')
    # The node's output QoS (qos_output_reliability reliable, qos_output_depth 1).
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                     reliability=ReliabilityPolicy.RELIABLE)
    pubs = {n: node.create_publisher(Image if kind == 'image' else PointCloud2, topics[n], qos)
            for n, (kind, _) in table.items()}
    try:
        if sub.stdout.readline().strip() != 'ready':
            sys.exit('subscriber did not start')
        deadline = time.monotonic() + 30
        while not all(p.get_subscription_count() for p in pubs.values()):
            if time.monotonic() > deadline:
                sys.exit('subscriber not discovered')
            time.sleep(0.05)
        time.sleep(0.5)
        build = {n: [] for n in table}
        publish = {n: [] for n in table}
        size = {}
        for r in range(args.rounds + 2):               # two warm-up rounds
            for name, (_, make) in table.items():
                t0 = time.perf_counter()
                msg = make()
                t1 = time.perf_counter()
                pubs[name].publish(msg)
                t2 = time.perf_counter()
                size[name] = len(msg.data)
                if r >= 2:
                    build[name].append((t1 - t0) * 1e3)
                    publish[name].append((t2 - t1) * 1e3)
                time.sleep(args.gap)
        time.sleep(1.0)
    finally:
        sub.send_signal(2)
        received_line = sub.communicate(timeout=20)[0].strip().splitlines()
        node.destroy_node()
        rclpy.try_shutdown()
    got = dict(kv.split('=') for kv in (received_line[-1].split() if received_line else []))

    print(f'# publish cost: {args.width}x{args.height}, Fast DDS large-data profile, reliable '
          f'depth 1, subscriber in another process; {args.rounds} rounds interleaved; CPU cores '
          f'{len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}')
    print(f'{"message":<28} {"MB":>6} {"build ms":>18} {"publish ms":>18} {"publish MB/s":>12} '
          f'{"received":>9}')
    ref = np.median(publish['points xyzrgb'])
    for name in table:
        b, p = np.percentile(build[name], [50, 10, 90]), np.percentile(publish[name], [50, 10, 90])
        mb = size[name] / 1e6
        print(f'{name:<28} {mb:6.2f} {b[0]:6.2f} ({b[1]:.2f}-{b[2]:.2f}) '
              f'{p[0]:6.2f} ({p[1]:.2f}-{p[2]:.2f}) {mb / (p[0] / 1e3):12.0f} '
              f'{got.get(topics[name], "?"):>5}/{args.rounds + 2}')
    print(f'publish of the full xyzrgb cloud = 1.00; stride 2: '
          f'{np.median(publish["points xyzrgb stride 2"]) / ref:.2f}, '
          f'depth 32FC1: {np.median(publish["depth 32FC1"]) / ref:.2f}')


if __name__ == '__main__':
    main()
