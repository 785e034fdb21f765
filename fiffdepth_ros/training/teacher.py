"""A small Depth Anything trained on the procedural synthetic domain: the nano recipe's teacher.

FiffDepth's t = -1 filter learns from Depth Anything V2 predictions on real images. No such
weights can be downloaded here, so this module trains a stand-in with the same interface: a real
``transformers.DepthAnythingForDepthEstimation`` (DINOv2 backbone, DPT neck and head) built from a
tiny configuration, trained like Depth Anything on synthetic images with exact depth only:

- target: affine-invariant disparity (1 / depth; the sky, depth inf, is disparity 0);
- loss: Depth Anything's scale-and-shift-invariant loss (each map shifted by its median and
  divided by its mean absolute deviation, then the mean absolute difference), plus MiDaS'
  multi-scale gradient matching on the normalised maps (Depth Anything V2 weighs them 1 : 2);
  by default with the prediction's scale pinned (only the target is divided by its spread:
  ``teacher_loss`` says why a from-scratch network needs it);
- data: ``procedural`` frames of the ``synthetic`` domain from ``TRAIN_SEEDS`` only; it never
  sees the ``real`` domain, nor its depth, so its pseudo-labels on that domain are a real
  domain transfer, as Depth Anything's are on LAION.

The saved folder has the layout of a Hugging Face Depth Anything checkpoint (``config.json``,
``model.safetensors``, ``preprocessor_config.json``) plus ``teacher_provenance.json``, so
``fiffdepth-pseudolabel --teacher DIR`` runs it like the real one. Training images are resized
exactly as that tool resizes (``pseudolabel.teacher_size``, bicubic) and normalised with the
same ImageNet statistics.

    python -m fiffdepth_ros.training.teacher --out runs/teacher --steps 2000 --input-size 140
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .data import procedural
from .pseudolabel import IMAGENET_MEAN, IMAGENET_STD, teacher_size

log = logging.getLogger(__name__)

# Backbone and DPT widths per preset ('test' is for unit tests). The DPT neck reads four
# backbone layers, so a preset has at least four.
PRESETS = {
    'nano': dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2,
                 neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16),
    'test': dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8),
}
PATCH = 14
PROVENANCE_FILE = 'teacher_provenance.json'


# ------------------------------------------------------------------------------ the model
def build_teacher(preset: str = 'nano', input_size: int = 140, seed: int = 0):
    """A randomly initialised DepthAnythingForDepthEstimation of the preset's size."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    if preset not in PRESETS:
        raise ValueError(f"teacher preset must be one of {sorted(PRESETS)}, got '{preset}'")
    p = PRESETS[preset]
    layers = p['num_hidden_layers']
    backbone = Dinov2Config(
        image_size=PATCH * math.ceil(input_size / PATCH), patch_size=PATCH,
        hidden_size=p['hidden_size'], num_hidden_layers=layers,
        num_attention_heads=p['num_attention_heads'], mlp_ratio=p['mlp_ratio'],
        out_indices=[max(1, round(layers * k / 4)) for k in (1, 2, 3, 4)],
        reshape_hidden_states=False)
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH, reassemble_hidden_size=p['hidden_size'],
        neck_hidden_sizes=p['neck_hidden_sizes'], fusion_hidden_size=p['fusion_hidden_size'],
        head_hidden_size=p['head_hidden_size'], depth_estimation_type='relative')
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():
        # Transformers initialises every convolution as N(0, 0.02), a choice for weights that
        # are about to be overwritten by a checkpoint. Trained from scratch, the DPT neck and
        # head then shrink the signal layer by layer (output spread 6e-7 at init, measured) and
        # the teacher never leaves a constant map. He initialisation (ReLU networks) keeps it;
        # the last convolution stays small so the output starts with a spread of about 1.
        for part in (model.neck, model.head):
            for module in part.modules():
                if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
                    if module.bias is not None:
                        module.bias.zero_()
        torch.nn.init.normal_(model.head.conv3.weight, std=0.02)
        # The relative head ends in a ReLU: start its input positive, or a random init can
        # give a constant zero map whose gradient is zero (a dead teacher); 3 leaves room
        # below the median for the normalised disparity of far pixels (the sky: about -3).
        model.head.conv3.bias.fill_(3.0)
    return model


