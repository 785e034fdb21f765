#!/usr/bin/env python3
"""Latency and throughput of the running depth_node over real DDS: the sequential worker and
the overlapped one (``overlap_stages``), and the runtimes (torch, an exported graph on ONNX
Runtime or OpenVINO), side by side in one run.

For each column (a runtime and a layout), the installed node (its own process; the tiny random
model unless --model) receives 640x480 images, camera_info and a 32-line LiDAR sweep at --rate
Hz for --seconds from this process, which records depth/image (or, --output relative,
depth/relative: published for every frame, also while a failing scale fit withholds the metric
outputs) and depth/points. Printed per column: output rate, latency (image stamp -> receipt
here) over the steady state (the first --warmup seconds left out) with its maximum, the node's
own statistics (receipt -> publish, the forward pass, per-frame overhead beside it, the part of
it that delays the next inference, stage medians, publish cost per output and size), and the
ratios overlapped / sequential (one runtime, both layouts) or runtime / torch (several
runtimes); plus the bare DepthEstimator.predict time per runtime in this process (torch threads
as the node sets them), with each graph runtime's output against torch's.

    python bench/node_latency.py [--rate 30] [--seconds 20] [--processing-res 128]
                                 [--modes sequential,overlapped] [--warmup 5]
                                 [--install-prefix WS/install]
    python bench/node_latency.py --model nano --processing-res -1 --modes sequential
                                 --runtimes torch,onnxruntime,openvino [--export DIR]
                                 [--export-shape dynamic|static] [--output relative]

--runtimes: torch runs --model itself; onnxruntime / openvino run an export of it, made here
with fiffdepth-export's library call (export_single_pass; --export-shape dynamic: any size,
static: the size the node's processing_res gives a 640x480 frame) unless --export names an
export folder (fiffdepth-export's output) to run instead. Every node column gets the same
pre-rendered camera/LiDAR stream.
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
RUNTIMES = ('torch', 'onnxruntime', 'openvino')
FRAME_HW = (480, 640)


def columns(runtimes: list[str], modes: list[str]) -> list[tuple[str, str, str]]:
    """(label, runtime, mode) per node run: the layout's name with one runtime (the bench's
    original table), the runtime's with one layout, else both."""
    out = []
    for runtime in runtimes:
        for mode in modes:
            label = (mode if len(runtimes) == 1 else runtime if len(modes) == 1
                     else f'{runtime}/{mode}')
            out.append((label, runtime, mode))
    return out


