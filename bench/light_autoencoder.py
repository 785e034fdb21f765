#!/usr/bin/env python3
"""Light autoencoder (model.light) against the full VAE: cost at SD2 size, accuracy on a model.

    python bench/light_autoencoder.py [--model nano] [--work DIR] [--steps N] [--frames N]
                                      [--distil-frames N] [--no-cost] [--no-accuracy]

(a) FLOPs (torch.utils.flop_counter) of one 480x640 frame at SD2 size (random weights): VAE
    encoder, UNet, VAE decoder against the light encoder and decoder (TAESD's blocks, width 64),
    whole frame full / light / each half.
(b) CPU time per frame at processing_res 256 (a 640x480 frame, DepthEstimator.predict, fp32,
    torch), the same SD2-size engine with the full VAE and with the light parts, timed
    round-robin on the same machine.
(c) Accuracy on --model (default the built-in nano): its light parts are distilled with
    fiffdepth-train (config/nano/light_autoencoder.yaml, --steps, one torch thread) over
    procedural frames of both domains (images only; --distil-frames per domain, training seeds)
    into a copy of the model under --work (skipped when that copy has them already), then
    AbsRel / delta1 after the same least-squares alignment, full vs light vs each half light:
    held-out procedural frames (bench/nano_quality.py's seeds, both domains, native 128x96) and
    the demo's synthetic room (12 frames, processing_res 256); and ms per 640x480 frame at 256.
(d) One distillation step at SD2 size (the stage's own loss): CPU seconds, FLOPs, activation
    memory of the light parts, from which the README sizes a GPU run (not measured on a GPU).
Every number is measured when it runs; the load average is printed beside the timings.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

from nano_quality import aligned_metrics, held_out  # noqa: E402
from timing import interleaved_ms, tflops  # noqa: E402

from fiffdepth_ros.model import stages  # noqa: E402

ROOM_MAX_DEPTH = 30.0
VARIANTS = ('full', 'light', 'light_encoder', 'light_decoder')


def load() -> str:
    return ', '.join(f'{v:.2f}' for v in os.getloadavg())


def sd2_parts(meta: bool = False):
    """SD2-size UNet, VAE, empty-prompt embedding and TAESD-width light parts; on the meta
    device (shapes only: FLOPs are counted without computing) or with random CPU weights."""
    from fiffdepth_ros.model.light import LightDecoder, LightEncoder
    if meta:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from fiffdepth_ros.model.tiny import SD2_TEXT_DIM, SD2_UNET, SD2_VAE
        with torch.device('meta'):
            return (UNet2DConditionModel(**SD2_UNET), AutoencoderKL(**SD2_VAE),
                    torch.zeros(1, 2, SD2_TEXT_DIM), LightEncoder(), LightDecoder())
    from fiffdepth_ros.model.tiny import build_sd2_modules
    unet, vae, embedding = build_sd2_modules(0, 'fiffdepth')
    torch.manual_seed(0)
    return unet, vae, embedding, LightEncoder().eval(), LightDecoder().eval()


def cost(args) -> dict:
    unet, vae, embedding, light_enc, light_dec = sd2_parts(meta=True)
    x = torch.zeros(1, 3, 480, 640, device='meta')
    z = torch.zeros(1, 4, 60, 80, device='meta')
    t = {'vae_encoder': tflops(lambda: stages.encode_image(vae, x, 0.18215)),
         'unet': tflops(lambda: stages.unet_pass(unet, z, 0, embedding)),
         'vae_decoder': tflops(lambda: stages.decode_latent(vae, z, 0.18215)),
         'light_encoder': tflops(lambda: stages.light_encode(light_enc, x)),
         'light_decoder': tflops(lambda: stages.light_decode(light_dec, z))}
    frame = {'full': t['vae_encoder'] + t['unet'] + t['vae_decoder'],
             'light': t['light_encoder'] + t['unet'] + t['light_decoder'],
             'light_encoder': t['light_encoder'] + t['unet'] + t['vae_decoder'],
             'light_decoder': t['vae_encoder'] + t['unet'] + t['light_decoder']}
    params = {'vae_encoder': sum(p.numel() for p in vae.encoder.parameters()),
              'vae_decoder': sum(p.numel() for p in vae.decoder.parameters()),
              'light_encoder': sum(p.numel() for p in light_enc.parameters()),
              'light_decoder': sum(p.numel() for p in light_dec.parameters())}
    print(f'(a) FLOPs of one 480x640 frame, SD2 size, random weights (TFLOPs; multiply-adds '
          f'counted as 2): ' + ', '.join(f'{k} {v:.3f}' for k, v in t.items()))
    print('    parameters: ' + ', '.join(f'{k} {v / 1e6:.2f}M' for k, v in params.items()))
    for name, value in frame.items():
        print(f'    whole frame {name:14s} {value:.3f} TFLOPs  {frame["full"] / value:.2f}x '
              f'fewer than full')
    # (b) CPU time per frame at 256 through the engine.
    unet, vae, embedding, light_enc, light_dec = sd2_parts()
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.model.families import make_family
    from fiffdepth_ros.model.families.base import CheckpointInfo
    from fiffdepth_ros.model.tiny import family_layout, unet_config, SD2_UNET
    torch.set_num_threads(args.threads)
    index, _ = family_layout('fiffdepth')
    family = lambda: make_family(CheckpointInfo(root=Path('.'), name='sd2-random',  # noqa: E731
                                                unet_config=unet_config(SD2_UNET, 'fiffdepth'),
                                                model_index=index), 'fiffdepth')
    full = DepthEstimator(unet, vae, embedding, device='cpu', precision='fp32',
                          processing_res=256, family=family())
    light = DepthEstimator(unet, None, embedding, device='cpu', precision='fp32',
                           processing_res=256, family=family(), light_encoder=light_enc,
                           light_decoder=light_dec)
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    before = load()
    ms = interleaved_ms({'full': lambda: full.predict(image),
                         'light': lambda: light.predict(image)}, args.repeats, warmup=1)
    print(f'(b) CPU ms per 640x480 frame at processing_res 256, SD2 size, fp32 torch, '
          f'{args.threads} thread(s), {args.repeats} round-robin repeats (median, p10-p90); '
          f'load average {before} before, {load()} after:')
    for name, (median, p10, p90) in ms.items():
        print(f'    {name:6s} {median:8.0f} ms  ({p10:.0f}-{p90:.0f})  '
              f'{ms["full"][0] / median:.2f}x')
    step = distil_step(args, full, light_enc, light_dec)
    return {'flops_tflops': t, 'frame_tflops': frame, 'params': params,
            'cpu_ms_256': {k: v[0] for k, v in ms.items()}, 'threads': args.threads,
            'distil_step': step}


def distil_step(args, teacher, light_enc, light_dec, device: str = 'cpu',
                bf16: bool = False, images: int = 1) -> dict:
    """(d) One distillation step at SD2 size through the stage's own loss: the teacher (full
    VAE + UNet) forward, the light parts forward and backward, on ``images`` --step-res square
    images; seconds, FLOPs (counted on the same call) and the activations autograd keeps. On
    CUDA (the GPU check kit: the teacher and the parts already there) also the peak of torch's
    allocator; ``bf16``: the forward under bf16 autocast, as the stage's mixed_precision."""
    import contextlib
    import types
    from fiffdepth_ros.training.stages.light_autoencoder import LightAutoencoderStage, LightPair
    dev = torch.device(device)
    pair = LightPair(light_dec, light_enc).train().requires_grad_(True)
    autocast = ((lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16
                else contextlib.nullcontext)
    trainer = types.SimpleNamespace(
        teacher=teacher, light=pair, cfg={'method': {'light_autoencoder': {'gm_scales': 3}}},
        light_weights={'depth': 1.0, 'gradient': 0.5, 'latent': 1.0},
        accelerator=types.SimpleNamespace(device=dev, autocast=autocast))
    res = args.step_res
    h, w = getattr(args, 'step_hw', None) or (res, res)
    batch = {'real': {'rgb': torch.rand(images, 3, h, w, device=dev) * 2 - 1}}
    stage = LightAutoencoderStage()
    cuda = dev.type == 'cuda'

    def run():
        pair.zero_grad(set_to_none=True)
        stage.loss(trainer, batch)['loss'].backward()
        if cuda:
            torch.cuda.synchronize(dev)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        run()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        run()
    before = load()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = [0.0] * args.step_repeats
    for i in range(args.step_repeats):
        t0 = time.perf_counter()
        run()
        seconds[i] = time.perf_counter() - t0
    step_s = float(np.median(seconds))
    step_tflops = counter.get_total_flops() / 1e12
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
    where = (f'{device}, ' if cuda else f'CPU, {args.threads} thread(s), ') + (
        'bf16 autocast' if bf16 else 'fp32')
    print(f'(d) one distillation step, {images} image(s) {h}x{w}, {where}: '
          f'{step_s:.2f} s (median of {args.step_repeats}; load average {before} before, '
          f'{load()} after), {step_tflops:.3f} TFLOPs (teacher forward + light parts forward and '
          f'backward), autograd keeps {sum(saved) / 2**20:.0f} MiB of activations for the '
          f'light parts' + (f', peak allocated {peak:.0f} MiB' if cuda else ''))
    return {'res': [h, w], 'images': images, 'device': device, 'bf16': bf16, 'seconds': step_s,
            'tflops': step_tflops, 'saved_mib': sum(saved) / 2**20, 'peak_mib': peak}


# ---------------------------------------------------------------------- accuracy
def distil(args, model_copy: Path) -> dict:
    """Distil the light parts into ``model_copy`` with fiffdepth-train (a fresh process)."""
    from fiffdepth_ros.training.data import procedural as proc
    data = args.work / 'data'
    if not (data / 'val' / 'frames.txt').is_file():
        t0 = time.time()
        for domain in proc.DOMAINS:
            proc.write_frames(data / 'frames' / domain, proc.training_seeds(0, args.distil_frames),
                              domain, 128, 96, depth_format='none')
        proc.write_frames(data / 'val', proc.held_out_seeds(32, 5000), 'synthetic', 128, 96)
        print(f'    rendered {2 * args.distil_frames} distillation frames and 32 validation '
              f'frames in {time.time() - t0:.0f} s')
    run = args.work / 'run'
    shutil.rmtree(run, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT),
               FIFFDEPTH_CACHE=str(args.work / 'cache'))
    command = ['fiffdepth-train', '--config', str(ROOT / 'config/nano/light_autoencoder.yaml'),
               f'model.init={model_copy}', 'method.light_autoencoder.install=true',
               f'data.root={data}', f'data.split_root={data}', f'output_dir={run}',
               f'train.max_steps={args.steps}', f'train.lr_schedule.total_steps={args.steps}',
               'train.progress_bar=false', 'data.num_workers=0',
               f'train.checkpoint_every={max(1, args.steps // 4)}']
    import resource
    before, t0 = load(), time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if out.returncode != 0:
        sys.exit(f'distillation failed:\n{out.stderr[-3000:]}')
    record = json.loads((model_copy / 'light_decoder' / 'distillation.json').read_text())
    print(f'    distilled {args.steps} steps x {record["train"]["batch_size_real"]} images in '
          f'{seconds / 60:.1f} min wall, {cpu / 60:.1f} min of CPU time (1 torch thread; the '
          f'CPU time is what the run costs on this CPU when it has a core to itself; load '
          f'average {before} before, {load()} after); last log {json.dumps(record["last_log"])}')
    return {'seconds': seconds, 'cpu_seconds': cpu, 'steps': args.steps, 'load_before': before,
            'load_after': load(), 'validation': record['validation']}


