#!/usr/bin/env python3
"""Throughput of ``process_bags``: bags/s and frames/s, sequential vs Ray with 1 and 2 workers.

Writes --bags synthetic recordings (--frames each, 10 Hz, raw rgb8 + camera_info + LiDAR) and
one long recording, builds the tiny random model, then measures:

  sequential   run_sequential: one model in this process, bags one after another (no Ray)
  ray 1 / 2    run_fleet on a local Ray instance with that many model actors (1 CPU each);
               every bag read by a reader actor, finished and written by a writer actor
  long bag     the long recording alone: sequential, and on Ray with 2 model actors (its
               batches spread over both)

Per row: processing wall time (Ray start-up and actor start-up, which include the model load,
are timed apart), bags/s, frames/s, the ratio to the 1-worker row (the long bag on Ray: to its
sequential run), and where the time goes: busy milliseconds per frame reading + decoding, in
the model, finishing (scale fit, messages, CDR) and writing (on Ray each in its own process, so
they overlap). At the end the resident and peak memory of every Ray actor (model actors,
readers, writers). Outputs are checked to be identical message for message to the sequential
ones, so the numbers are for the same work.

    python bench/fleet_throughput.py [--bags 6] [--frames 40] [--res 128] [--width 320]
                                     [--long-frames 120]

The CPU count matters: with 2 cores shared with other jobs, the actors compete with everything
else on the machine; the load average is printed before and after.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from fiffdepth_ros.bag.inputs import expand_inputs  # noqa: E402
from fiffdepth_ros.bag.process_bag import resolve_params  # noqa: E402
from fiffdepth_ros.bag.process_bags import build_parser, run_sequential  # noqa: E402
from fiffdepth_ros.bag.reader import BagReader  # noqa: E402
from fiffdepth_ros.bag.synthetic import (SyntheticBagSpec, lidar_extrinsic_params,  # noqa: E402
                                         write_synthetic_bag)


def contents(path):
    with BagReader(path) as reader:
        return [(m.topic, m.bag_time_ns, bytes(m.data)) for m in reader.messages()]


def row(label, outcomes, wall, base=None):
    done = [o for o in outcomes if o.status == 'done']
    frames = sum(o.frames for o in done)
    r = dict(label=label, bags=len(done), frames=frames, wall=wall, bps=len(done) / wall,
             fps=frames / wall)
    for stage in ('read', 'model', 'finish', 'write'):
        r[stage] = 1e3 * sum(getattr(o, f'{stage}_s') for o in done) / max(frames, 1)
    r['ratio'] = r['fps'] / base['fps'] if base else None
    return r


def print_rows(rows):
    print('| run | bags | frames | wall s | bags/s | frames/s | speed-up | ms/frame: read+decode '
          '| model | finish | write |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r['ratio'] is not None else '-'
        print(f"| {r['label']} | {r['bags']} | {r['frames']} | {r['wall']:.1f} | "
              f"{r['bps']:.3f} | {r['fps']:.2f} | {ratio} | {r['read']:.1f} | "
              f"{r['model']:.1f} | {r['finish']:.1f} | {r['write']:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bags', type=int, default=6)
    ap.add_argument('--frames', type=int, default=40, help='frames per bag')
    ap.add_argument('--long-frames', type=int, default=120, help='frames of the long bag')
    ap.add_argument('--width', type=int, default=320, help='image width (height 3/4 of it)')
    ap.add_argument('--res', type=int, default=128, help='processing_res')
    args = ap.parse_args()
    os.environ.setdefault('RAY_memory_monitor_refresh_ms', '0')   # shared machine: see README
    import ray

    from fiffdepth_ros.bag.fleet import Fleet, FleetOptions, run_fleet
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint

    print(f'# process_bags throughput: {os.cpu_count()} CPU cores (shared with other jobs: '
          f'load average before {os.getloadavg()[0]:.2f}), ray {ray.__version__}')
    with tempfile.TemporaryDirectory(prefix='fiffdepth_fleet_bench_') as tmp:
        tmp = Path(tmp)
        spec = dict(width=args.width, height=args.width * 3 // 4, lidar_lines=16,
                    lidar_columns=512, distinct_scenes=10)
        room = None
        for i in range(args.bags):
            room, _ = write_synthetic_bag(tmp / 'in' / f'bag{i:02d}',
                                          SyntheticBagSpec(frames=args.frames, **spec),
                                          storage='mcap' if i % 2 else 'sqlite3')
        write_synthetic_bag(tmp / 'long' / 'long', SyntheticBagSpec(
            frames=args.long_frames, **spec), storage='mcap')
        (tmp / 'params.yaml').write_text(yaml.safe_dump(
            {'depth_node': {'ros__parameters': dict(lidar_extrinsic_params(room),
                                                    device='cpu')}}))
        model = build_tiny_checkpoint(tmp / 'tiny')
        print(f'# input: {args.bags} bags x {args.frames} frames {spec["width"]}x'
              f'{spec["height"]} (+ camera_info, 16x512 LiDAR), tiny random model at '
              f'processing_res {args.res}; long bag {args.long_frames} frames')

        def parse(out):
            a = build_parser().parse_args(
                [str(tmp / 'in'), '-o', str(tmp / out), '--model', str(model), '--params',
                 str(tmp / 'params.yaml'), '--lidar-topic', '/lidar/points', '-p',
                 f'processing_res:={args.res}', '--threads', '1', '--no-progress'])
            return a, resolve_params(a)
        quiet = lambda text: None   # noqa: E731

        rows = []
        a, params = parse('seq')
        jobs = expand_inputs([str(tmp / 'in')], tmp / 'seq')
        run_sequential(jobs[:1], a, params, log=quiet)       # load + warm the model, cache
        for j in jobs[:1]:
            import shutil
            shutil.rmtree(j.output)
        t0 = time.perf_counter()
        seq = run_sequential(jobs, a, params, log=quiet)
        rows.append(row('sequential (no Ray, model loaded)', seq, time.perf_counter() - t0))
        reference = {j.name: contents(j.output) for j in jobs}
        long_seq = expand_inputs([str(tmp / 'long' / 'long')], tmp / 'long_seq')
        t0 = time.perf_counter()
        long_rows = [row('long bag, sequential', run_sequential(long_seq, a, params, log=quiet),
                         time.perf_counter() - t0)]

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f'# Ray local instance start: {time.perf_counter() - t0:.1f} s')
        memory = []
        base = None
        for workers in (1, 2):
            a, params = parse(f'ray{workers}')
            jobs = expand_inputs([str(tmp / 'in')], tmp / f'ray{workers}')
            t0 = time.perf_counter()
            fleet = Fleet(ray, params, FleetOptions(workers=workers), threads=1)
            fleet.wait_ready(timeout_s=600)             # every actor has loaded the model
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = run_fleet(jobs, a, params, FleetOptions(), fleet=fleet)
            wall = time.perf_counter() - t0
            r = row(f'ray, {workers} worker(s)', result.outcomes, wall, base)
            base = base or r
            rows.append(r)
            same = all(contents(j.output) == reference[j.name] for j in jobs)
            print(f'# {workers} actor(s) started (model loaded) in {start:.1f} s; outputs '
                  f'identical to sequential: {same}; batches per actor {result.actor_batches}')
            if workers == 2:
                long_job = expand_inputs([str(tmp / 'long' / 'long')], tmp / 'long_ray')
                t0 = time.perf_counter()
                one = run_fleet(long_job, a, params, FleetOptions(bags_in_flight=1),
                                fleet=fleet)
                long_rows.append(row('long bag alone, ray, 2 workers', one.outcomes,
                                     time.perf_counter() - t0, long_rows[0]))
                print('# long bag on 2 workers identical to its sequential run: '
                      f'{contents(long_job[0].output) == contents(long_seq[0].output)}; '
                      f'batches per actor {one.actor_batches}')
                memory = result.actor_memory + result.io_memory
            fleet.close()
        ray.shutdown()
    print()
    print_rows(rows + long_rows)
    print('# speed-up: frames/s over the 1-worker row (the long bag on Ray: over its '
          'sequential run)')
    for m in memory:
        print(f"# {m['kind']} actor pid {m['pid']}: resident {m['rss_mib']:.0f} MiB, peak "
              f"{m['peak_mib']:.0f} MiB")
    print(f'# load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
