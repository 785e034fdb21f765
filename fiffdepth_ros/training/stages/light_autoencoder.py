"""stage: light_autoencoder -- a small depth decoder and a small image encoder distilled from a
depth model's own VAE (model.light), on any images, no labels.

The teacher is the model itself, run by the engine (model.estimator.DepthEstimator: its encode,
family UNet step and decode, the same code every tool runs) with its full VAE. Per micro-batch:

    x (images in [-1, 1]) --full encoder--> z_img --UNet step--> z_depth --full decoder--> d
    light decoder:  D(z_depth) ~ d      L1 + ``gradient`` x MiDaS gradient matching (depth units)
    light encoder:  E(x) ~ z_img        ``latent`` x mean squared error on the scaled latent

d is what the engine's decode returns (the family's post-decode steps included: channel mean,
clipping; per-prediction normalisation stays in postprocess), so the light decoder's output
replaces it one for one. Data: ``data.real.images`` (any folder or shards; no pseudo_labels
needed) and/or ``data.synthetic`` sets (their depth is not read). Validation (``validation
.datasets``, RGB-D sets): AbsRel / delta1 of the full and of the light pipelines after the same
least-squares alignment, and the light depth's L1 against the full one.

The export writes ``light_decoder/`` and ``light_encoder/`` (diffusers config + safetensors +
distillation.json: teacher, fingerprint, data, steps, last losses, validation) to
``output_dir/model/`` and, with ``install`` (the default), into the model folder itself, where
``autoencoder: light`` finds them.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from ..config import ConfigError
from .base import Stage, images_of

log = logging.getLogger(__name__)
LATENT_STAT_IMAGES = 16


class LightPair(torch.nn.Module):
    """The trained parts, one forward (accelerate's DDP wrapper needs one): (depth latent,
    images) -> (light depth or None, light latent or None)."""

    def __init__(self, decoder=None, encoder=None):
        super().__init__()
        self.decoder, self.encoder = decoder, encoder

    def forward(self, depth_latent, pixels):
        from ...model.stages import light_decode, light_encode
        depth = light_decode(self.decoder, depth_latent) if self.decoder is not None else None
        latent = light_encode(self.encoder, pixels) if self.encoder is not None else None
        return depth, latent


@torch.no_grad()
def teacher_targets(teacher, pixels: torch.Tensor) -> dict:
    """The full model's image latent, depth latent and decoded depth (B, 1, H, W) of images in
    [-1, 1], through the engine's own stages (normal tensors: usable as loss targets)."""
    x = pixels.to(teacher.device, teacher.dtype).contiguous(memory_format=torch.channels_last)
    image_latent = teacher.encode(x)
    depth_latent = teacher.run_unet(image_latent)
    depth = teacher.decode(depth_latent)
    return {'image_latent': image_latent.float().clone(),
            'depth_latent': depth_latent.float().clone(), 'depth': depth.float().clone()}


def options(cfg: dict) -> dict:
    return cfg['method']['light_autoencoder']


def _resolve_model(cfg: dict):
    from ...model.checkpoint import resolve_checkpoint
    checkpoint = resolve_checkpoint(str(cfg['model']['init']))
    if options(cfg)['install'] and (checkpoint.builtin or checkpoint.hub_id is not None):
        kind = 'a built-in model' if checkpoint.builtin else 'a hub download'
        raise ConfigError(
            f"method.light_autoencoder.install: model.init '{cfg['model']['init']}' is {kind}; "
            'its folder is not yours to write. Set method.light_autoencoder.install=false (the '
            'parts go to output_dir/model/ only; copy them, or point light_path at that '
            'folder) or copy the model to a folder of your own and distil that.')
    return checkpoint


