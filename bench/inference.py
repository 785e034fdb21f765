#!/usr/bin/env python3
"""Latency and memory of each depth family on the full-size SD2 architecture, in one engine.

For each family (FiffDepth, E2E-FT, Lotus-D, Marigold) builds the Stable Diffusion 2 UNet
(~866M parameters, laid out for the family: 8 input channels for E2E-FT/Marigold, a class
embedding for Lotus-D) and VAE (~84M) with random weights (no download; a forward pass costs the
same whatever the weights' values). The single-step families run the shared stages of the
engine; Marigold runs diffusers' MarigoldDepthPipeline through the engine with
--marigold-steps UNet evaluations. The families share one VAE and the UNet weights their layouts
have in common (all but conv_in and the class embedding), so four engines fit in the memory of
one. First the per-stage medians of the first family (pre-processing, VAE encode, UNet step, VAE
decode, post-processing), then every family's whole frame, timed round-robin so that a drifting
shared machine loads each the same, with its cost relative to FiffDepth. CPU in fp32 and, when
CUDA is available, the GPU in fp16 (peak memory of torch's allocator).

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
sys.path.insert(0, str(Path(__file__).resolve().parent))            # bench/timing.py

from fiffdepth_ros.model.estimator import DepthEstimator  # noqa: E402
from fiffdepth_ros.model.families import make_family  # noqa: E402
from fiffdepth_ros.model.families.base import CheckpointInfo  # noqa: E402
from fiffdepth_ros.model.tiny import build_sd2_modules, family_layout  # noqa: E402
from timing import interleaved_ms  # noqa: E402

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


def _share_weights(unet, base) -> int:
    """Make ``unet`` use ``base``'s parameter objects wherever name and shape agree (all but
    conv_in for 8 channels and the class embedding): the families then cost one UNet of
    memory, not four. Returns the number of parameters of its own."""
    own = 0
    shared = dict(base.named_parameters())
    for name, param in list(unet.named_parameters()):
        owner_name, _, leaf = name.rpartition('.')
        owner = unet.get_submodule(owner_name)
        twin = shared.get(name)
        if twin is not None and twin.shape == param.shape:
            owner._parameters[leaf] = twin
        else:
            own += param.numel()
    return own


def sd2_estimators(families, device: str, precision: str, res: int, marigold_steps: int,
                   seed: int = 0) -> dict:
    """{family: engine} on SD2-size random modules laid out for each family, built in memory
    and sharing one VAE and the UNet weights their layouts have in common."""
    import diffusers
    from fiffdepth_ros.model.tiny import SD2_UNET, _random_init_, unet_config
    base, vae, embedding = build_sd2_modules(seed, 'fiffdepth')
    # Already in the engine's memory format: its preparation then copies nothing shared.
    base.to(memory_format=torch.channels_last)
    vae.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed + 1)
    engines = {}
    for family in families:
        unet = base
        if family != 'fiffdepth':
            with torch.device('meta'):
                unet = diffusers.UNet2DConditionModel(**unet_config(SD2_UNET, family))
            unet.to_empty(device='cpu')
            _random_init_(unet, generator)
            own = _share_weights(unet, base)
            unet = unet.eval().to(memory_format=torch.channels_last)
            print(f'({family}: {own / 1e6:.2f}M parameters of its own, the rest shared)')
        model_index, scheduler = family_layout(family)
        info = CheckpointInfo(root=Path('.'), name=f'sd2-random-{family}',
                              unet_config=dict(unet.config), model_index=model_index,
                              scheduler_config=scheduler)
        strategy = make_family(info, family, denoising_steps=marigold_steps, ensemble_size=1,
                               seed=seed)
        engines[family] = DepthEstimator(
            unet, vae, embedding, device=device, precision=precision, processing_res=res,
            model_name=f'SD2 architecture ({family}), random weights', family=strategy)
    return engines


def bench_stages(est: DepthEstimator, image, repeats: int) -> None:
    """Per-stage median latency and peak memory of a single-step family."""
    dev = est.device
    meter = MemoryMeter(dev)
    resident = meter.current_mb()
    times = {name: [] for name in STAGES}
    peaks = {name: 0.0 for name in STAGES}
    for i in range(repeats + 1):                      # round 0 warms up
        batch, *pre = measure(lambda: est.preprocess([image]), dev, meter)
        latent, *enc = measure(lambda: est.encode(batch.pixels), dev, meter)
        depth_latent, *unet_ = measure(lambda: est.run_unet(latent), dev, meter)
        depth, *dec = measure(lambda: est.decode(depth_latent), dev, meter)
        _, *post = measure(lambda: est.postprocess(depth, batch), dev, meter)
        if i:
            for name, (t, m) in zip(STAGES, (pre, enc, unet_, dec, post)):
                times[name].append(t)
                peaks[name] = max(peaks[name], m)
    medians = {name: float(np.median(v)) for name, v in times.items()}
    single = sum(medians.values())
    h, w = batch.pixels.shape[-2:]
    print(f'\n## {est.family} stages: {dev.type} {est.describe()["precision"]}, model input '
          f'{h}x{w} (latent {latent.shape[-2]}x{latent.shape[-1]}), {repeats} timed runs after '
          f'1 warm-up')
    print(f'memory: {meter.kind()}; {resident:.0f} MB resident before the first frame\n')
    print('| stage | median ms | min ms | share | peak MB |')
    print('|---|---:|---:|---:|---:|')
    for name in STAGES:
        print(f'| {name} | {medians[name]:.1f} | {min(times[name]):.1f} '
              f'| {100 * medians[name] / single:.0f} % | {peaks[name]:.0f} |')
    print(f'| sum of stages | {single:.1f} | {sum(min(v) for v in times.values()):.1f} '
          f'| 100 % | {max(peaks.values()):.0f} |')


def bench_device(device: str, precision: str, args) -> None:
    t0 = time.perf_counter()
    engines = sd2_estimators(args.families, device, precision, args.res, args.marigold_steps)
    print(f'(built {len(engines)} engines in {time.perf_counter() - t0:.1f} s)')
    image = np.random.default_rng(0).integers(0, 256, (args.res, args.res, 3), dtype=np.uint8)
    first = engines[args.families[0]]
    if not first.strategy.own_pipeline:
        bench_stages(first, image, args.repeats)
    meter = MemoryMeter(first.device)
    peaks = {}

    def frame(family):
        def run():
            meter.reset()
            engines[family].predict(image)
            if device == 'cuda':
                torch.cuda.synchronize()
            peaks[family] = max(peaks.get(family, 0.0), meter.peak_mb())
        return run
    # Round-robin: on a shared machine whose speed drifts, every family sees the same load.
    stats = interleaved_ms({f: frame(f) for f in engines}, args.repeats)
    base = stats.get('fiffdepth')
    print(f'\n## whole frame per family: {device} {precision}, {args.res}x{args.res} input, '
          f'{args.repeats} round-robin rounds after 1 warm-up ({meter.kind()})\n')
    print('| family | UNet passes | median ms | p10-p90 ms | peak MB | x FiffDepth |')
    print('|---|---:|---:|---:|---:|---:|')
    for family, (median, p10, p90) in stats.items():
        passes = engines[family].describe().get('denoising_steps', 1)
        ratio = f'{median / base[0]:.2f}x' if base else 'n/a'
        print(f'| {family} | {passes} | {median:.0f} | {p10:.0f}-{p90:.0f} '
              f'| {peaks[family]:.0f} | {ratio} |')
    if device == 'cpu':
        # Other processes on the same cores slow OpenMP kernels far more than their share.
        print(f'\nload average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} '
              f'cores (this benchmark alone accounts for about {torch.get_num_threads()})')
    del engines
    if device == 'cuda':
        torch.cuda.empty_cache()


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
