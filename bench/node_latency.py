#!/usr/bin/env python3
"""Latency and throughput of the running depth_node over real DDS: the sequential worker and
the overlapped one (``overlap_stages``) side by side, in one run.

For each layout, the installed node (its own process, tiny model) receives 640x480 images,
camera_info and a 32-line LiDAR sweep at --rate Hz for --seconds from this process, which
records depth/image and depth/points. Printed per layout: output rate, latency (image stamp ->
receipt here) over the steady state (the first --warmup seconds left out) with its maximum, the
node's own statistics (receipt -> publish, per-frame overhead beside the forward pass, the part
of it that delays the next inference, stage medians, publish cost per output and size), and
the ratios overlapped / sequential; plus the bare DepthEstimator.predict time in this process.

    python bench/node_latency.py [--rate 30] [--seconds 20] [--processing-res 128]
                                 [--modes sequential,overlapped] [--warmup 5]
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

MODES = {'sequential': 'off', 'overlapped': 'on'}


def bare_predict_ms(model: Path, frames, processing_res: int) -> float:
    from fiffdepth_ros.model.estimator import DepthEstimator
    estimator = DepthEstimator.from_pretrained(str(model), device='cpu',
                                               processing_res=processing_res)
    estimator.predict(frames[0].rgb)
    times = []
    for f in frames * 3:
        t0 = time.perf_counter()
        estimator.predict(f.rgb)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def run_layout(mode: str, args, work: Path, model: Path, room, frames) -> dict:
    """One node process with ``overlap_stages`` for ``mode``, streamed for args.seconds."""
    params = {'model': str(model), 'device': 'cpu', 'processing_res': args.processing_res,
              **room.static_lidar_params(), 'publish_colorized': False, 'diagnostics_period': 1.0,
              'cloud_type': args.cloud_type, 'overlap_stages': MODES[mode]}
    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    node = NodeProcess(work / f'node_{mode}', params, env=env, prefix=args.install_prefix)
    import rclpy
    rclpy.init()
    node.start()
    try:
        if not node.wait_for_log('ready:', 120):
            sys.exit('node did not start:\n' + node.log())
        outputs = ['depth', 'points'] if args.cloud_type != 'none' else ['depth']
        # Only stamps are kept: the clouds alone would take ~10 MB each in this process.
        stamp_of = lambda m: stamp_to_ns(m.header.stamp)  # noqa: E731
        client = StreamClient(outputs=outputs, node_name='bench_camera',
                              keep={'depth': stamp_of, 'points': stamp_of})
        if not client.wait_for_node(30, lidar=True):
            sys.exit('no DDS connection to the node')
        period = 1.0 / args.rate
        n = int(args.seconds * args.rate)
        sent = {}
        lidar_every = max(1, round(args.rate / args.lidar_rate))
        t_start = time.time()
        for i in range(n):
            stamp = time.time_ns()
            client.publish_frame(room, frames[i % len(frames)], stamp,
                                 lidar=i % lidar_every == 0)
            sent[stamp] = i
            time.sleep(max(0.0, t_start + (i + 1) * period - time.time()))
        publish_s = time.time() - t_start
        # The node's statistics of the stream (its last report while frames still came in).
        diags = [(t_rx, {kv.key: kv.value for kv in m.status[0].values})
                 for t_rx, m in client.received['diagnostics']]
        time.sleep(2.0)
        received = [(t_rx, s) for t_rx, s in client.received['depth'] if s in sent]
        clouds = client.count('points')
        client.close()
    finally:
        code, stop_s = node.stop()
        rclpy.try_shutdown()
    steady = [(t_rx - s * 1e-9) * 1e3 for t_rx, s in received if t_rx >= t_start + args.warmup]
    rx = [t_rx for t_rx, s in received if t_rx >= t_start + args.warmup]
    diag = diags[-1][1] if diags else {}
    return {
        'published': n, 'publish_hz': n / publish_s, 'received': len(received),
        'clouds': clouds, 'lidar_hz': args.rate / lidar_every,
        'rate': (len(rx) - 1) / (rx[-1] - rx[0]) if len(rx) > 1 else 0.0,
        'lat': np.percentile(steady, [50, 99, 100]) if steady else [np.nan] * 3,
        'over_1s': sum(v > 1000 for v in steady), 'diag': diag,
        'stop': f'{stop_s:.2f} s (exit code {code})',
    }


def _num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float('nan')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--seconds', type=float, default=20.0, help='per layout')
    ap.add_argument('--processing-res', type=int, default=128)
    ap.add_argument('--lidar-rate', type=float, default=10.0,
                    help='LiDAR sweeps per second (a sweep goes with every k-th image)')
    ap.add_argument('--cloud-type', default='xyzrgb', choices=('xyz', 'xyzrgb', 'none'))
    ap.add_argument('--modes', default='sequential,overlapped',
                    help='comma-separated layouts to run, in order')
    ap.add_argument('--warmup', type=float, default=5.0,
                    help='seconds at the start of each stream left out of the latency figures')
    ap.add_argument('--install-prefix', default=os.environ.get('FIFFDEPTH_TEST_INSTALL'))
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f'unknown layout(s) {unknown}; choose from {list(MODES)}')

    work = Path(tempfile.mkdtemp(prefix='fiffdepth_bench_'))
    model = build_tiny_checkpoint(work / 'tiny')
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(8)]     # pre-rendered: publish cost only
    bare = bare_predict_ms(model, frames, args.processing_res)
    results = {mode: run_layout(mode, args, work, model, room, frames) for mode in modes}

    first = results[modes[0]]
    print(f'depth_node, tiny model, 640x480, processing_res {args.processing_res}, LiDAR 32x1024 '
          f'at {first["lidar_hz"]:.0f} Hz, cloud {args.cloud_type}; {args.seconds:g} s per layout '
          f'at {args.rate:g} Hz, latency over the steady state (first {args.warmup:g} s left out); '
          f'CPU cores {len(os.sched_getaffinity(0))}, load average before: '
          f'{os.getloadavg()[0]:.2f}')
    d = {m: r['diag'] for m, r in results.items()}
    rows = [
        ('frames published (rate Hz)', {m: f'{r["published"]} ({r["publish_hz"]:.1f})'
                                        for m, r in results.items()}, None),
        ('depth images / clouds received', {m: f'{r["received"]} / {r["clouds"]}'
                                            for m, r in results.items()}, None),
        ('output rate (Hz, steady state)', {m: r['rate'] for m, r in results.items()}, 'rate'),
        ('latency stamp->receipt p50 (ms)', {m: r['lat'][0] for m, r in results.items()}, None),
        ('latency stamp->receipt p99 (ms)', {m: r['lat'][1] for m, r in results.items()}, None),
        ('latency stamp->receipt max (ms)', {m: r['lat'][2] for m, r in results.items()}, None),
        ('  p99 / p50', {m: r['lat'][1] / r['lat'][0] for m, r in results.items()}, None),
        ('  frames later than 1 s', {m: r['over_1s'] for m, r in results.items()}, None),
    ]
    for key, label in (('latency median (ms)', 'node: latency stamp->publish p50 (ms)'),
                       ('latency p99 (ms)', 'node: latency stamp->publish p99 (ms)'),
                       ('latency max (ms)', 'node: latency stamp->publish max (ms)'),
                       ('node latency median (ms)', 'node: receipt->publish p50 (ms)'),
                       ('node latency p99 (ms)', 'node: receipt->publish p99 (ms)'),
                       ('frames dropped', 'node: frames replaced before inference'),
                       ('inference median (ms)', 'node: inference median (ms)'),
                       ('overhead median (ms)', 'node: overhead median (ms, all but the model)'),
                       ('critical path overhead median (ms)',
                        'node: critical-path overhead (ms, delays the next inference)')):
        rows.append((label, {m: _num(d[m].get(key)) for m in modes}, None))
    rows.append(('node: latency window', {m: d[m].get('latency window', '?') for m in modes},
                 None))
    rows.append(('node: stage medians (ms)', {m: d[m].get('stage medians (ms)', '?')
                                              for m in modes}, None))
    rows.append(('node: publish per output (size, ms)',
                 {m: d[m].get('publish medians (data size, ms)', '?') for m in modes}, None))
    rows.append(('node shutdown on SIGINT', {m: r['stop'] for m, r in results.items()}, None))

    def fmt(v):
        return f'{v:.1f}' if isinstance(v, (float, np.floating)) else str(v)

    width = max(len(label) for label, _, _ in rows)
    print(f'{"":<{width}}  ' + '  '.join(f'{m:>12}' for m in modes)
          + ('  overlapped/sequential' if len(modes) == 2 else ''))
    for label, values, _ in rows:
        cells = [fmt(values[m]) for m in modes]
        if any(len(c) > 12 for c in cells):          # long texts: one line per layout
            for m, c in zip(modes, cells):
                print(f'{label + " [" + m + "]":<{width}}  {c}')
            continue
        line = f'{label:<{width}}  ' + '  '.join(f'{c:>12}' for c in cells)
        if set(modes) == set(MODES) and all(isinstance(values[m], (int, float, np.floating))
                                            for m in modes) and values['sequential']:
            line += f'  {values["overlapped"] / values["sequential"]:.2f}x'
        print(line)
    print(f'bare DepthEstimator.predict median (ms, this process): {bare:.1f}')


if __name__ == '__main__':
    main()
