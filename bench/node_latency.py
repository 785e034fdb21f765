#!/usr/bin/env python3
"""Latency and throughput of the running depth_node over real DDS.

The installed node (its own process, tiny model) receives 640x480 images, camera_info and a
32-line LiDAR sweep at --rate Hz for --seconds from this process, which records depth/image and
depth/points. Printed: output rate, median / p99 latency (image stamp -> receipt here), dropped
frames, and the node's own per-frame overhead (everything but the model forward pass, from its
diagnostics) beside the raw inference time; plus, measured in this process on the same model,
the bare DepthEstimator.predict time for comparison.

    python bench/node_latency.py [--rate 30] [--seconds 20] [--processing-res 128]
                                 [--install-prefix WS/install]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.conversions.backends import stamp_to_ns  # noqa: E402
from fiffdepth_ros.demo.harness import NodeProcess, StreamClient, isolated_ros_env  # noqa: E402
from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402
from fiffdepth_ros.model.tiny import build_tiny_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--seconds', type=float, default=20.0)
    ap.add_argument('--processing-res', type=int, default=128)
    ap.add_argument('--lidar-rate', type=float, default=10.0,
                    help='LiDAR sweeps per second (a sweep goes with every k-th image)')
    ap.add_argument('--install-prefix', default=os.environ.get('FIFFDEPTH_TEST_INSTALL'))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix='fiffdepth_bench_'))
    model = build_tiny_checkpoint(work / 'tiny')
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(8)]     # pre-rendered: publish cost only

    from fiffdepth_ros.model.estimator import DepthEstimator
    estimator = DepthEstimator.from_pretrained(str(model), device='cpu',
                                               processing_res=args.processing_res)
    estimator.predict(frames[0].rgb)
    bare = []
    for f in frames * 3:
        t0 = time.perf_counter()
        estimator.predict(f.rgb)
        bare.append((time.perf_counter() - t0) * 1e3)
    del estimator

    t, q = room.camera_from_lidar.translation, room.camera_from_lidar.quaternion
    params = {'model': str(model), 'device': 'cpu', 'processing_res': args.processing_res,
              'use_lidar': True, 'lidar_use_tf': False,
              'lidar_translation': [float(v) for v in t],
              'lidar_rotation': [float(v) for v in q],
              'lidar_parent_frame': 'camera_optical', 'lidar_child_frame': 'lidar',
              'publish_colorized': False, 'diagnostics_period': 1.0}
    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    node = NodeProcess(work / 'node', params, env=env, prefix=args.install_prefix)
    import rclpy
    rclpy.init()
    node.start()
    try:
        if not node.wait_for_log('ready:', 120):
            sys.exit('node did not start:\n' + node.log())
        client = StreamClient(outputs=['depth', 'points'], node_name='bench_camera')
        if not client.wait_for_node(30, lidar=True):
            sys.exit('no DDS connection to the node')
        period = 1.0 / args.rate
        n = int(args.seconds * args.rate)
        sent = {}
        t_start = time.time()
        lidar_every = max(1, round(args.rate / args.lidar_rate))
        for i in range(n):
            stamp = time.time_ns()
            client.publish_frame(room, frames[i % len(frames)], stamp,
                                 lidar=i % lidar_every == 0)
            sent[stamp] = i
            time.sleep(max(0.0, t_start + (i + 1) * period - time.time()))
        publish_s = time.time() - t_start
        time.sleep(2.0)
        received = client.received['depth']
        latencies = [(t_rx - stamp_to_ns(m.header.stamp) * 1e-9) * 1e3 for t_rx, m in received
                     if stamp_to_ns(m.header.stamp) in sent]
        rx_times = [t_rx for t_rx, m in received]
        out_rate = (len(rx_times) - 1) / (rx_times[-1] - rx_times[0]) if len(rx_times) > 1 else 0
        diag = {kv.key: kv.value for kv in client.messages('diagnostics')[-1].status[0].values} \
            if client.count('diagnostics') else {}
        client.close()
    finally:
        code, stop_s = node.stop()
        rclpy.try_shutdown()

    print(f'depth_node, tiny model, 640x480, processing_res {args.processing_res}, LiDAR 32x1024 '
          f'at {args.rate / lidar_every:.0f} Hz, cloud xyzrgb; published {n} frames at '
          f'{n / publish_s:.1f} Hz for {publish_s:.1f} s')
    rows = [
        ('frames published', f'{n}'),
        ('depth images received', f'{len(received)}'),
        ('clouds received', f'{client.count("points")}'),
        ('output rate (Hz)', f'{out_rate:.2f}'),
        ('latency median (ms, image stamp -> receipt here)', f'{np.median(latencies):.1f}'),
        ('latency p99 (ms, image stamp -> receipt here)', f'{np.percentile(latencies, 99):.1f}'),
        ('latency median (ms, image stamp -> node publish)',
         diag.get('latency median (ms)', '?')),
        ('latency p99 (ms, image stamp -> node publish)', diag.get('latency p99 (ms)', '?')),
        ('frames dropped (node: replaced before inference)', diag.get('frames dropped', '?')),
        ('frames not answered (published - received)', f'{n - len(received)}'),
        ('node inference median (ms)', diag.get('inference median (ms)', '?')),
        ('node overhead median (ms, all but the forward pass)',
         diag.get('overhead median (ms)', '?')),
        ('  where it goes (node stage medians, ms)', diag.get('stage medians (ms)', '?')),
        ('bare DepthEstimator.predict median (ms, this process)', f'{np.median(bare):.1f}'),
        ('node shutdown on SIGINT (s)', f'{stop_s:.2f} (exit code {code})'),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f'{k:<{width}}  {v}')


if __name__ == '__main__':
    main()