def accuracy(args) -> dict:
    from fiffdepth_ros.demo.accuracy import room_stream
    from fiffdepth_ros.demo.scene import SyntheticRoom
    from fiffdepth_ros.model.checkpoint import resolve_checkpoint
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.training.data import procedural
    args.work.mkdir(parents=True, exist_ok=True)
    model_copy = args.work / 'model'
    result = {}
    if not (model_copy / 'light_decoder').is_dir() or not (model_copy / 'light_encoder').is_dir():
        source = resolve_checkpoint(args.model).root
        shutil.rmtree(model_copy, ignore_errors=True)
        shutil.copytree(source, model_copy, ignore=shutil.ignore_patterns('light_*'))
        print(f'(c) distilling the light parts of {args.model} into {model_copy}')
        result['distillation'] = distil(args, model_copy)
    else:
        print(f'(c) using the light parts already in {model_copy} (delete them to distil again)')
    torch.set_num_threads(args.threads)
    seeds, domains = held_out(args.frames, args.seed_offset)
    room = SyntheticRoom(640, 480, lidar_lines=32)
    room_frames = [(f.rgb, f.depth, f.depth > 0) for f in room_stream(room)[1:]]
    cache = str(args.work / 'cache')
    rows, speed = {}, {}
    for variant in args.variants.split(','):
        native = DepthEstimator.from_pretrained(str(model_copy), device='cpu', precision='fp32',
                                                processing_res=0, cache_dir=cache,
                                                autoencoder=variant)
        row = {f'heldout_{d}': aligned_metrics(native.predict, f, procedural.MAX_VALID_DEPTH)
               for d, f in domains.items()}
        est = DepthEstimator.from_pretrained(str(model_copy), device='cpu', precision='fp32',
                                             processing_res=256, cache_dir=cache,
                                             autoencoder=variant)
        row['room_relative'] = aligned_metrics(est.predict, room_frames, ROOM_MAX_DEPTH)
        rows[variant] = row
        speed[variant] = est
    image = room_frames[0][0]
    before = load()
    ms = interleaved_ms({v: (lambda e=e: e.predict(image)) for v, e in speed.items()},
                        args.speed_frames, warmup=3)
    after = load()
    print(f'    {args.model}: held-out procedural frames {args.frames} per domain (seeds '
          f'{seeds.start}..{seeds.stop - 1}, 128x96 native), demo room {len(room_frames)} '
          f'frames at 256; AbsRel / delta1 after least-squares scale and shift in depth')
    print(f"    {'variant':14s} {'synthetic':>15s} {'real-like':>15s} {'room AbsRel':>12s} "
          f"{'AbsRel/full':>24s} {'ms @256':>9s}")
    for variant, row in rows.items():
        cells = [f"{row[f'heldout_{d}']['abs_rel']:.3f} / {row[f'heldout_{d}']['delta1']:.3f}"
                 for d in procedural.DOMAINS]
        ratios = '/'.join(
            f"{row[k]['abs_rel'] / rows['full'][k]['abs_rel']:.3f}"
            for k in ('heldout_synthetic', 'heldout_real', 'room_relative'))
        print(f"    {variant:14s} {cells[0]:>15s} {cells[1]:>15s} "
              f"{row['room_relative']['abs_rel']:12.3f} {ratios:>24s} {ms[variant][0]:9.1f}")
    print(f'    (AbsRel/full: synthetic/real-like/room; ms: median of {args.speed_frames} '
          f'round-robin frames, {args.threads} thread(s), load average {before} before, '
          f'{after} after)')
    result.update(rows=rows, ms_256={k: v[0] for k, v in ms.items()})
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='nano', help="model for (c): 'nano' or a folder")
    ap.add_argument('--work', type=Path, default=Path('/tmp/fiffdepth_light_bench'),
                    help='the model copy, distillation data and run (reused when present)')
    ap.add_argument('--steps', type=int, default=400, help='distillation steps (c)')
    ap.add_argument('--distil-frames', type=int, default=1000,
                    help='procedural distillation frames per domain (c)')
    ap.add_argument('--frames', type=int, default=200, help='held-out frames per domain (c)')
    ap.add_argument('--seed-offset', type=int, default=10000)
    ap.add_argument('--variants', default=','.join(VARIANTS),
                    help='autoencoder variants compared in (c); full first')
    ap.add_argument('--speed-frames', type=int, default=20)
    ap.add_argument('--repeats', type=int, default=3, help='SD2-size frames per variant (b)')
    ap.add_argument('--threads', type=int, default=1, help='torch threads for timings')
    ap.add_argument('--step-res', type=int, default=256, help='image side of the step (d)')
    ap.add_argument('--step-repeats', type=int, default=2, help='timed steps (d)')
    ap.add_argument('--no-cost', action='store_true', help='skip (a) and (b)')
    ap.add_argument('--no-accuracy', action='store_true', help='skip (c)')
    ap.add_argument('--json', type=Path)
    args = ap.parse_args(argv)
    print(f'bench/light_autoencoder.py: CPU cores {len(os.sched_getaffinity(0))}, load average '
          f'{load()}, torch {torch.__version__}')
    out = {}
    if not args.no_cost:
        out['cost'] = cost(args)
    if not args.no_accuracy:
        out['accuracy'] = accuracy(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
