"""The honest comparison for FiffDepth-nano: a plain pixel-space regressor, no diffusion.

    python bench/nano_regressor.py --data RUN/data --out RUN/regressor \
        [--budget-cpu-s 3600] [--snapshots 600,1200,...] [--threads 1]

A diffusers ``UNet2DModel`` (image in, one channel out, no VAE, no text embedding, no
timestep use: t is always 0) of about nano's parameter count, trained on the same frames as
scripts/train_nano.sh (RUN/data: the synthetic frames with their depth, the real-like images with
the teacher's pseudo-labels), with the same batch (4 synthetic + 4 real-like), the same target
(config/nano: method.target_space, depth_quantile), the same augmentation (data.zoom, flips),
the same losses (MAE + multi-scale gradient matching, training/losses.py), for a budget of CPU
seconds (this process's user + system time, so a loaded machine does not shorten it) with the
learning rate decayed over that budget. Snapshots are written when the CPU time passes each of
``--snapshots`` (RUN/regressor/cpu-NNNNN/), so the snapshot at nano's own training CPU time can
be scored. bench/nano_quality.py scores a snapshot with ``--regressor NAME=DIR``.

A benchmark, not a product feature: the package ships and runs FiffDepth models only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# About nano's parameter count (VAE + UNet: 4.1M); attention at the 1/8 scale only. Same block types as diffusers' pixel UNets.
ARCHITECTURE = dict(in_channels=3, out_channels=1, layers_per_block=1,
                    block_out_channels=(16, 48, 96, 144),
                    down_block_types=('DownBlock2D', 'DownBlock2D', 'DownBlock2D',
                                      'AttnDownBlock2D'),
                    up_block_types=('AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D'),
                    norm_num_groups=8, attention_head_dim=32)
PROCESSING_RES = 128           # what nano runs at (config/nano: export.default_processing_resolution)


def build_model(seed: int = 0):
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    return UNet2DModel(**ARCHITECTURE)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _forward(model, rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W); sides padded to a multiple of 8 and cropped."""
    h, w = rgb.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    x = F.pad(rgb, (0, pw, 0, ph), mode='replicate') if ph or pw else rgb
    out = model(x, 0).sample
    return out[..., :h, :w]


class Regressor:
    """A trained snapshot, used like DepthEstimator.predict: RGB uint8 HxWx3 -> HxW map in [0, 1]
    in the training's target space (``output_space``), at ``processing_res`` then resized back."""

    def __init__(self, folder, processing_res: int | None = None):
        from diffusers import UNet2DModel
        folder = Path(folder)
        self.meta = json.loads((folder / 'regressor.json').read_text())
        self.model = UNet2DModel.from_pretrained(folder).eval().requires_grad_(False)
        self.output_space = self.meta['target_space']
        self.processing_res = PROCESSING_RES if processing_res is None else int(processing_res)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        import cv2
        from fiffdepth_ros.model.estimator import target_size
        h, w = rgb.shape[:2]
        th, tw = target_size(h, w, self.processing_res) if self.processing_res else (h, w)
        small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA) if (th, tw) != (h, w) \
            else rgb
        x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float()
        # The engine's output contract: the [-1, 1] prediction clipped and mapped to [0, 1]
        # (model/stages.py), so that no unbounded value reaches the alignment.
        out = ((_forward(self.model, x / 127.5 - 1.0)[0, 0].clamp(-1.0, 1.0) + 1.0) / 2.0).numpy()
        if (th, tw) != (h, w):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        return out


def training_config(data_root: Path, real: bool = True) -> dict:
    """config/nano's data, method and batch settings, pointed at ``data_root``; ``real=False``
    drops the real-like images and their pseudo-labels (as scripts/nano_ablation.sh's noreal)."""
    from fiffdepth_ros.training.config import load_config
    overrides = [f'data.root={data_root}', f'data.split_root={data_root}']
    if not real:
        overrides += ['data.real=null', 'train.batch_size_real=0']
    return load_config(ROOT / 'config' / 'nano' / 'fiffdepth.yaml', overrides)


