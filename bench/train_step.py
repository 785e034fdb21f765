#!/usr/bin/env python3
"""Time and peak memory of one FiffDepth training step at Stable Diffusion 2 size.

Builds the full SD2 UNet (~866M parameters) and VAE (~84M) with random weights (no download; a
step costs the same whatever the values) and runs the trainer's own functions: the frozen-VAE
preparation (build_inputs: image and target latents), then each of the three UNet uses with its
own backward pass (the gradient of the summed loss is the sum of these), then the optimiser step.

    python bench/train_step.py [--res 128x160] [--batch 1] [--steps 2] [--checkpointing]
                               [--optimizer sgd|adam] [--device cpu|cuda] [--bf16]
                               [--size sd2|tiny] [--json PATH]

CPU default: fp32, 128x160 px, SGD (Adam's two fp32 moments add 2 x 3.5 GB that a small shared
machine may not have; they are reported as computed bytes, not measured). CUDA default when a
device is present: 480x640, bf16 autocast, Adam, gradient checkpointing off.
Memory: CUDA, torch's allocator peak per phase; CPU, the process's peak resident set (VmHWM)
per phase, reset before each phase through /proc/self/clear_refs (Linux).
``--size tiny``: the tiny random UNet and VAE (model.tiny) instead, for a smoke run of this
script (the GPU check kit's CPU smoke); ``--json``: the table's numbers in a file as well.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.model.tiny import SD2_TEXT_DIM, build_sd2_modules  # noqa: E402
from fiffdepth_ros.training.config import DEFAULTS  # noqa: E402
from fiffdepth_ros.training.step import (  # noqa: E402
    MethodSettings, build_inputs, feed_forward_terms, filter_terms, trajectory_terms,
    weighted_total)

PHASES = ('VAE: inputs and targets', 'use 1: t=0 synthetic', 'use 2: t=0 -> t=-1 real',
          'use 3: trajectory', 'optimiser step')


class Memory:
    def __init__(self, device):
        self.device = device

    def reset(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path('/proc/self/clear_refs').write_text('5')
        except OSError:
            pass

    def peak_mb(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
        return float('nan')


def make_batch(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
    return {'syn': {'rgb': torch.rand(b, 3, h, w, generator=g) * 2 - 1,
                    'depth': 1 + 5 * yy + torch.rand(b, 1, h, w, generator=g),
                    'valid': torch.rand(b, 1, h, w, generator=g) > 0.05,
                    'seed': torch.arange(b, dtype=torch.int64)},
            'real': {'rgb': torch.rand(b, 3, h, w, generator=g) * 2 - 1,
                     'label': torch.rand(b, 1, h, w, generator=g) + yy,
                     'seed': torch.arange(b, dtype=torch.int64) + 100}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--res', default=None, help='HxW in pixels (CPU 128x160, CUDA 480x640)')
    ap.add_argument('--batch', type=int, default=1, help='synthetic and real images each')
    ap.add_argument('--steps', type=int, default=2, help='timed steps (after one warm-up)')
    ap.add_argument('--optimizer', choices=('sgd', 'adam'), default=None)
    ap.add_argument('--checkpointing', action='store_true', help='gradient checkpointing')
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast (default on CUDA)')
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    ap.add_argument('--size', choices=('sd2', 'tiny'), default='sd2',
                    help='the SD2 architecture, or the tiny random model (a smoke run)')
    ap.add_argument('--json', type=Path, default=None, help='also write the numbers here')
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = map(int, (args.res or ('480x640' if cuda else '128x160')).split('x'))
    optimizer_name = args.optimizer or ('adam' if cuda else 'sgd')
    bf16 = args.bf16 or cuda
    mem = Memory(device)

    from diffusers import DDPMScheduler
    t0 = time.perf_counter()
    if args.size == 'tiny':
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_models import embedding_dim, modules
        unet, vae, _ = modules('tiny')
        unet.train()
    else:
        unet, vae, _ = build_sd2_modules(seed=0)
    width = embedding_dim('tiny') if args.size == 'tiny' else SD2_TEXT_DIM
    embedding = torch.randn(1, 2, width, generator=torch.Generator().manual_seed(1)) * 0.1
    scheduler = DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
                              prediction_type='v_prediction')
    vae = vae.to(device, torch.bfloat16 if bf16 else torch.float32).requires_grad_(False)
    unet = unet.to(device).train()
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    params = sum(p.numel() for p in unet.parameters())
    opt = (torch.optim.SGD(unet.parameters(), lr=1e-6) if optimizer_name == 'sgd'
           else torch.optim.Adam(unet.parameters(), lr=3e-5))
    embedding = embedding.to(device)
    alphas = scheduler.alphas_cumprod.to(device)
    settings = MethodSettings.from_config(DEFAULTS['method'], 'v_prediction')
    print(f'# built {args.size} UNet ({params / 1e6:.0f}M parameters) and VAE in '
          f'{time.perf_counter() - t0:.1f} s; device {device}, {h}x{w} px, batch {args.batch} '
          f'synthetic + {args.batch} real, {"bf16 autocast" if bf16 else "fp32"}, '
          f'{optimizer_name}, gradient checkpointing {"on" if args.checkpointing else "off"}, '
          f'torch threads {torch.get_num_threads()}')
    batch = make_batch(args.batch, h, w)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def one_step():
        times, peaks = {}, {}

        def phase(name, fn):
            mem.reset()
            sync()
            start = time.perf_counter()
            out = fn()
            sync()
            times[name] = time.perf_counter() - start
            peaks[name] = mem.peak_mb()
            return out

        inputs = phase(PHASES[0], lambda: build_inputs(batch, vae, 0.18215, 1000,
                                                       DEFAULTS['method'], device))

        def backward(terms):
            with autocast:
                loss = weighted_total(terms, settings)
            loss.backward()
            return float(loss.detach())

        def use1():
            with autocast:
                terms, _ = feed_forward_terms(unet, embedding, inputs, settings)
            return backward(terms)

        def use2():
            with autocast:
                terms, _, _ = filter_terms(unet, embedding, inputs, settings)
            return backward(terms)

        def use3():
            with autocast:
                terms, _ = trajectory_terms(unet, embedding, alphas, inputs, settings)
            return backward(terms)

        phase(PHASES[1], use1)
        phase(PHASES[2], use2)
        phase(PHASES[3], use3)

        def step():
            opt.step()
            opt.zero_grad(set_to_none=False)   # keep the grads allocated: the steady state
        phase(PHASES[4], step)
        return times, peaks

    one_step()                                  # warm-up (allocates grads and optimiser state)
    runs = [one_step() for _ in range(args.steps)]
    print(f'\n| phase | median s | share of step | peak memory MB |')
    print('| --- | --- | --- | --- |')
    med = {p: float(np.median([r[0][p] for r in runs])) for p in PHASES}
    peak = {p: max(r[1][p] for r in runs) for p in PHASES}
    total = sum(med.values())
    for p in PHASES:
        print(f'| {p} | {med[p]:.2f} | {100 * med[p] / total:.0f} % | {peak[p]:.0f} |')
    print(f'| whole step | {total:.2f} | 100 % | {max(peak.values()):.0f} |')
    uses = med[PHASES[1]] + med[PHASES[2]] + med[PHASES[3]]
    print(f'\nUNet uses side by side (forward + backward): use 1 : use 2 : use 3 = '
          f'1 : {med[PHASES[2]] / med[PHASES[1]]:.2f} : {med[PHASES[3]] / med[PHASES[1]]:.2f}; '
          f'the three uses take {100 * uses / total:.0f} % of the step')
    print(f'weights + grads (fp32): {2 * params * 4 / 2**30:.2f} GiB computed; Adam would add '
          f'{2 * params * 4 / 2**30:.2f} GiB of moments (computed)')
    if args.json:
        args.json.write_text(json.dumps({
            'size': args.size, 'device': str(device), 'res': f'{h}x{w}', 'batch': args.batch,
            'bf16': bf16, 'checkpointing': args.checkpointing, 'optimizer': optimizer_name,
            'steps': args.steps, 'parameters': params, 'whole_step_s': total,
            'peak_mb': max(peak.values()), 'memory': 'CUDA allocator peak' if cuda else
            'process peak RSS (VmHWM)',
            'phases': {p: {'median_s': med[p], 'peak_mb': peak[p]} for p in PHASES}},
            indent=2) + '\n')


if __name__ == '__main__':
    main()
