#!/usr/bin/env python3
"""Soak test: resident memory and frame accounting of the depth node over DDS and of process_bag
over a long synthetic bag.

Node: the installed depth_node (its own process, tiny model) receives --frames 640x480 images
with camera_info and a 32-line LiDAR sweep (every --lidar-every-th image) at --rate Hz from this
process, which records depth/image. The node's resident memory (VmRSS from /proc) is sampled
after --warmup frames and at the end. Frame accounting: every image the node received is either
processed, replaced before inference (latest-only: 'dropped'), skipped, or idle; the depth images
received here should equal the node's processed count (reliable outputs, nothing lost).

Bag: a --bag-frames synthetic recording (--bag-width x --bag-height, LiDAR) is written, then
process_bag runs on it in this process while a thread samples this process's VmRSS; reported at
--warmup-fraction of the run and at the end, and the summary's frame counts.

Target from issue 14: growth <= 5 MB between warm-up and the end. Prints measured numbers only.

    python bench/soak.py [--frames 20000] [--rate 15] [--warmup 500] [--bag-frames 2000]
                         [--no-node] [--no-bag] [--install-prefix WS/install]
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from fiffdepth_ros.demo.harness import NodeProcess, StreamClient, isolated_ros_env  # noqa: E402
from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402
from fiffdepth_ros.model.tiny import build_tiny_checkpoint  # noqa: E402


def rss_mb(pid: int | str = 'self') -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return float('nan')


def diagnostics(client) -> dict:
    if not client.count('diagnostics'):
        return {}
    return {kv.key: kv.value for kv in client.messages('diagnostics')[-1].status[0].values}


def soak_node(args, work: Path, model: Path) -> None:
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(8)]
    params = {'model': str(model), 'device': 'cpu', 'processing_res': args.processing_res,
              **room.static_lidar_params(), 'max_anchor_age': 0.2, 'publish_colorized': False, 'diagnostics_period': 1.0}
    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    node = NodeProcess(work / 'node', params, env=env, prefix=args.install_prefix)
    import rclpy
    rclpy.init()
    node.start()
    samples = []
    try:
        if not node.wait_for_log('ready:', 120):
            sys.exit('node did not start:\n' + node.log())
        client = StreamClient(outputs=['depth'], node_name='soak_camera')
        if not client.wait_for_node(30, lidar=True):
            sys.exit('no DDS connection to the node')
        period = 1.0 / args.rate
        t_start = time.time()
        rss_warm = None
        depth_here = 0          # depth images received here (the recorder is trimmed)
        for i in range(args.frames):
            client.publish_frame(room, frames[i % len(frames)], time.time_ns(),
                                 lidar=i % args.lidar_every == 0)
            if i == args.warmup:
                rss_warm = rss_mb(node.proc.pid)
            if i % 500 == 0:
                samples.append((i, rss_mb(node.proc.pid)))
                # The recorder keeps only counts: the soak must not measure its own growth.
                with client.lock:
                    depth = client.received['depth']
                    depth_here += max(len(depth) - 5, 0)
                    client.received['depth'] = depth[-5:]
                    client.received['diagnostics'] = client.received['diagnostics'][-5:]
            time.sleep(max(0.0, t_start + (i + 1) * period - time.time()))
        publish_s = time.time() - t_start
        time.sleep(3.0)
        rss_end = rss_mb(node.proc.pid)
        samples.append((args.frames, rss_end))
        diag = diagnostics(client)
        depth_here += client.count('depth')
        client.close()
    finally:
        code, stop_s = node.stop()
        rclpy.try_shutdown()
    received = int(diag.get('frames received', -1))
    processed = int(diag.get('frames processed', -1))
    dropped = int(diag.get('frames dropped', -1))
    skipped = int(diag.get('frames skipped', -1))
    accounted = processed + dropped + skipped
    print(f'node soak: {args.frames} frames 640x480 at {args.frames / publish_s:.1f} Hz for '
          f'{publish_s:.0f} s, LiDAR every {args.lidar_every} frames, processing_res '
          f'{args.processing_res}, tiny model')
    rows = [
        ('node RSS after warm-up (frame %d), MB' % args.warmup, f'{rss_warm:.1f}'),
        ('node RSS at the end, MB', f'{rss_end:.1f}'),
        ('growth, MB (target <= 5)', f'{rss_end - rss_warm:+.1f}'),
        ('RSS samples (frame: MB)', ', '.join(f'{i}: {m:.0f}' for i, m in samples)),
        ('images received by the node', str(received)),
        ('processed / dropped (latest-only) / skipped', f'{processed} / {dropped} / {skipped}'),
        ('received - (processed + dropped + skipped)', str(received - accounted)),
        ('published here - received by the node', str(args.frames - received)),
        ('depth images received here (node processed)', f'{depth_here} ({processed})'),
        ('metric outputs withheld (no fit)', diag.get('withheld frames (no scale fit)', '?')),
        ('shutdown', f'exit {code} in {stop_s:.2f} s'),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f'  {k:<{width}}  {v}')


def soak_bag(args, work: Path, model: Path) -> None:
    from fiffdepth_ros.bag.process_bag import process
    from fiffdepth_ros.bag.synthetic import (SyntheticBagSpec, lidar_extrinsic_params,
                                             write_synthetic_bag)
    spec = SyntheticBagSpec(frames=args.bag_frames, width=args.bag_width,
                            height=args.bag_height, lidar_lines=32, lidar_columns=1024,
                            distinct_scenes=16)
    t0 = time.time()
    room, _ = write_synthetic_bag(work / 'long', spec)
    write_s = time.time() - t0
    params = dict(lidar_extrinsic_params(room), processing_res=args.processing_res,
                  device='cpu', publish_colorized=False, cloud_type=args.bag_cloud)
    (work / 'p.yaml').write_text(yaml.safe_dump(params))
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.time(), rss_mb()))
            stop.wait(0.5)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    stats = process([str(work / 'long'), str(work / 'long_out'), '--model', str(model),
                     '--params', str(work / 'p.yaml'), '--lidar-topic', '/lidar/points',
                     '--no-progress'], log=lambda text: None)
    wall = time.time() - t0
    stop.set()
    sampler.join()
    warm_t = t0 + args.warmup_fraction * wall
    warm = next(m for t, m in samples if t >= warm_t)
    end = samples[-1][1]
    r = stats.read
    print(f'\nprocess_bag soak: {args.bag_frames} frames {args.bag_width}x{args.bag_height} + '
          f'LiDAR (bag written in {write_s:.0f} s), cloud_type {args.bag_cloud}, tiny model')
    rows = [
        (f'RSS at {args.warmup_fraction:.0%} of the run, MB', f'{warm:.1f}'),
        ('RSS at the end, MB', f'{end:.1f}'),
        ('growth, MB (target <= 5)', f'{end - warm:+.1f}'),
        ('RSS max, MB', f'{max(m for _, m in samples):.1f}'),
        ('images / processed / skipped / withheld',
         f'{r.images_in_window} / {stats.processed} / {stats.skipped_total} / '
         f'{sum(stats.withheld.values())}'),
        ('depth images written', str(next((n for t, n in stats.written.items()
                                           if t.endswith('depth/image')), 0))),
        ('wall time, s (frames/s)', f'{wall:.0f} ({stats.processed / wall:.1f})'),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f'  {k:<{width}}  {v}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=20000, help='node: images to publish')
    ap.add_argument('--rate', type=float, default=15.0, help='node: images per second')
    ap.add_argument('--warmup', type=int, default=500, help='node: frames before the first '
                    'memory sample')
    ap.add_argument('--lidar-every', type=int, default=3)
    ap.add_argument('--processing-res', type=int, default=128)
    ap.add_argument('--bag-frames', type=int, default=2000)
    ap.add_argument('--bag-width', type=int, default=320)
    ap.add_argument('--bag-height', type=int, default=240)
    ap.add_argument('--bag-cloud', default='xyz', choices=('xyz', 'xyzrgb', 'none'))
    ap.add_argument('--warmup-fraction', type=float, default=0.1)
    ap.add_argument('--no-node', action='store_true')
    ap.add_argument('--no-bag', action='store_true')
    ap.add_argument('--install-prefix', default=os.environ.get('FIFFDEPTH_TEST_INSTALL'))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix='fiffdepth_soak_') as tmp:
        work = Path(tmp)
        model = build_tiny_checkpoint(work / 'tiny')
        if not args.no_node:
            soak_node(args, work, model)
        if not args.no_bag:
            soak_bag(args, work, model)


if __name__ == '__main__':
    main()