def train(data_root: Path, out: Path, budget_cpu_s: float, snapshots: list[float],
          lr: float = 1e-3, final_ratio: float = 0.05, seed: int = 2025,
          log_every: int = 50, real_like: bool = True) -> dict:
    from fiffdepth_ros.training.data.factory import build_training_data
    from fiffdepth_ros.training.data.mixing import BatchPlan, PlannedSamples, collate
    from fiffdepth_ros.training.losses import depth_terms
    from fiffdepth_ros.training.targets import normalized_target, pseudo_label_to_normalized
    cfg = training_config(data_root, real_like)
    method, tcfg, data = cfg['method'], cfg['train'], cfg['data']
    q, space = float(method['depth_quantile']), method['target_space']
    pl = method['pseudo_label']
    # As the trainer decides (training/loop.py): the real set only when batches take from it.
    synthetic, probs, real = build_training_data(
        data, need_real=int(tcfg['batch_size_real']) > 0)
    plan = BatchPlan([len(d) for d in synthetic], probs, len(real) if real else 0,
                     tcfg['batch_size_synthetic'], tcfg['batch_size_real'], seed,
                     flip_p=data['lr_flip_p'])
    samples = PlannedSamples(synthetic, real, data['zoom'])
    model = build_model(seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    w_gm, scales = float(method['weights']['gm']), int(method['gm_scales'])
    out.mkdir(parents=True, exist_ok=True)
    meta = {'what': 'plain pixel-space regressor (bench/nano_regressor.py): not a FiffDepth model',
            'architecture': {k: list(v) if isinstance(v, tuple) else v
                             for k, v in ARCHITECTURE.items()},
            'parameters': parameter_count(model), 'target_space': space,
            'depth_quantile': q, 'zoom': data['zoom'], 'lr': lr, 'final_ratio': final_ratio,
            'seed': seed, 'data': str(data_root), 'real_like': real_like,
            'budget_cpu_s': budget_cpu_s,
            'batch': [tcfg['batch_size_synthetic'], tcfg['batch_size_real']],
            'torch_threads': torch.get_num_threads(), 'snapshots': []}
    pending = sorted(float(s) for s in snapshots if s <= budget_cpu_s) + [budget_cpu_s]
    cpu0, wall0 = time.process_time(), time.time()
    step, history = 0, []
    while True:
        used = time.process_time() - cpu0
        if used >= pending[0]:
            mark = pending.pop(0)
            folder = out / f'cpu-{int(mark):05d}'
            model.save_pretrained(folder)
            snap = {'cpu_s': round(used, 1), 'wall_s': round(time.time() - wall0, 1),
                    'step': step, 'folder': folder.name,
                    'load_average': os.getloadavg()[0]}
            meta['snapshots'].append(snap)
            (folder / 'regressor.json').write_text(json.dumps(meta | {'snapshot': snap},
                                                              indent=1))
            print(f'snapshot {folder.name}: step {step}, {snap["wall_s"]:.0f} s wall',
                  flush=True)
            if not pending:
                break
        for group in optimizer.param_groups:            # exponential decay over the budget
            group['lr'] = lr * final_ratio ** min(1.0, used / budget_cpu_s)
        batch = collate([samples[d] for d in plan.micro_batch(step)])
        loss = torch.zeros(())
        if 'syn' in batch:
            syn = batch['syn']
            target = normalized_target(syn['depth'], syn['valid'], q, space)
            mae, gm = depth_terms(_forward(model, syn['rgb']), target, syn['valid'], scales)
            loss = loss + mae + w_gm * gm
        if 'real' in batch:
            label = pseudo_label_to_normalized(batch['real']['label'], pl['conversion'], q,
                                               float(pl['max_depth_ratio']), space)
            mask = torch.ones_like(label, dtype=torch.bool)
            mae, gm = depth_terms(_forward(model, batch['real']['rgb']), label, mask, scales)
            loss = loss + mae + w_gm * gm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg['max_grad_norm']))
        optimizer.step()
        history.append(float(loss.detach()))
        step += 1
        if step % log_every == 0:
            print(f'step {step}: loss {np.mean(history[-log_every:]):.4f}, cpu {used:.0f} s, '
                  f'lr {optimizer.param_groups[0]["lr"]:.2e}', flush=True)
    meta['steps'] = step
    meta['loss_every_50'] = [round(float(np.mean(history[i:i + 50])), 4)
                             for i in range(0, len(history), 50)]
    (out / 'regressor.json').write_text(json.dumps(meta, indent=1))
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', type=Path, required=True, help="scripts/train_nano.sh's RUN/data")
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--budget-cpu-s', type=float, default=3600.0,
                    help='CPU seconds (user + system of this process) to train for')
    ap.add_argument('--snapshots', default='',
                    help='comma-separated CPU seconds at which to save a snapshot too')
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--seed', type=int, default=2025)
    ap.add_argument('--no-real', action='store_true',
                    help='synthetic frames only (no real-like images, no pseudo-labels)')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    snapshots = [float(s) for s in args.snapshots.split(',') if s.strip()]
    meta = train(args.data.resolve(), args.out, args.budget_cpu_s, snapshots, lr=args.lr,
                 seed=args.seed, real_like=not args.no_real)
    print(f"regressor: {meta['parameters'] / 1e6:.2f}M parameters, {meta['steps']} steps, "
          f"snapshots {[s['folder'] for s in meta['snapshots']]} in {args.out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
