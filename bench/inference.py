#!/usr/bin/env python3
"""Latency and memory of each depth family on the full-size SD2 architecture, in one engine.

For each family (FiffDepth, E2E-FT, Lotus-D, Marigold) builds the Stable Diffusion 2 UNet
(~866M parameters, laid out for the family: 8 input channels for E2E-FT/Marigold, a class
embedding for Lotus-D) and VAE (~84M) with random weights (no download; a forward pass costs the
same whatever the weights' values), one family at a time. The single-step families run the
engine's own stage methods (pre-processing, VAE encode, UNet step, VAE decode, post-processing:
median latency and peak memory of each); Marigold runs diffusers' MarigoldDepthPipeline through
the engine with --marigold-steps UNet evaluations. The closing table gives each family's
whole-frame median and its cost relative to FiffDepth. CPU in fp32 and, when CUDA is available,
the GPU in fp16.

    python bench/inference.py [--res 256] [--repeats 3] [--marigold-steps 4]
                              [--families fiffdepth,e2e_ft,lotus_d,marigold] [--no-cpu]

Memory: on CUDA the peak of torch's allocator per stage; on the CPU the process's peak resident
set (VmHWM) per stage, reset before each stage through /proc/self/clear_refs where Linux allows
it (otherwise the process peak so far, which includes building the model).
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

from fiffdepth_ros.model.estimator import DepthEstimator  # noqa: E402
from fiffdepth_ros.model.families import make_family  # noqa: E402
from fiffdepth_ros.model.families.base import CheckpointInfo  # noqa: E402
from fiffdepth_ros.model.tiny import build_sd2_modules, family_layout  # noqa: E402

FAMILY_ORDER = ('fiffdepth', 'e2e_ft', 'lotus_d', 'marigold')

STAGES = ('pre-processing', 'VAE encode', 'UNet', 'VAE decode', 'post-processing')


class MemoryMeter:
    """Peak memory of the code between reset() and peak_mb()."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == 'cuda' or self._reset_cpu_peak()

    @staticmethod
    def _reset_cpu_peak() -> bool:
        try:
            Path('/proc/self/clear_refs').write_text('5')    # 5: reset the peak RSS
            return True
        except OSError:
            return False

    @staticmethod
    def _proc_status_mb(key: str) -> float:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
        return float('nan')

    def reset(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset_cpu_peak()

    def peak_mb(self) -> float:
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._proc_status_mb('VmHWM')

    def current_mb(self) -> float:
        if self.device.type == 'cuda':
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._proc_status_mb('VmRSS')

    def kind(self) -> str:
        if self.device.type == 'cuda':
            return 'CUDA allocator peak'
        return 'process peak RSS' + ('' if self.resettable else ' (not resettable: since start)')


def measure(fn, device, meter):
    """(result, milliseconds, peak MB) of one call, synchronised on CUDA."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    meter.reset()
    t0 = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - t0) * 1e3, meter.peak_mb()


def sd2_estimator(family: str, device: str, precision: str, res: int, marigold_steps: int,
                  seed: int = 0) -> DepthEstimator:
    """The engine on SD2-size random modules laid out for ``family`` (built in memory)."""
    unet, vae, embedding = build_sd2_modules(seed, family)
    model_index, scheduler = family_layout(family)
    info = CheckpointInfo(root=Path('.'), name=f'sd2-random-{family}',
                          unet_config=dict(unet.config), model_index=model_index,
                          scheduler_config=scheduler)
    strategy = make_family(info, family, denoising_steps=marigold_steps, ensemble_size=1,
                           seed=seed)
    return DepthEstimator(unet, vae, embedding, device=device, precision=precision,
                          processing_res=res, model_name=f'SD2 architecture ({family}), '
                          'random weights', family=strategy)


def bench_family(est: DepthEstimator, res: int, repeats: int) -> dict:
    """Per-stage (single-step families) or whole-frame (Marigold) medians; prints a table."""
    dev = est.device
    meter = MemoryMeter(dev)
    resident = meter.current_mb()
    image = np.random.default_rng(0).integers(0, 256, (res, res, 3), dtype=np.uint8)
    frame_ms, frame_peak = [], 0.0
    staged = not est.strategy.own_pipeline
    times = {name: [] for name in STAGES}
    peaks = {name: 0.0 for name in STAGES}
    for i in range(repeats + 1):                      # round 0 warms up
        if staged:
            batch, *pre = measure(lambda: est.preprocess([image]), dev, meter)
            latent, *enc = measure(lambda: est.encode(batch.pixels), dev, meter)
            depth_latent, *unet_ = measure(lambda: est.run_unet(latent), dev, meter)
            depth, *dec = measure(lambda: est.decode(depth_latent), dev, meter)
            _, *post = measure(lambda: est.postprocess(depth, batch), dev, meter)
            if i:
                for name, (t, m) in zip(STAGES, (pre, enc, unet_, dec, post)):
                    times[name].append(t)
                    peaks[name] = max(peaks[name], m)
        _, t_frame, m_frame = measure(lambda: est.predict(image), dev, meter)
        if i:
            frame_ms.append(t_frame)
            frame_peak = max(frame_peak, m_frame)
    h, w = est.target_size(res, res)
    info = est.describe()
    steps = f", {info['denoising_steps']} denoising steps" if 'denoising_steps' in info else ''
    print(f'\n## {est.family}: {dev.type} {info["precision"]}, {res}x{res} input (model input '
          f'{h}x{w}{steps}), {repeats} timed runs after 1 warm-up')
    print(f'memory: {meter.kind()}; {resident:.0f} MB resident before the first frame\n')
    if staged:
        medians = {name: float(np.median(v)) for name, v in times.items()}
        single = sum(medians.values())
        print('| stage | median ms | min ms | share | peak MB |')
        print('|---|---:|---:|---:|---:|')
        for name in STAGES:
            print(f'| {name} | {medians[name]:.1f} | {min(times[name]):.1f} '
                  f'| {100 * medians[name] / single:.0f} % | {peaks[name]:.0f} |')
        print(f'| sum of stages | {single:.1f} | {sum(min(v) for v in times.values()):.1f} '
              f'| 100 % | {max(peaks.values()):.0f} |')
    print(f'whole frame (predict): median {np.median(frame_ms):.1f} ms, min '
          f'{min(frame_ms):.1f} ms, peak {frame_peak:.0f} MB')
    return {'median': float(np.median(frame_ms)), 'min': float(min(frame_ms)),
            'peak': frame_peak, 'steps': info.get('denoising_steps', 1)}


def bench_device(device: str, precision: str, args) -> None:
    results = {}
    for family in args.families:
        t0 = time.perf_counter()
        est = sd2_estimator(family, device, precision, args.res, args.marigold_steps)
        print(f'\n(built {family} in {time.perf_counter() - t0:.1f} s)')
        results[family] = bench_family(est, args.res, args.repeats)
        del est
        if device == 'cuda':
            torch.cuda.empty_cache()
    base = results.get('fiffdepth')
    print(f'\n## summary: {device} {precision}, {args.res}x{args.res}\n')
    print('| family | UNet passes | median ms | min ms | peak MB | x FiffDepth (median) |')
    print('|---|---:|---:|---:|---:|---:|')
    for family, r in results.items():
        ratio = f"{r['median'] / base['median']:.2f}x" if base else 'n/a'
        print(f"| {family} | {r['steps']} | {r['median']:.1f} | {r['min']:.1f} "
              f"| {r['peak']:.0f} | {ratio} |")
    if device == 'cpu':
        # Other processes on the same cores slow OpenMP kernels far more than their share.
        print(f'\nload average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} '
              f'cores (this benchmark alone accounts for about {torch.get_num_threads()})')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--res', type=int, default=256, help='image side (square) and processing '
                    'resolution, pixels (a multiple of 8 for Marigold)')
    ap.add_argument('--repeats', type=int, default=3, help='timed runs after one warm-up')
    ap.add_argument('--marigold-steps', type=int, default=4,
                    help='Marigold denoising steps (UNet evaluations)')
    ap.add_argument('--families', default=','.join(FAMILY_ORDER),
                    help='comma-separated subset of ' + ','.join(FAMILY_ORDER))
    ap.add_argument('--no-cpu', action='store_true', help='skip the CPU measurement')
    args = ap.parse_args()
    args.families = [f for f in args.families.split(',') if f]
    unknown = set(args.families) - set(FAMILY_ORDER)
    if unknown:
        ap.error(f'unknown families: {sorted(unknown)}')
    load_at_start = os.getloadavg()[0]
    cuda = (f'CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}'
            if torch.cuda.is_available() else 'no CUDA device')
    print(f'# Depth families on the SD2 architecture, random weights: '
          f'{", ".join(args.families)}')
    print(f'torch {torch.__version__}, {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} CPU threads, {cuda}; load average at start '
          f'{load_at_start:.2f}')
    if not args.no_cpu:
        bench_device('cpu', 'fp32', args)
    if torch.cuda.is_available():
        bench_device('cuda', 'fp16', args)


if __name__ == '__main__':
    main()
