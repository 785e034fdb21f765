#!/usr/bin/env python3
"""torch eager vs the exported graph on ONNX Runtime and OpenVINO (and torch.compile), side by
side in one run, fp32 on the CPU.

Every row is the same DepthEstimator.predict (what the node, process_bag and fiffdepth-predict
call per frame: shared preprocess and postprocess) with a different runtime; only the pass
itself differs. The export is made here with fiffdepth-export's library call (static, at the
case's size), and each row's output is checked against torch eager (max difference / range).
Frames are timed round-robin (bench/timing.interleaved_ms), so a drifting shared machine loads
every row alike.

    python bench/export_runtimes.py --case nano  [--repeats 10] [--threads 2] [--compile]
    python bench/export_runtimes.py --case sd2   [--repeats 3]  [--threads 2] [--compile]
    python bench/export_runtimes.py --case nano --model DIR --light   (DIR with light parts)
    python bench/export_runtimes.py --case sd2 --light --runtimes onnxruntime   (4 rows, not 5)
    python bench/export_runtimes.py --case sd2 --release --runtimes onnxruntime,openvino

  nano  the shipped FiffDepth-nano (model 'nano'), a 256x192 frame at processing_res 256
  sd2   the full-size SD2 UNet + VAE with random weights (model.tiny.build_sd2_checkpoint, fp32
        weights on disk, ~3.5 GB: the ONNX graph uses external data), a 256x256 frame at 256;
        needs ~15 GB of memory for all rows at once

--work DIR keeps the checkpoint and the exports between runs (default: a folder under /tmp).
--model replaces the case's model; --light adds torch eager and ONNX Runtime rows with the
model's light autoencoder (light_encoder/ and light_decoder/, fiffdepth-train stage
light_autoencoder), checked against the torch engine running the same light parts. With
--case sd2 the SD2-size folder gets random light parts (timing only) unless it has them.
--release adds the released FiffDepth DirectPipeline's per-frame steps on the same weights
(bench/release_direct.py), and the ratios against it.

The ceiling: the pass's FLOPs (torch.utils.flop_counter on the torch eager frame) divided by
each row's median is its achieved rate, printed beside the rate of the pass's dominant operation
at its best: one 3x3 convolution, 512 -> 512 channels on a 64x64 map, fp32, torch (oneDNN), on
the same threads and timed in the same round robin. (A GEMM is no such reference: torch.mm goes
through MKL, which takes its AVX2 path on AMD CPUs.) A pass that already runs at that rate cannot
be made much faster by any fp32 runtime.
"""
import argparse
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
from fiffdepth_ros.model.runtimes import is_export  # noqa: E402
from timing import interleaved_ms, tflops  # noqa: E402

RELEASE = 'release DirectPipeline'

CASES = {'nano': dict(size=(192, 256), res=256), 'sd2': dict(size=(256, 256), res=256)}


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f'load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs'


def model_for(case: str, work: Path, light: bool = False) -> str:
    if case == 'nano':
        return 'nano'
    from fiffdepth_ros.model.tiny import build_sd2_checkpoint
    t0 = time.perf_counter()
    path = build_sd2_checkpoint(work / 'sd2-fiffdepth', dtype=torch.float32)
    print(f'# SD2-size checkpoint (random weights, fp32) at {path}: '
          f'{time.perf_counter() - t0:.0f} s')
    if light:
        add_random_light_parts(path)
    return str(path)


def add_random_light_parts(path: Path, seed: int = 0) -> None:
    """Random light_encoder/ and light_decoder/ (model.light, their default TAESD width) in the
    SD2-size folder, for timing only: a pass costs the same whatever the weights."""
    from fiffdepth_ros.model.light import LIGHT_DECODER, LIGHT_ENCODER, LightDecoder, LightEncoder
    for name, cls in ((LIGHT_ENCODER, LightEncoder), (LIGHT_DECODER, LightDecoder)):
        if not (path / name / 'config.json').is_file():
            torch.manual_seed(seed)
            cls().save_pretrained(path / name)
            print(f'# random {name}/ (timing only) written to {path}')


def export_for(model: str, size, work: Path, case: str, autoencoder: str = 'full') -> Path:
    suffix = '' if autoencoder == 'full' else f'-{autoencoder}'
    out = work / f'{case}-export-{size[0]}x{size[1]}{suffix}'
    if not is_export(out):
        t0 = time.perf_counter()
        export_single_pass(ExportConfig(model=model, output=out, height=size[0], width=size[1],
                                        overwrite=True, autoencoder=autoencoder))
        print(f'# exported {out} in {time.perf_counter() - t0:.0f} s')
    return out


CEILING = '_conv'
CONV_C, CONV_HW = 512, 64
CONV_GFLOP = 2 * CONV_C * CONV_C * 9 * CONV_HW * CONV_HW / 1e9