def ratio_columns(cols: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(header, numerator label, denominator label): overlapped / sequential for one runtime
    and both layouts; else each graph runtime / torch in the same layout."""
    runtimes = {rt for _, rt, _ in cols}
    if len(runtimes) == 1:
        modes = {mode: label for label, _, mode in cols}
        if set(modes) == set(MODES):
            return [('overlapped/sequential', modes['overlapped'], modes['sequential'])]
        return []
    torch_of = {mode: label for label, rt, mode in cols if rt == 'torch'}
    return [(f'{label}/torch' if len(torch_of) == 1 else f'{label} / {torch_of[mode]}',
             label, torch_of[mode]) for label, rt, mode in cols
            if rt != 'torch' and mode in torch_of]


def model_for(args, work: Path) -> str:
    """--model: 'tiny' (a random tiny checkpoint made here), 'nano' or a checkpoint."""
    if args.model == 'tiny':
        return str(build_tiny_checkpoint(work / 'tiny'))
    return args.model


def export_for(args, model: str, work: Path, processing_res: int) -> Path:
    """--export, or an export of ``model`` made here (fiffdepth-export's library call)."""
    from fiffdepth_ros.model.estimator import target_size
    from fiffdepth_ros.model.export import ExportConfig, export_single_pass
    if args.export:
        return Path(args.export)
    out = work / f'export_{args.export_shape}'
    if args.export_shape == 'dynamic':
        config = ExportConfig(model=model, output=out, dynamic=True,
                              processing_res=args.processing_res)
    else:
        h, w = target_size(*FRAME_HW, processing_res)
        config = ExportConfig(model=model, output=out, height=h, width=w)
    t0 = time.perf_counter()
    export_single_pass(config)
    print(f'# exported {model} ({args.export_shape}) to {out} in '
          f'{time.perf_counter() - t0:.0f} s', flush=True)
    return out


def load_estimator(runtime: str, model: str, export: Path | None, processing_res: int):
    from fiffdepth_ros.model.estimator import DepthEstimator
    where = model if runtime == 'torch' else str(export)
    return DepthEstimator.from_pretrained(where, device='cpu', processing_res=processing_res,
                                          runtime=runtime)


def bare_predict(estimators: dict, frames) -> tuple[dict, dict]:
    """{runtime: median ms} of DepthEstimator.predict in this process, frames taken
    round-robin over the runtimes, and {runtime: max |depth - torch's| / torch's range}."""
    for estimator in estimators.values():
        estimator.predict(frames[0].rgb)
    times = {name: [] for name in estimators}
    for f in frames * 3:
        for name, estimator in estimators.items():
            t0 = time.perf_counter()
            estimator.predict(f.rgb)
            times[name].append((time.perf_counter() - t0) * 1e3)
    errors = {}
    if 'torch' in estimators:
        reference = estimators['torch'].predict(frames[0].rgb)
        span = max(float(reference.max() - reference.min()), 1e-12)
        errors = {name: float(np.abs(e.predict(frames[0].rgb) - reference).max()) / span
                  for name, e in estimators.items() if name != 'torch'}
    return {name: float(np.median(t)) for name, t in times.items()}, errors


def run_layout(label: str, runtime: str, mode: str, args, work: Path, model: str,
               export: Path | None, room, frames) -> dict:
    """One node process (``runtime``, ``overlap_stages`` for ``mode``), streamed for
    args.seconds."""
    params = {'model': model if runtime == 'torch' else str(export), 'runtime': runtime,
              'device': 'cpu', 'processing_res': args.processing_res,
              **room.static_lidar_params(), 'publish_colorized': False, 'diagnostics_period': 1.0,
              'cloud_type': args.cloud_type, 'overlap_stages': MODES[mode],
              'publish_relative': args.output == 'relative'}
    env = isolated_ros_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    node = NodeProcess(work / f'node_{label.replace("/", "_")}', params, env=env,
                       prefix=args.install_prefix)
    import rclpy
    rclpy.init()
    node.start()
    try:
        if not node.wait_for_log('ready:', args.start_timeout):
            sys.exit('node did not start:\n' + node.log())
        outputs = [args.output] + (['points'] if args.cloud_type != 'none' else [])
        # Only stamps are kept: the clouds alone would take ~10 MB each in this process.
        stamp_of = lambda m: stamp_to_ns(m.header.stamp)  # noqa: E731
        client = StreamClient(outputs=outputs, node_name='bench_camera',
                              keep={args.output: stamp_of, 'points': stamp_of})
        if not client.wait_for_node(max(30.0, args.start_timeout / 4), lidar=True):
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
        received = [(t_rx, s) for t_rx, s in client.received[args.output] if s in sent]
        clouds = client.count('points')
        client.close()
    finally:
        code, stop_s = node.stop()
        rclpy.try_shutdown()
    steady = [(t_rx - s * 1e-9) * 1e3 for t_rx, s in received if t_rx >= t_start + args.warmup]
    rx = [t_rx for t_rx, s in received if t_rx >= t_start + args.warmup]
    diag = diags[-1][1] if diags else {}
    if diag and diag.get('runtime', 'torch') != runtime:
        sys.exit(f"the node ran '{diag.get('runtime')}', not '{runtime}':\n" + node.log())
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


def parse_list(text: str, allowed, what: str, ap) -> list[str]:
    items = [m.strip() for m in text.split(',') if m.strip()]
    unknown = [m for m in items if m not in allowed]
    if unknown or not items:
        ap.error(f'unknown or no {what} {unknown}; choose from {list(allowed)}')
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--seconds', type=float, default=20.0, help='per column (node run)')
    ap.add_argument('--processing-res', type=int, default=128,
                    help="the node's processing_res (-1: the model's own)")
    ap.add_argument('--lidar-rate', type=float, default=10.0,
                    help='LiDAR sweeps per second (a sweep goes with every k-th image)')
    ap.add_argument('--cloud-type', default='xyzrgb', choices=('xyz', 'xyzrgb', 'none'))
    ap.add_argument('--modes', default='sequential,overlapped',
                    help='comma-separated layouts to run, in order')
    ap.add_argument('--warmup', type=float, default=5.0,
                    help='seconds at the start of each stream left out of the latency figures')
    ap.add_argument('--install-prefix', default=os.environ.get('FIFFDEPTH_TEST_INSTALL'))
    ap.add_argument('--start-timeout', type=float, default=120.0,
                    help="seconds a node may take to say 'ready:' (a loaded machine is slow)")
    ap.add_argument('--model', default='tiny',
                    help="'tiny' (a random tiny checkpoint made here; default), 'nano' or a "
                         'checkpoint folder / hub id')
    ap.add_argument('--runtimes', default='torch',
                    help='comma-separated runtimes, in order: torch, onnxruntime, openvino')
    ap.add_argument('--export', help='an export folder (fiffdepth-export) for the graph '
                                     'runtimes, instead of exporting --model here')
    ap.add_argument('--export-shape', default='dynamic', choices=('dynamic', 'static'),
                    help="the export made here: any size, or the node's processing size of a "
                         '640x480 frame')
    ap.add_argument('--output', default='depth', choices=('depth', 'relative'),
                    help="the output whose receipts are timed: depth/image (metric; withheld "
                         "while the scale fit fails) or depth/relative (the model's own output, "
                         'published for every frame)')
    ap.add_argument('--bare-threads', type=int, default=0,
                    help="torch threads of the bare predict in this process (0: the node's "
                         'rule, one core fewer than available)')
    args = ap.parse_args()
    modes = parse_list(args.modes, MODES, 'layout(s)', ap)
    runtimes = parse_list(args.runtimes, RUNTIMES, 'runtime(s)', ap)
    if args.export and not Path(args.export).is_dir():
        ap.error(f'--export {args.export}: no such folder')
    cols = columns(runtimes, modes)
    labels = [label for label, _, _ in cols]

    from fiffdepth_ros.model.runtime import set_cpu_threads
    threads = set_cpu_threads(args.bare_threads or None)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix='fiffdepth_bench_'))
    model = model_for(args, work)
    torch_estimator = load_estimator('torch', model, None, args.processing_res)
    res = torch_estimator.processing_res                 # -1 resolved: the model's own
    from fiffdepth_ros.model.estimator import target_size
    seen = target_size(*FRAME_HW, res)
    export = (export_for(args, model, work, res)
              if any(rt != 'torch' for rt in runtimes) else None)
    estimators = {rt: torch_estimator if rt == 'torch'
                  else load_estimator(rt, model, export, args.processing_res)
                  for rt in runtimes}
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(8)]     # pre-rendered: publish cost only
    bare, bare_errors = bare_predict(estimators, frames)
    del estimators, torch_estimator
    results = {label: run_layout(label, rt, mode, args, work, model, export, room, frames)
               for label, rt, mode in cols}

    first = results[labels[0]]
    name = 'tiny' if args.model == 'tiny' else args.model
    shape = '' if export is None else (
        f'; graph runtimes: {export}' if args.export
        else f'; graph runtimes: a {args.export_shape} export made here')
    print(f'depth_node, model {name}, 640x480, processing_res {args.processing_res} (model sees '
          f'{seen[0]}x{seen[1]}), LiDAR 32x1024 at '
          f'{first["lidar_hz"]:.0f} Hz, cloud {args.cloud_type}; {args.seconds:g} s per column '
          f'at {args.rate:g} Hz, latency over the steady state (first {args.warmup:g} s left out)'
          f'{shape}; CPU cores {len(os.sched_getaffinity(0))}, load average before: '
          f'{load_before[0]:.2f}, {load_before[1]:.2f}, {load_before[2]:.2f}, after: '
          + ', '.join(f'{v:.2f}' for v in os.getloadavg()))
    d = {m: r['diag'] for m, r in results.items()}
    rows = [
        ('frames published (rate Hz)', {m: f'{r["published"]} ({r["publish_hz"]:.1f})'
                                        for m, r in results.items()}),
        (f'{args.output} images / clouds received', {m: f'{r["received"]} / {r["clouds"]}'
                                            for m, r in results.items()}),
        ('output rate (Hz, steady state)', {m: r['rate'] for m, r in results.items()}),
        ('latency stamp->receipt p50 (ms)', {m: r['lat'][0] for m, r in results.items()}),
        ('latency stamp->receipt p99 (ms)', {m: r['lat'][1] for m, r in results.items()}),
        ('latency stamp->receipt max (ms)', {m: r['lat'][2] for m, r in results.items()}),
        ('  p99 / p50', {m: r['lat'][1] / r['lat'][0] for m, r in results.items()}),
        ('  frames later than 1 s', {m: r['over_1s'] for m, r in results.items()}),
    ]
    if len(runtimes) > 1:
        rows.insert(0, ('node: runtime (providers)',
                        {m: f"{d[m].get('runtime', '?')} {d[m].get('providers', '')}".strip()
                         for m in labels}))
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
        rows.append((label, {m: _num(d[m].get(key)) for m in labels}))
    rows.append(('node: latency window', {m: d[m].get('latency window', '?') for m in labels}))
    rows.append(('node: stage medians (ms)', {m: d[m].get('stage medians (ms)', '?')
                                              for m in labels}))
    rows.append(('node: publish per output (size, ms)',
                 {m: d[m].get('publish medians (data size, ms)', '?') for m in labels}))
    rows.append(('node shutdown on SIGINT', {m: r['stop'] for m, r in results.items()}))

    def fmt(v):
        return f'{v:.1f}' if isinstance(v, (float, np.floating)) else str(v)

    ratios = ratio_columns(cols)
    cw = max(12, *(len(m) for m in labels))
    width = max(len(label) for label, _ in rows)
    print(f'{"":<{width}}  ' + '  '.join(f'{m:>{cw}}' for m in labels)
          + ''.join(f'  {h}' for h, _, _ in ratios))
    for label, values in rows:
        cells = [fmt(values[m]) for m in labels]
        if any(len(c) > cw for c in cells):          # long texts: one line per column
            for m, c in zip(labels, cells):
                print(f'{label + " [" + m + "]":<{width}}  {c}')
            continue
        line = f'{label:<{width}}  ' + '  '.join(f'{c:>{cw}}' for c in cells)
        for header, num, den in ratios:
            if all(isinstance(values[m], (int, float, np.floating)) for m in (num, den)) \
                    and values[den]:
                line += f'  {values[num] / values[den]:.2f}x'.ljust(len(header) + 2)
            else:
                line += ' ' * (len(header) + 2)
        print(line.rstrip())
    for rt in runtimes:
        err = f', max |diff| / range vs torch {bare_errors[rt]:.1e}' if rt in bare_errors else ''
        print(f'bare DepthEstimator.predict median (ms, this process, {threads} torch threads, '
              f'{rt}): {bare[rt]:.1f}{err}')
    if len(runtimes) > 1:
        print('\n| runtime | layout | node inference median (ms) | output rate (Hz) | latency p50 '
              '/ p99 (ms) | bare predict (ms) |')
        print('| --- | --- | --- | --- | --- | --- |')
        for label, rt, mode in cols:
            r = results[label]
            print(f"| {rt} | {mode} | {_num(d[label].get('inference median (ms)')):.1f} | "
                  f"{r['rate']:.1f} | {r['lat'][0]:.0f} / {r['lat'][1]:.0f} | {bare[rt]:.1f} |")


if __name__ == '__main__':
    main()
