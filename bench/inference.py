#!/usr/bin/env python3
"""Per-stage latency of FiffDepth's single pass on the full-size SD2 architecture.

Builds the Stable Diffusion 2 UNet (~865M parameters) and VAE from their configurations with
random weights (no download; the cost of a forward pass does not depend on the weights' values),
runs the estimator's own stages (pre-processing, VAE encode, UNet, VAE decode, post-processing)
and reports the median latency of each and the peak memory, on the CPU in fp32 and, when CUDA is
available, on the GPU in fp16. On the same weights and in the same run it times a 10-step
iterative loop (encode + 10 UNet evaluations + decode), how Marigold-style diffusion depth runs,
and prints the cost ratio.

    python bench/inference.py [--res 256] [--repeats 3] [--steps 10] [--no-cpu]
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.model.estimator import DepthEstimator  # noqa: E402
from fiffdepth_ros.model.tiny import build_sd2_modules  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def peak_memory_mb(device) -> str:
    if device.type == 'cuda':
        return f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (CUDA allocated)'
    return f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (process RSS)'


def bench_device(device: str, precision: str, res: int, repeats: int, steps: int, modules):
    unet, vae, embedding = modules
    est = DepthEstimator(unet, vae, embedding, device=device, precision=precision,
                         processing_res=res, model_name='SD2 architecture, random weights')
    dev = est.device
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
    image = np.random.default_rng(0).integers(0, 256, (res, res, 3), dtype=np.uint8)
    stages = {name: [] for name in ('pre-processing', 'VAE encode', 'UNet', 'VAE decode',
                                    'post-processing')}
    loop = []
    for i in range(repeats + 1):                      # the first round warms up
        batch, t_pre = timed(lambda: est.preprocess([image]), dev)
        latent, t_enc = timed(lambda: est.encode(batch.pixels), dev)
        depth_latent, t_unet = timed(lambda: est.run_unet(latent), dev)
        depth, t_dec = timed(lambda: est.decode(depth_latent), dev)
        _, t_post = timed(lambda: est.postprocess(depth, batch), dev)

        def iterative():
            # Marigold-style: the same encode and decode around `steps` UNet evaluations.
            z = est.encode(est.preprocess([image]).pixels)
            for _ in range(steps):
                z = est.run_unet(z)
            return est.decode(z)
        _, t_loop = timed(iterative, dev)
        if i:
            for name, t in zip(stages, (t_pre, t_enc, t_unet, t_dec, t_post)):
                stages[name].append(t)
            loop.append(t_loop)
    medians = {name: float(np.median(v)) for name, v in stages.items()}
    single = sum(medians.values())
    iterative_ms = float(np.median(loop))
    label = f'{dev.type} {est.describe()["precision"]}'
    print(f'\n## {label}, {res}x{res}, median of {repeats} runs after 1 warm-up')
    print('| stage | ms | share |')
    print('|---|---:|---:|')
    for name, ms in medians.items():
        print(f'| {name} | {ms:.1f} | {100 * ms / single:.0f} % |')
    print(f'| **single pass total** | **{single:.1f}** | |')
    print(f'| {steps}-step iterative loop (encode + {steps} x UNet + decode) | {iterative_ms:.1f} |'
          ' |')
    print(f'\ncost ratio, {steps}-step loop / single pass: {iterative_ms / single:.2f}x; '
          f'peak memory {peak_memory_mb(dev)}')
    del est


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--res', type=int, default=256, help='image side (square), pixels')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--no-cpu', action='store_true', help='skip the CPU measurement')
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    modules = build_sd2_modules()
    params = sum(p.numel() for p in modules[0].parameters())
    vae_params = sum(p.numel() for p in modules[1].parameters())
    print(f'# FiffDepth single-pass inference, SD2 architecture (UNet {params / 1e6:.0f}M, VAE '
          f'{vae_params / 1e6:.0f}M parameters, random weights; built in '
          f'{time.perf_counter() - t0:.1f} s)')
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA '
          f'{"available: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"}')
    if not args.no_cpu:
        bench_device('cpu', 'fp32', args.res, args.repeats, args.steps, modules)
    if torch.cuda.is_available():
        bench_device('cuda', 'fp16', args.res, args.repeats, args.steps, modules)


if __name__ == '__main__':
    main()