def save_image_processor(out_dir, input_size: int) -> None:
    """preprocessor_config.json as Depth Anything V2 ships it, at the teacher's input size."""
    from transformers import DPTImageProcessorPil
    DPTImageProcessorPil(
        do_resize=True, size={'height': input_size, 'width': input_size},
        keep_aspect_ratio=True, ensure_multiple_of=PATCH, resample=3, do_rescale=True,
        do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        do_pad=False).save_pretrained(out_dir)


def normalise_images(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> the teacher's pixel_values (ImageNet mean/std, as pseudolabel)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb_uint8.float() / 255.0 - mean) / std


# --------------------------------------------------------------------------------- data
def teacher_frame(seed: int, input_size: int, render_hw=(192, 256), flip: bool = False,
                  domain: str = 'synthetic'):
    """One frame as the teacher sees it: (uint8 RGB (3, h, w), disparity (h, w), mask (h, w)).
    Rendered at ``render_hw`` and resized exactly as fiffdepth-pseudolabel resizes real images;
    the exact depth is resampled with nearest neighbours (never blends edges). Training only
    asks for the synthetic domain; the real-like one is for measuring the transfer."""
    frame = procedural.render_frame(seed, domain, render_hw[1], render_hw[0])
    h, w = teacher_size(render_hw[0], render_hw[1], input_size)
    rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_CUBIC)
    depth = cv2.resize(frame.depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    with np.errstate(divide='ignore'):
        disparity = np.where(np.isfinite(depth), 1.0 / depth, 0.0).astype(np.float32)
    mask = np.ones((h, w), bool)           # every pixel has an exact disparity (sky: 0)
    if flip:
        rgb, disparity, mask = rgb[:, ::-1], disparity[:, ::-1], mask[:, ::-1]
    return (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1),
            torch.from_numpy(np.ascontiguousarray(disparity)),
            torch.from_numpy(np.ascontiguousarray(mask)))


class SyntheticTeacherFrames(torch.utils.data.Dataset):
    """Index k -> the frame of training seed ``seed_start + k % pool``, mirrored on odd laps.
    Indexed by the global sample counter, so indices past ``len`` wrap around the pool."""

    def __init__(self, seed_start: int, pool: int, input_size: int, render_hw=(192, 256)):
        self.seeds = procedural.training_seeds(seed_start, pool)
        self.input_size, self.render_hw = int(input_size), tuple(render_hw)

    def __len__(self):
        return len(self.seeds)

    def __getitem__(self, k):
        lap, i = divmod(int(k), len(self.seeds))
        return teacher_frame(self.seeds[i], self.input_size, self.render_hw, flip=lap % 2 == 1)


def batch_of(seeds, input_size: int, render_hw=(192, 256)):
    """A fixed batch (uint8 images, disparity, mask) of the given training seeds."""
    seeds = list(seeds)
    for s in seeds:
        procedural.training_seeds(s, 1)                  # training seeds only
    items = [teacher_frame(s, input_size, render_hw) for s in seeds]
    return tuple(torch.stack(x) for x in zip(*items))


# -------------------------------------------------------------------------------- losses
def _normalise(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - median) / mean |x - median| over the mask, per image (Depth Anything / MiDaS)."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        values = x[i][mask[i]]
        if values.numel() == 0:
            continue
        t = values.median()
        s = (values - t).abs().mean().clamp_min(1e-6)
        out[i] = (x[i] - t) / s
    return out


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant MAE between disparity maps (B, H, W) over ``mask``."""
    diff = (_normalise(pred, mask) - _normalise(target, mask)).abs()
    return (diff * mask).sum() / mask.sum().clamp_min(1)


def gradient_matching_loss(pred, target, mask, scales: int = 4) -> torch.Tensor:
    """MiDaS' multi-scale gradient matching on the normalised maps (B, H, W)."""
    residual = (_normalise(pred, mask) - _normalise(target, mask)) * mask
    return _gradient_terms(residual, mask.float(), scales)


def _gradient_terms(residual, mask, scales: int) -> torch.Tensor:
    """Multi-scale mean |horizontal / vertical difference| of the masked residual."""
    total = residual.new_zeros(())
    for k in range(scales):
        step = 2 ** k
        r, m = residual[:, ::step, ::step], mask[:, ::step, ::step]
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]
        gy = (r[:, 1:, :] - r[:, :-1, :]).abs() * m[:, 1:, :] * m[:, :-1, :]
        total = total + (gx.sum() + gy.sum()) / m.sum().clamp_min(1)
    return total / scales


