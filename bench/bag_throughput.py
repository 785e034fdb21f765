#!/usr/bin/env python3
"""Throughput of ``process_bag`` on a 640x480 recording: frames per second and model share.

Generates a rosbag2 bag in a temporary folder (default 300 frames at 10 Hz of the synthetic
room: raw rgb8 images, camera_info and a 32-line LiDAR sweep per frame), then runs the real
command line (``fiffdepth_ros.bag.process_bag.process``) on it with LiDAR anchors and the
default outputs (32FC1 depth, camera_info, organised xyzrgb cloud, colourised depth):

  * with a tiny random model (its forward pass is cheap, so the rest - reading, decoding,
    scale fit, message building, serialising, writing - shows), and
  * with the full-size Stable Diffusion 2 UNet + VAE (random weights: a forward pass costs the
    same whatever the values) at a low processing resolution; on a CPU this is seconds per
    frame, so it processes only the first --sd2-frames frames and says so.

Per row: wall time (model load excluded, first-frame warm-up included), frames per second, the
share of wall time spent inside the model (batched predict calls), and the busy time per frame
of the stages that run beside the model in their own threads. The overhead to drive down is
wall time minus model time.

    python bench/bag_throughput.py [--frames 300] [--tiny-res 256] [--sd2-res 256]
                                   [--sd2-frames 8] [--no-sd2] [--device auto] [--batch-size N]
                                   [-p NAME:=VALUE ...]
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from fiffdepth_ros.bag.process_bag import process  # noqa: E402
from fiffdepth_ros.bag.synthetic import (SyntheticBagSpec, lidar_extrinsic_params,  # noqa: E402
                                         write_synthetic_bag)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 2**20


def model_alone_ms(model, res, device, image, repeats):
    """Median time of one predict on the image with nothing else running (after a warm-up):
    what the model costs without the contention of the stages beside it."""
    from fiffdepth_ros.model.estimator import DepthEstimator
    est = DepthEstimator.from_pretrained(str(model), device=device, processing_res=res)
    est.predict(image)
    times = []
    for _ in range(repeats):
        if est.device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        est.predict(image)
        if est.device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del est
    return 1e3 * sorted(times)[len(times) // 2]


def run_row(label, bag, out, model, params_file, res, device, frames, rate_hz, batch, storage,
            extra=()):
    argv = [str(bag), str(out), '--model', str(model), '--params', str(params_file),
            '--lidar-topic', '/lidar/points', '--processing-res', str(res), '--device', device,
            '--storage', storage, '--no-progress', '--overwrite']
    for assignment in extra:
        argv += ['-p', assignment]
    if frames is not None:      # the first `frames` images (bag starts 1 ms before image 0)
        argv += ['--end', f'{(frames - 0.5) / rate_hz:.4f}']
    if batch:
        argv += ['--batch-size', str(batch)]
    quiet = lambda text: None   # noqa: E731  (the summary is parsed from RunStats instead)
    stdout = sys.stdout
    sys.stdout = open(os.devnull, 'w')
    try:
        stats = process(argv, log=quiet)
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    n = stats.processed
    busy = {k: 1e3 * v / max(n, 1) for k, v in stats.stage_s.items()}
    return dict(label=label, res=res, frames=n, wall=stats.wall_s, fps=n / stats.wall_s,
                model=stats.model_s, share=stats.model_s / stats.wall_s,
                busy=busy, skipped=stats.skipped_total,
                metric=stats.metric_frames, mb=folder_mb(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--tiny-res', type=int, default=256, help='processing_res of the tiny row')
    ap.add_argument('--sd2-res', type=int, default=256, help='processing_res of the SD2 row')
    ap.add_argument('--sd2-frames', type=int, default=8,
                    help='frames for the SD2 row on a CPU (all --frames on CUDA)')
    ap.add_argument('--no-sd2', action='store_true')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--batch-size', type=int, default=0, help='0: process_bag default')
    ap.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    ap.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                    help='extra process_bag parameter for every row (e.g. cloud_type:=none)')
    ap.add_argument('--sd2-dir', default=None,
                    help='where to keep the SD2-size checkpoint (1.9 GB; default: a cache '
                    'folder reused between runs)')
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device in ('auto', 'cuda')

    print(f'# process_bag throughput: {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPU cores, torch {torch.__version__}'
          + (f', CUDA {torch.cuda.get_device_name()}' if cuda else ', no CUDA')
          + f'; load average before: {os.getloadavg()[0]:.2f}')
    with tempfile.TemporaryDirectory(prefix='fiffdepth_bag_bench_') as tmp:
        tmp = Path(tmp)
        spec = SyntheticBagSpec(frames=args.frames, width=640, height=480, lidar_lines=32,
                                lidar_columns=1024, distinct_scenes=30)
        t0 = time.perf_counter()
        room, _ = write_synthetic_bag(tmp / 'in', spec, storage=args.storage)
        if args.param:
            print(f"# extra parameters: {' '.join(args.param)}")
        print(f'# input: {args.frames} frames 640x480 rgb8 + camera_info + 32x1024 LiDAR, '
              f'{folder_mb(tmp / "in"):.0f} MB {args.storage}, written in '
              f'{time.perf_counter() - t0:.1f} s')
        params = dict(lidar_extrinsic_params(room))
        (tmp / 'params.yaml').write_text(yaml.safe_dump(
            {'depth_node': {'ros__parameters': params}}))

        from fiffdepth_ros.model.tiny import build_sd2_checkpoint, build_tiny_checkpoint
        image = room.render().rgb
        rows = []
        tiny = build_tiny_checkpoint(tmp / 'tiny')
        rows.append(run_row('tiny', tmp / 'in', tmp / 'out', tiny, tmp / 'params.yaml',
                            args.tiny_res, args.device, None, spec.rate_hz, args.batch_size,
                            args.storage, args.param))
        # process() has set torch's CPU threads as process_bag does; the same apply here.
        rows[-1]['alone_ms'] = model_alone_ms(tiny, args.tiny_res, args.device, image, 20)
        if not args.no_sd2:
            sd2_dir = Path(args.sd2_dir or Path(os.environ.get(
                'FIFFDEPTH_CACHE', Path.home() / '.cache' / 'fiffdepth_ros')) / 'bench_sd2')
            t0 = time.perf_counter()
            sd2 = build_sd2_checkpoint(sd2_dir)
            print(f'# SD2-size checkpoint at {sd2} ready in {time.perf_counter() - t0:.0f} s')
            frames = None if cuda else min(args.sd2_frames, args.frames)
            rows.append(run_row('SD2 full size', tmp / 'in', tmp / 'out', sd2,
                                tmp / 'params.yaml', args.sd2_res, args.device, frames,
                                spec.rate_hz, args.batch_size, args.storage, args.param))
            rows[-1]['alone_ms'] = model_alone_ms(sd2, args.sd2_res, args.device, image, 3)

    print(f'# load average after: {os.getloadavg()[0]:.2f} (other processes share these cores)')
    print()
    print('| model | processing_res | frames | wall s | frames/s | model s | model share '
          '| wall ms/frame | model in run ms/frame | model alone ms/frame '
          '| busy ms/frame beside the model (read+decode / finish / write) '
          '| metric frames | output MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        b = r['busy']
        n = max(r['frames'], 1)
        print(f"| {r['label']} | {r['res']} | {r['frames']} | {r['wall']:.1f} | {r['fps']:.2f} "
              f"| {r['model']:.1f} | {100 * r['share']:.0f}% | {1e3 * r['wall'] / n:.0f} "
              f"| {1e3 * r['model'] / n:.0f} | {r['alone_ms']:.0f} "
              f"| {b['read+decode']:.1f} / {b['finish']:.1f} / {b['write']:.1f} "
              f"| {r['metric']} | {r['mb']:.0f} |")
    if not args.no_sd2 and not cuda:
        print(f'\nSD2 row: only the first {rows[-1]["frames"]} of {args.frames} frames (seconds '
              'per frame on this CPU); its fps is over those frames.')
    print('wall: from the first read to the closed output bag (model loading excluded, the '
          "first frame's warm-up included). model share = time inside predict / wall; the rest "
          'is overhead. "model alone" is one predict with nothing beside it (median after a '
          'warm-up): where it is below "model in run", the stages beside the model slow it '
          'down by competing for the cores.')


if __name__ == '__main__':
    main()