def conv_step():
    """One fp32 3x3 convolution CONV_C -> CONV_C on CONV_HW^2 (torch, oneDNN, torch's threads),
    timed in the round robin beside the rows: the rate of the pass's dominant operation at its
    best on this CPU, under the rows' own conditions."""
    conv = torch.nn.Conv2d(CONV_C, CONV_C, 3, padding=1).eval()
    x = torch.randn(1, CONV_C, CONV_HW, CONV_HW)

    def step():
        with torch.no_grad():
            conv(x)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--case', choices=tuple(CASES), default='nano')
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--compile', action='store_true', help='add a torch.compile row')
    ap.add_argument('--work', type=Path, default=Path('/tmp/fiffdepth_bench_export'))
    ap.add_argument('--model', help="instead of the case's model (a folder, or 'nano')")
    ap.add_argument('--runtimes', default='onnxruntime,openvino',
                    help='graph runtimes of the full-VAE rows, beside torch eager (comma list; '
                         'fewer rows: less memory at SD2 size); openvino-bf16: OpenVINO with '
                         "precision 'bf16' (not fp32: its difference is printed)")
    ap.add_argument('--light', action='store_true',
                    help='add rows with the light autoencoder (torch eager and ONNX Runtime)')
    ap.add_argument('--release', action='store_true',
                    help="add the released DirectPipeline's steps on the same weights")
    args = ap.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(',') if r.strip()]
    unknown = set(runtimes) - {'onnxruntime', 'openvino', 'openvino-bf16'}
    if unknown:
        ap.error(f"--runtimes: unknown {', '.join(sorted(unknown))} (onnxruntime, openvino, "
                 'openvino-bf16)')
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    case = CASES[args.case]
    h, w = case['size']
    print(f'# {platform.processor() or platform.machine()}, torch {torch.__version__}, '
          f'{args.threads} threads; {uptime()} (before)')
    model = args.model or model_for(args.case, args.work, args.light)
    export = export_for(model, case['size'], args.work, args.case)
    import onnxruntime
    import openvino
    print(f'# onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}')

    engines = {}
    t0 = time.perf_counter()
    engines['torch eager'] = DepthEstimator.from_pretrained(
        model, device='cpu', precision='fp32', processing_res=case['res'], runtime='torch')
    loads = {'torch eager': time.perf_counter() - t0}
    if args.compile:
        t0 = time.perf_counter()
        engines['torch.compile'] = DepthEstimator.from_pretrained(
            model, device='cpu', precision='fp32', processing_res=case['res'], runtime='torch',
            compile=True)
        loads['torch.compile'] = time.perf_counter() - t0
    for runtime in runtimes:
        t0 = time.perf_counter()
        name, _, precision = runtime.partition('-')
        engines[runtime] = DepthEstimator.from_pretrained(
            str(export), device='cpu', precision=precision or 'fp32',
            processing_res=case['res'], runtime=name)
        loads[runtime] = time.perf_counter() - t0
    if args.light:
        light_export = export_for(model, case['size'], args.work, args.case, 'light')
        for name, where, runtime in (('torch eager, light', model, 'torch'),
                                     ('onnxruntime, light', str(light_export), 'onnxruntime')):
            t0 = time.perf_counter()
            engines[name] = DepthEstimator.from_pretrained(
                where, device='cpu', precision='fp32', processing_res=case['res'],
                runtime=runtime, autoencoder='light' if runtime == 'torch' else 'full')
            loads[name] = time.perf_counter() - t0
    if args.release:
        from fiffdepth_ros.model.checkpoint import resolve_checkpoint
        from release_direct import ReleaseDirect
        t0 = time.perf_counter()
        engines[RELEASE] = ReleaseDirect(resolve_checkpoint(model).root, case['res'])
        loads[RELEASE] = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.clip(np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
                    + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    references = {'full': engines['torch eager'].predict(image)}
    if args.light:                                     # light rows against torch running them
        references['light'] = engines['torch eager, light'].predict(image)
    errors = {}
    for name, engine in engines.items():
        reference = references['light' if name.endswith(', light') else 'full']
        span = float(reference.max() - reference.min())
        t0 = time.perf_counter()
        depth = engine.predict(image)                  # also the first (warm-up) frame
        loads[name] += 0 if name != 'torch.compile' else time.perf_counter() - t0
        errors[name] = float(np.abs(depth - reference).max()) / max(span, 1e-12)
    gflop = tflops(lambda: engines['torch eager'].predict(image)) * 1e3   # the full-VAE pass
    steps = {name: (lambda e=e: e.predict(image)) for name, e in engines.items()}
    steps[CEILING] = conv_step()
    times = interleaved_ms(steps, repeats=args.repeats, warmup=1)
    ceiling = CONV_GFLOP / times.pop(CEILING)[0] * 1e3
    base = times['torch eager'][0]
    release = times[RELEASE][0] if RELEASE in times else None
    print(f'\n{args.case}: {h}x{w} frame at processing_res {case["res"]}, fp32 CPU, '
          f'{args.threads} threads, {args.repeats} frames per row, interleaved')
    print(f'pass (full VAE, torch eager): {gflop:.1f} GFLOP (torch.utils.flop_counter); '
          f'one fp32 3x3 conv {CONV_C}->{CONV_C} at {CONV_HW}x{CONV_HW} (torch) on '
          f'{args.threads} threads, in the same round robin: {ceiling:.0f} GFLOP/s')
    print('| runtime | median ms | p10-p90 ms | vs torch eager |'
          + (' vs release |' if release else '')
          + ' GFLOP/s (full-VAE FLOPs) | max diff / range | load s |')
    print('| --- | --- | --- | --- |' + (' --- |' if release else '') + ' --- | --- | --- |')
    for name, (median, p10, p90) in times.items():
        versus = f' {release / median:.2f}x |' if release else ''
        rate = '' if name.endswith(', light') else f'{gflop / median * 1e3:.0f}'
        print(f'| {name} | {median:.1f} | {p10:.1f}-{p90:.1f} | {base / median:.2f}x |{versus}'
              f' {rate} | {errors[name]:.1e} | {loads[name]:.1f} |')
    print(f'\n# {uptime()} (after)')


if __name__ == '__main__':
    main()
