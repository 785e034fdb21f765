#!/usr/bin/env python3
"""Per-stage latency and memory of FiffDepth's single pass on the full-size SD2 architecture.

Builds the Stable Diffusion 2 UNet (~866M parameters) and VAE (~84M) from their configurations
with random weights (no download; a forward pass costs the same whatever the weights' values),
runs the estimator's own stage methods (pre-processing, VAE encode, UNet, VAE decode,
post-processing) and reports the median latency and the peak memory of each, on the CPU in fp32
and, when CUDA is available, on the GPU in fp16. On the same weights and in the same run it
times a 10-step iterative loop (encode + 10 UNet evaluations + decode: how Marigold-style
diffusion depth runs; its scheduler arithmetic is negligible) and prints the cost ratio.

    python bench/inference.py [--res 256] [--repeats 3] [--steps 10] [--no-cpu]

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
from fiffdepth_ros.model.tiny import build_sd2_modules  # noqa: E402

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


def bench_device(device: str, precision: str, res: int, repeats: int, steps: int, modules):
    unet, vae, embedding = modules
    est = DepthEstimator(unet, vae, embedding, device=device, precision=precision,
                         processing_res=res, model_name='SD2 architecture, random weights')
    dev = est.device
    meter = MemoryMeter(dev)
    resident = meter.current_mb()
    image = np.random.default_rng(0).integers(0, 256, (res, res, 3), dtype=np.uint8)
    times = {name: [] for name in STAGES}
    peaks = {name: 0.0 for name in STAGES}
    loop_ms, loop_peak = [], 0.0

    def iterative():
        # Marigold-style: the same encode and decode around `steps` UNet evaluations.
        z = est.encode(est.preprocess([image]).pixels)
        for _ in range(steps):
            z = est.run_unet(z)
        return est.decode(z)

    for i in range(repeats + 1):                      # round 0 warms up
        batch, *pre = measure(lambda: est.preprocess([image]), dev, meter)
        latent, *enc = measure(lambda: est.encode(batch.pixels), dev, meter)
        depth_latent, *unet_ = measure(lambda: est.run_unet(latent), dev, meter)
        depth, *dec = measure(lambda: est.decode(depth_latent), dev, meter)
        _, *post = measure(lambda: est.postprocess(depth, batch), dev, meter)
        _, t_loop, m_loop = measure(iterative, dev, meter)
        if i:
            for name, (t, m) in zip(STAGES, (pre, enc, unet_, dec, post)):
                times[name].append(t)
                peaks[name] = max(peaks[name], m)
            loop_ms.append(t_loop)
            loop_peak = max(loop_peak, m_loop)
    medians = {name: float(np.median(v)) for name, v in times.items()}
    fastest = {name: float(np.min(v)) for name, v in times.items()}
    single = sum(medians.values())
    iterative_ms = float(np.median(loop_ms))
    pixels = batch.pixels.shape
    print(f'\n## {dev.type} {est.describe()["precision"]}, {res}x{res} input '
          f'(model input {pixels[-2]}x{pixels[-1]}, latent {latent.shape[-2]}x{latent.shape[-1]}), '
          f'{repeats} timed runs after 1 warm-up')
    print(f'memory: {meter.kind()}; {resident:.0f} MB resident before the first frame\n')
    print('| stage | median ms | min ms | share | peak MB |')
    print('|---|---:|---:|---:|---:|')
    for name in STAGES:
        print(f'| {name} | {medians[name]:.1f} | {fastest[name]:.1f} '
              f'| {100 * medians[name] / single:.0f} % | {peaks[name]:.0f} |')
    print(f'| **single pass (sum)** | **{single:.1f}** | {sum(fastest.values()):.1f} | 100 % '
          f'| {max(peaks.values()):.0f} |')
    print(f'| {steps}-step iterative loop (encode + {steps} x UNet + decode) | '
          f'{iterative_ms:.1f} | {min(loop_ms):.1f} | {100 * iterative_ms / single:.0f} % '
          f'| {loop_peak:.0f} |')
    print(f'\ncost ratio, {steps}-step loop / single pass: {iterative_ms / single:.2f}x by medians '
          f'({1000 / single:.3f} vs {1000 / iterative_ms:.3f} frames/s), '
          f'{min(loop_ms) / sum(fastest.values()):.2f}x by fastest runs')
    if dev.type == 'cpu':
        # Other processes on the same cores slow OpenMP kernels far more than their share.
        print(f'load average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores '
              f'(this benchmark alone accounts for about {torch.get_num_threads()})')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--res', type=int, default=256, help='image side (square), pixels')
    ap.add_argument('--repeats', type=int, default=3, help='timed runs after one warm-up')
    ap.add_argument('--steps', type=int, default=10, help='UNet evaluations of the loop')
    ap.add_argument('--no-cpu', action='store_true', help='skip the CPU measurement')
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    modules = build_sd2_modules()
    unet_params = sum(p.numel() for p in modules[0].parameters())
    vae_params = sum(p.numel() for p in modules[1].parameters())
    print(f'# FiffDepth single pass, SD2 architecture: UNet {unet_params / 1e6:.1f}M, VAE '
          f'{vae_params / 1e6:.1f}M parameters, random weights (built in '
          f'{time.perf_counter() - t0:.1f} s)')
    cuda = (f'CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}'
            if torch.cuda.is_available() else 'no CUDA device')
    print(f'torch {torch.__version__}, {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} CPU threads, {cuda}; load average at start '
          f'{load_at_start:.2f}')
    if not args.no_cpu:
        bench_device('cpu', 'fp32', args.res, args.repeats, args.steps, modules)
    if torch.cuda.is_available():
        # Moves (and halves) the same modules: run after the CPU measurement.
        bench_device('cuda', 'fp16', args.res, args.repeats, args.steps, modules)


if __name__ == '__main__':
    main()