class LightAutoencoderStage(Stage):
    name = 'light_autoencoder'
    trains = 'light'
    needs_depth = False
    needs_labels = False

    def init_root(self, cfg):
        return _resolve_model(cfg).root

    def build(self, trainer):
        from ...model.estimator import DepthEstimator
        from ...model.light import LightDecoder, LightEncoder
        cfg, opts = trainer.cfg, options(trainer.cfg)
        device = trainer.accelerator.device
        trainer.teacher = DepthEstimator.from_pretrained(
            str(cfg['model']['init']), device=str(device), precision=opts['teacher_precision'],
            processing_res=0, model_family=opts['model_family'])
        if trainer.teacher.strategy.own_pipeline:
            raise ConfigError(f'stage light_autoencoder: {trainer.teacher.family} runs its own '
                              'multi-step pipeline; the light autoencoder is for FiffDepth, '
                              'E2E-FT and Lotus-D')
        trainer.teacher_source = trainer.teacher.model_source
        stats = self._latent_stats(trainer)
        torch.manual_seed(int(cfg['train']['seed']))
        latent_channels = int(trainer.teacher.vae.config.latent_channels)
        parts = set(opts['parts'] if isinstance(opts['parts'], list) else [opts['parts']])
        try:
            decoder = LightDecoder(**{'latent_channels': latent_channels,
                                      'latent_scale': 1.0 / max(stats['depth_std'], 1e-6),
                                      **opts['decoder']}) if 'decoder' in parts else None
            encoder = LightEncoder(**{'latent_channels': latent_channels,
                                      'output_scale': stats['image_std'],
                                      **opts['encoder']}) if 'encoder' in parts else None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'method.light_autoencoder.decoder/encoder: {exc}') from exc
        trainer.latent_stats = stats
        trainer.started = time.time()
        weights = opts['weights']
        trainer.light_weights = {k: float(weights.get(k, 0.0))
                                 for k in ('depth', 'gradient', 'latent')}
        return LightPair(decoder, encoder).train()

    @staticmethod
    def _latent_stats(trainer) -> dict:
        """Standard deviations of the teacher's image and depth latents on the first training
        images: the light parts' input / output scales (deterministic: fixed images)."""
        sets = list(trainer.synthetic) + ([trainer.real] if trainer.real else [])
        per_set = max(1, LATENT_STAT_IMAGES // max(1, len(sets)))
        image, depth = [], []
        for dataset in sets:
            for index in range(min(per_set, len(dataset))):
                targets = teacher_targets(trainer.teacher, dataset.load(index)['rgb'][None])
                image.append(targets['image_latent'].flatten())
                depth.append(targets['depth_latent'].flatten())
        return {'image_std': float(torch.cat(image).std()),
                'depth_std': float(torch.cat(depth).std())}

    def loss(self, trainer, batch):
        from ..losses import depth_terms
        device = trainer.accelerator.device
        pixels = images_of(batch).to(device)
        targets = teacher_targets(trainer.teacher, pixels)
        with trainer.accelerator.autocast():
            depth, latent = trainer.light(targets['depth_latent'], pixels)
        w = trainer.light_weights
        terms, total = {}, 0.0
        if depth is not None:
            mask = torch.ones_like(targets['depth'], dtype=torch.bool)
            l1, gm = depth_terms(depth, targets['depth'], mask,
                                 int(options(trainer.cfg)['gm_scales']))
            terms.update(depth_l1=l1, depth_gradient=gm)
            total = total + w['depth'] * l1 + w['gradient'] * gm
        if latent is not None:
            mse = (latent.float() - _crop_like(targets['image_latent'], latent)).pow(2).mean()
            terms['latent_mse'] = mse
            total = total + w['latent'] * mse
        terms['loss'] = total
        return terms

    @torch.no_grad()
    def validate(self, trainer, model):
        """Full vs light on the validation frames: AbsRel / delta1 of each after the same
        least-squares alignment (the evaluation's functions), the light depth's L1 against the
        full depth, the light latent's MSE."""
        from ...evaluation.alignment import align_scale_shift
        from ...evaluation.metrics import compute_metrics, mean_metrics
        teacher = trainer.teacher
        results = {}
        limit = int(trainer.cfg['validation']['max_images'])
        for name, dataset in trainer.validation_sets:
            metrics = {'full': [], 'light': []}
            l1s, mses = [], []
            for index in range(min(limit, len(dataset))):
                sample = dataset.load(index)
                depths = light_and_full_depth(teacher, model, sample['rgb'][None])
                l1s.append(float((depths['light'] - depths['full']).abs().mean()))
                if depths.get('latent_mse') is not None:
                    mses.append(depths['latent_mse'])
                gt, valid = sample['depth'][0].numpy(), sample['valid'][0].numpy()
                if valid.sum() < 2:
                    continue
                for key in metrics:
                    pred = torch.nn.functional.interpolate(
                        depths[key], size=gt.shape, mode='bilinear', align_corners=False,
                        antialias=True)[0, 0].cpu().numpy()
                    aligned = align_scale_shift(pred, gt, valid, space=teacher.output_space,
                                                min_depth=dataset.min_depth,
                                                max_depth=dataset.max_depth)
                    metrics[key].append(compute_metrics(aligned, gt, valid))
            results[f'val/{name}/light_vs_full_l1'] = sum(l1s) / max(1, len(l1s))
            if mses:
                results[f'val/{name}/latent_mse'] = sum(mses) / len(mses)
            for key, per_image in metrics.items():
                means = mean_metrics(per_image)
                for metric in ('abs_rel', 'delta1'):
                    if metric in means:
                        results[f'val/{name}/{metric}_{key}'] = means[metric]
        return results

    def export(self, trainer, model, out_dir):
        from ...model.light import LIGHT_DECODER, LIGHT_ENCODER, model_fingerprint, write_record
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        root = trainer.init_root
        record = {
            'teacher': {'source': str(trainer.cfg['model']['init']),
                        'where': trainer.teacher_source, 'family': trainer.teacher.family,
                        'output_space': trainer.teacher.output_space,
                        'fingerprint': model_fingerprint(root)},
            'data': trainer.cfg['data'],
            'images': {'synthetic': sum(len(d) for d in trainer.synthetic),
                       'real': len(trainer.real) if trainer.real else 0},
            'train': {k: trainer.cfg['train'][k] for k in (
                'max_steps', 'batch_size_synthetic', 'batch_size_real',
                'gradient_accumulation_steps', 'seed', 'optimizer', 'lr_schedule')},
            'method': options(trainer.cfg),
            'latent_stats': trainer.latent_stats,
            'process_seconds': round(time.time() - trainer.started, 1),   # this process's run
            'last_log': next((h for h in reversed(trainer.history) if 'loss/loss' in h), {}),
            'validation': next((h for h in reversed(trainer.history)
                                if any(k.startswith('val/') for k in h)), {}),
        }
        written = []
        for name, part in ((LIGHT_DECODER, model.decoder), (LIGHT_ENCODER, model.encoder)):
            if part is None:
                continue
            part.save_pretrained(out / name, safe_serialization=True)
            write_record(out / name, {'part': name, **record})
            written.append(name)
        if options(trainer.cfg)['install']:
            for name in written:
                target = Path(root) / name
                if target.resolve() != (out / name).resolve():
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(out / name, target)
            log.info('light_autoencoder: %s written into %s', ', '.join(written), root)
        return out


def _crop_like(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return target[..., :like.shape[-2], :like.shape[-1]]


@torch.no_grad()
def light_and_full_depth(teacher, light: LightPair, pixels: torch.Tensor) -> dict:
    """Depth (B, 1, H', W', before postprocess) of the full model and of the model with the
    light parts in ``light`` (each half it has), from images in [-1, 1]."""
    from ...model.stages import light_encode
    full = teacher_targets(teacher, pixels)
    out = {'full': full['depth'], 'latent_mse': None}
    latent = full['image_latent']
    if light.encoder is not None:
        x = pixels.to(teacher.device)
        light_latent = light_encode(light.encoder, x).float()
        out['latent_mse'] = float((light_latent - _crop_like(latent, light_latent)).pow(2).mean())
        latent = light_latent.to(teacher.dtype)
        depth_latent = teacher.run_unet(latent)
    else:
        depth_latent = full['depth_latent'].to(teacher.dtype)
    if light.decoder is not None:
        depth = light.decoder(depth_latent.to(next(light.decoder.parameters()).dtype))
        out['light'] = depth.float().clamp(0.0, 1.0)
    else:
        out['light'] = teacher.decode(depth_latent).float()
    if out['light'].shape != out['full'].shape:       # a light encoder on an odd size
        out['light'] = torch.nn.functional.interpolate(out['light'], size=out['full'].shape[-2:],
                                                       mode='bilinear', align_corners=False)
    out['full'] = teacher.strategy.normalise(out['full'])
    out['light'] = teacher.strategy.normalise(out['light'])
    return out
