#!/usr/bin/env python3
"""GPU check kit: what a machine with a GPU (desktop or Jetson) should confirm about the
exported graph before a robot relies on it, written as report.json and report.md.

Rows (each: load seconds, first-frame seconds -- a TensorRT engine build shows here --, median
ms over interleaved frames, max difference / range against torch fp32 on the CPU):

  torch fp32 on the CPU                      the reference
  torch fp32 / fp16 on CUDA                  when CUDA is available
  onnxruntime, one row per provider          TensorRT (fp16), CUDA, CPU -- each asked for alone,
                                             so a missing one is a 'skipped' row with the reason
  onnxruntime on the fp16 export             CUDA / TensorRT, when available
  openvino CPU

A row that cannot run says why ('skipped: ...') instead of failing the run. On a CPU-only
machine only the CPU rows run (the smoke test does exactly that).

    python bench/gpu_check.py [--model nano] [--height 192 --width 256] [--repeats 20]
                              [--out gpu_check] [--work /tmp/fiffdepth_gpu_check]
    scripts/gpu_check.sh      (the same with the repository's venv, printing report.md)
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))            # bench/timing.py

from fiffdepth_ros.model.estimator import DepthEstimator  # noqa: E402
from fiffdepth_ros.model.export import ExportConfig, export_single_pass  # noqa: E402
from timing import interleaved_ms  # noqa: E402


def environment() -> dict:
    env = {'python': platform.python_version(), 'machine': platform.machine(),
           'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
           'load_average': os.getloadavg(), 'cpus': os.cpu_count()}
    if env['cuda']:
        env['gpu'] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime
        env['onnxruntime'] = onnxruntime.__version__
        env['onnxruntime_providers'] = onnxruntime.get_available_providers()
    except ImportError as exc:
        env['onnxruntime'] = f'missing ({exc})'
    try:
        import openvino
        env['openvino'] = openvino.__version__
        env['openvino_devices'] = list(openvino.Core().available_devices)
    except ImportError as exc:
        env['openvino'] = f'missing ({exc})'
    return env


def frame(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
                   + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def plan(args, exports: dict, cuda: bool) -> list:
    """(row name, loader or the reason it is skipped)."""
    res = max(args.height, args.width)

    def torch_row(device, precision):
        return lambda: DepthEstimator.from_pretrained(args.model, device=device,
                                                      precision=precision,
                                                      processing_res=res, runtime='torch')

    def graph_row(export, runtime, providers, precision='fp32'):
        return lambda: DepthEstimator.from_pretrained(
            str(export), device='cuda' if providers != 'cpu' and cuda else 'cpu',
            precision=precision, processing_res=res, runtime=runtime, providers=providers)
    no_cuda = 'skipped: CUDA is not available'
    rows = [('torch fp32 cpu', torch_row('cpu', 'fp32')),
            ('torch fp32 cuda', torch_row('cuda', 'fp32') if cuda else no_cuda),
            ('torch fp16 cuda', torch_row('cuda', 'fp16') if cuda else no_cuda),
            ('onnxruntime tensorrt (fp16)', graph_row(exports['fp32'], 'onnxruntime',
                                                      'tensorrt', 'fp16')),
            ('onnxruntime cuda', graph_row(exports['fp32'], 'onnxruntime', 'cuda')),
            ('onnxruntime cpu', graph_row(exports['fp32'], 'onnxruntime', 'cpu')),
            ('openvino cpu', graph_row(exports['fp32'], 'openvino', 'CPU'))]
    if 'fp16' in exports:
        rows += [('onnxruntime cuda, fp16 export', graph_row(exports['fp16'], 'onnxruntime',
                                                             'cuda', 'fp16')),
                 ('onnxruntime tensorrt, fp16 export', graph_row(exports['fp16'], 'onnxruntime',
                                                                 'tensorrt', 'fp16'))]
    else:
        rows.append(('fp16 export', 'skipped: exported in fp16 only where CUDA is available '
                                    '(--fp16-export forces it)'))
    return rows


def run(args) -> dict:
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    cuda = bool(env['cuda'])
    exports = {}
    for precision in ('fp32', 'fp16'):
        if precision == 'fp16' and not (cuda or args.fp16_export):
            continue
        out = args.work / f'export-{precision}-{args.height}x{args.width}'
        t0 = time.perf_counter()
        export_single_pass(ExportConfig(model=args.model, output=out, height=args.height,
                                        width=args.width, fp16=precision == 'fp16',
                                        overwrite=True))
        env[f'export_{precision}_s'] = round(time.perf_counter() - t0, 1)
        exports[precision] = out
    image = frame(args.height, args.width)
    rows, engines = [], {}
    for name, loader in plan(args, exports, cuda):
        row = {'row': name}
        rows.append(row)
        if isinstance(loader, str):
            row['status'] = loader
            continue
        try:
            t0 = time.perf_counter()
            engine = loader()
            row['load_s'] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            depth = engine.predict(image)
            row['first_frame_s'] = round(time.perf_counter() - t0, 3)
        except Exception as exc:        # a report row, not a crash: say why
            row['status'] = f'skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
            continue
        row['status'] = 'ok'
        row['describe'] = {k: str(v) for k, v in engine.describe().items()}
        row['_depth'] = depth
        engines[name] = engine
    reference = rows[0].get('_depth')
    span = float(reference.max() - reference.min()) if reference is not None else 0.0
    for row in rows:
        depth = row.pop('_depth', None)
        if depth is not None and span > 0:
            row['max_diff_of_range'] = float(np.abs(depth - reference).max()) / span
    times = interleaved_ms({name: (lambda e=e: e.predict(image)) for name, e in engines.items()},
                           repeats=args.repeats, warmup=1)
    for row in rows:
        if row['row'] in times:
            row['median_ms'], row['p10_ms'], row['p90_ms'] = (round(v, 2)
                                                              for v in times[row['row']])
    env['load_average_after'] = os.getloadavg()
    return {'environment': env, 'model': args.model, 'size': [args.height, args.width],
            'repeats': args.repeats, 'rows': rows}


def markdown(report: dict) -> str:
    env = report['environment']
    lines = [f"# fiffdepth_ros GPU check: {report['model']} at "
             f"{report['size'][0]}x{report['size'][1]}", '',
             f"- torch {env['torch']}, CUDA {'yes: ' + env.get('gpu', '') if env['cuda'] else 'no'}"
             f", onnxruntime {env.get('onnxruntime')} "
             f"({', '.join(env.get('onnxruntime_providers', []))}), openvino "
             f"{env.get('openvino')} ({', '.join(env.get('openvino_devices', []))})",
             f"- load average before {env['load_average'][0]:.2f}, after "
             f"{env['load_average_after'][0]:.2f} on {env['cpus']} CPUs; "
             f"{report['repeats']} frames per row, interleaved", '',
             '| row | status | load s | first frame s | median ms | p10-p90 ms | '
             'max diff / range |', '| --- | --- | --- | --- | --- | --- | --- |']
    for row in report['rows']:
        spread = (f"{row['p10_ms']:.1f}-{row['p90_ms']:.1f}" if 'p10_ms' in row else '')
        diff = f"{row['max_diff_of_range']:.1e}" if 'max_diff_of_range' in row else ''
        lines.append(f"| {row['row']} | {row['status']} | {row.get('load_s', '')} | "
                     f"{row.get('first_frame_s', '')} | {row.get('median_ms', '')} | {spread} | "
                     f'{diff} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description='GPU check kit for the exported graph.')
    ap.add_argument('--model', default='nano')
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--fp16-export', action='store_true',
                    help='also export and try the fp16 graph without CUDA')
    ap.add_argument('--out', type=Path, default=Path('gpu_check'))
    ap.add_argument('--work', type=Path, default=Path('/tmp/fiffdepth_gpu_check'))
    args = ap.parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'report.json').write_text(json.dumps(report, indent=2, default=str) + '\n')
    (args.out / 'report.md').write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