def teacher_loss(pred, target, mask, gm_weight: float = 2.0, scales: int = 4,
                 pin_scale: bool = True):
    """Depth Anything V2's synthetic-data loss, L_ssi + gm_weight * L_gm; with ``pin_scale``
    the prediction is only shifted by its median, not divided by its spread (the target still
    is): the network learns to output the normalised disparity itself.

    Why pin: the fully invariant loss cannot see the prediction's spread, and a network trained
    from scratch drifts to a near-constant output (spread ~1e-4, measured); the loss's gradient
    then grows as 1 / spread, gradient clipping shrinks every step to noise and the teacher
    stops learning. A pretrained Depth Anything never gets there. Pseudo-labels stay
    affine-invariant disparity either way (fiffdepth-pseudolabel normalises them again)."""
    if pin_scale:
        return pinned_loss(pred, target, mask, gm_weight, scales)
    loss = ssi_loss(pred, target, mask)
    if gm_weight:
        loss = loss + gm_weight * gradient_matching_loss(pred, target, mask, scales)
    return loss


def _shifted(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x - median over the mask, per image."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        values = x[i][mask[i]]
        if values.numel():
            out[i] = x[i] - values.median()
    return out


def pinned_loss(pred, target, mask, gm_weight: float = 2.0, scales: int = 4):
    """The MAE and gradient matching of ``teacher_loss`` between the median-shifted prediction
    and the median/MAD-normalised target."""
    residual = (_shifted(pred, mask) - _normalise(target, mask)) * mask
    loss = residual.abs().sum() / mask.sum().clamp_min(1)
    if gm_weight:
        loss = loss + gm_weight * _gradient_terms(residual, mask.float(), scales)
    return loss


def predict_disparity(model, rgb_uint8: torch.Tensor) -> torch.Tensor:
    """The teacher's affine-invariant disparity (B, H, W) at the input's size."""
    pred = model(pixel_values=normalise_images(rgb_uint8)).predicted_depth
    if pred.shape[-2:] != rgb_uint8.shape[-2:]:
        pred = F.interpolate(pred[:, None], size=rgb_uint8.shape[-2:], mode='bilinear',
                             align_corners=False)[:, 0]
    return pred


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model, seeds, input_size: int, render_hw=(192, 256), max_depth: float = 80.0,
             domain: str = 'synthetic'):
    """AbsRel and delta1 of depth from the disparity aligned to the truth by least squares (the
    usual protocol for disparity models), and the SSI loss, on ``seeds`` (held-out ones) of
    ``domain``."""
    model.eval()
    absrel, delta1, losses = [], [], []
    for seed in seeds:
        rgb, disp, mask = teacher_frame(seed, input_size, render_hw, domain=domain)
        pred = predict_disparity(model, rgb[None].to(_device_of(model)))[0].float().cpu()
        losses.append(float(ssi_loss(pred[None], disp[None], mask[None])))
        depth = torch.where(disp > 0, 1.0 / disp.clamp_min(1e-12), torch.inf)
        ok = torch.isfinite(depth) & (depth <= max_depth)
        a = torch.stack([pred[ok], torch.ones_like(pred[ok])], 1).double()
        scale_shift = torch.linalg.lstsq(a, disp[ok].double()[:, None]).solution[:, 0]
        aligned = (pred.double() * scale_shift[0] + scale_shift[1]).clamp_min(1.0 / max_depth)
        est, gt = 1.0 / aligned[ok], depth[ok].double()
        absrel.append(float(((est - gt).abs() / gt).mean()))
        delta1.append(float((torch.maximum(est / gt, gt / est) < 1.25).double().mean()))
    return {'absrel': float(np.mean(absrel)), 'delta1': float(np.mean(delta1)),
            'ssi_loss': float(np.mean(losses)), 'frames': len(list(seeds))}


# ------------------------------------------------------------------------------ training
def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_teacher(out_dir, steps: int = 2000, batch_size: int = 8, input_size: int = 140,
                  seed_start: int = 0, pool: int = 20000, preset: str = 'nano',
                  lr: float = 4e-4, warmup: int = 100, gm_weight: float = 2.0, seed: int = 0,
                  log_every: int = 20, num_workers: int = 0, val_frames: int = 32,
                  render_hw=(192, 256), progress: bool = True, device: str = 'cpu') -> dict:
    """Train the teacher for ``steps`` steps and save it to ``out_dir``; returns provenance
    (including the loss history and the held-out metrics). ``device``: 'cpu', 'cuda', 'cuda:N'
    or 'auto' (CUDA when available)."""
    from ..model.estimator import resolve_device
    dev = resolve_device(device)
    if steps < 1 or batch_size < 1:
        raise ValueError('steps and batch_size must be >= 1')
    procedural.training_seeds(seed_start, pool)          # refuse held-out seeds up front
    model = build_teacher(preset, input_size, seed).to(dev)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    data = SyntheticTeacherFrames(seed_start, pool, input_size, render_hw)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, num_workers=num_workers,
        sampler=torch.utils.data.SequentialSampler(range(steps * batch_size)))
    history = []
    started = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc='teacher', unit='step')
    for step, (rgb, disp, mask) in enumerate(loader):
        for group in optimiser.param_groups:
            group['lr'] = _lr_at(step, steps, lr, warmup)
        rgb, disp, mask = rgb.to(dev), disp.to(dev), mask.to(dev)
        loss = teacher_loss(predict_disparity(model, rgb), disp, mask, gm_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        value = loss.detach().item()
        if step % log_every == 0 or step == steps - 1:
            history.append((step, value))
            log.info('teacher step %d/%d loss %.4f', step + 1, steps, value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{value:.4f}')
    if bar is not None:
        bar.close()
    seconds = time.time() - started
    held_out = procedural.held_out_seeds(val_frames)
    metrics = {domain: evaluate(model, held_out, input_size, render_hw, domain=domain)
               for domain in procedural.DOMAINS} if val_frames else {}
    provenance = {
        'what': 'stand-in for Depth Anything V2: DepthAnythingForDepthEstimation trained on '
                'procedural synthetic frames (exact depth) only',
        'preset': preset, 'input_size': input_size, 'render_hw': list(render_hw),
        'steps': steps, 'batch_size': batch_size, 'lr': lr, 'warmup': warmup,
        'gm_weight': gm_weight, 'loss': 'pinned-scale (teacher_loss)', 'init_seed': seed,
        'train_seeds': [seed_start, seed_start + pool - 1], 'domain': 'synthetic',
        'generator_version': procedural.GENERATOR_VERSION,
        'parameters': sum(p.numel() for p in model.parameters()),
        'train_seconds': round(seconds, 1), 'loss_history': history,
        # Held-out seeds of both domains; the real-like truth is read for scoring only.
        'held_out': {'seeds': [held_out.start, held_out.stop - 1], **metrics}
        if val_frames else None,
        'torch': torch.__version__, 'device': str(dev)}
    save_teacher(model.cpu(), out_dir, input_size, provenance)
    return provenance


def save_teacher(model, out_dir, input_size: int, provenance: dict | None = None) -> Path:
    """The Hugging Face Depth Anything layout: config, safetensors, image processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_image_processor(out_dir, input_size)
    if provenance is not None:
        (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m fiffdepth_ros.training.teacher',
        description='Train the stand-in Depth Anything teacher on procedural synthetic frames.')
    parser.add_argument('--out', required=True, help='output folder (Hugging Face layout)')
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--input-size', type=int, default=140,
                        help='shorter image side the teacher sees (pseudolabel --input-size)')
    parser.add_argument('--seed-start', type=int, default=0, help='first training seed')
    parser.add_argument('--pool', type=int, default=20000, help='distinct training frames')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='nano')
    parser.add_argument('--lr', type=float, default=4e-4)
    parser.add_argument('--gm-weight', type=float, default=2.0)
    parser.add_argument('--seed', type=int, default=0, help='initialisation seed')
    parser.add_argument('--workers', type=int, default=1, help='frame-rendering processes')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--val-frames', type=int, default=32, help='held-out frames to score')
    parser.add_argument('--device', default='cpu',
                        help="'cpu' (default), 'cuda', 'cuda:N' or 'auto' (CUDA when available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = train_teacher(args.out, args.steps, args.batch_size, args.input_size,
                               args.seed_start, args.pool, args.preset, args.lr,
                               gm_weight=args.gm_weight, seed=args.seed,
                               num_workers=args.workers, val_frames=args.val_frames,
                               device=args.device)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps({k: result[k] for k in ('steps', 'train_seconds', 'held_out')}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
