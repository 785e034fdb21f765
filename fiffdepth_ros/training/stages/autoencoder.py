"""stage: autoencoder -- an SD-VAE (AutoencoderKL: the SD2 architecture, any widths) trained
from scratch on images, written out as a whole SD2-layout checkpoint for the generator stage.

Loss: L1 reconstruction of the image from a latent sampled from the posterior, plus
``kl_weight`` x the KL divergence to N(0, I) per latent element. SD's VAE adds an LPIPS
perceptual loss and a patch GAN for sharp textures at 512-768 px; at nano scale (a few channels,
128-256 px, minutes of CPU) neither is used: their networks would cost more than the VAE itself,
and depth only needs the decoder to reproduce smooth maps, which L1 teaches.

Two nano-scale choices (``method.autoencoder``), both measured on the depth round trip (true
depth, quantile-normalised, encoded, decoded, aligned: the ceiling of every depth model on this
VAE): ``depth_maps`` adds each synthetic frame's normalised depth target, as a grey image, to
what the VAE reconstructs. Marigold relies on SD's VAE reproducing depth maps it never saw, a
property of a VAE trained on billions of images; a VAE trained for minutes on a few thousand
procedural frames does not have it (round trip AbsRel 0.33 after 300 steps on images alone,
0.20 with depth maps). ``crop_hw`` trains on one random crop per batch (a convolutional VAE;
2.3x cheaper steps at 64x64 than at 96x128, so more of them in the budget). The KL weight
(1e-6 per element) is about SD's ratio of KL to reconstruction; 1e-4 held the posterior noisy.

Besides vae/ the export holds what the next stages need and nobody trains here: a freshly
initialised UNet of ``model.architecture.unet``, a small random CLIP text encoder and tokenizer
(frozen: only its empty-prompt embedding is ever used, as SD2's OpenCLIP is frozen) and SD2's
DDPM noise schedule (v-prediction). The VAE's ``scaling_factor`` is set as Stable Diffusion's
was: 1 / the standard deviation of the training images' latents, so the generator's diffusion
starts from unit-variance latents.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from ..config import ConfigError
from .base import Stage, images_of, seeds_of, write_sd2_index

log = logging.getLogger(__name__)

# A nano SD2: the same block types as stabilityai/stable-diffusion-2, far fewer channels.
NANO_ARCHITECTURE = {
    'vae': dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=[16, 32, 64, 64], norm_num_groups=8, sample_size=256,
                down_block_types=['DownEncoderBlock2D'] * 4,
                up_block_types=['UpDecoderBlock2D'] * 4),
    'unet': dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=[32, 64, 128], norm_num_groups=8, cross_attention_dim=64,
                 attention_head_dim=[2, 4, 8], use_linear_projection=True,
                 flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                                   'DownBlock2D'],
                 up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']),
    'text_encoder': dict(num_hidden_layers=1, num_attention_heads=4, intermediate_size=128),
}
# Stable Diffusion 2's noise schedule (stabilityai/stable-diffusion-2 scheduler_config.json).
SD2_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule='scaled_linear', prediction_type='v_prediction',
                    clip_sample=False, steps_offset=1,
                    timestep_spacing='leading')
SCALING_IMAGES = 64


def architecture(cfg: dict) -> dict:
    """NANO_ARCHITECTURE with ``model.architecture``'s keys on top, per part."""
    arch = copy.deepcopy(NANO_ARCHITECTURE)
    given = cfg['model'].get('architecture') or {}
    for part, options in given.items():
        if part not in arch:
            raise ConfigError(f"model.architecture.{part}: unknown part (one of {sorted(arch)})")
        arch[part].update(options or {})
    return arch


def kl_per_element(mean, logvar) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) averaged over latent elements (and the batch)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class Reconstruction(torch.nn.Module):
    """The VAE with a forward that returns what the loss needs, (reconstruction from a sampled
    latent, posterior mean, log-variance): one forward through accelerate's (DDP) wrapper."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels):
        posterior = self.vae.encode(pixels).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.mean, posterior.logvar


class AutoencoderStage(Stage):
    name = 'autoencoder'
    trains = 'autoencoder'

    def init_root(self, cfg):
        return None                          # from scratch: model.architecture

    def build(self, trainer):
        from diffusers import AutoencoderKL
        torch.manual_seed(int(trainer.cfg['train']['seed']))
        arch = architecture(trainer.cfg)
        try:
            vae = AutoencoderKL(**arch['vae'], scaling_factor=1.0)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'model.architecture.vae: {exc}') from exc
        trainer.architecture = arch
        trainer.kl_weight = float(trainer.cfg['method']['autoencoder']['kl_weight'])
        vae.train()
        if trainer.cfg['model']['gradient_checkpointing']:
            vae.enable_gradient_checkpointing()
        return Reconstruction(vae)

    def loss(self, trainer, batch):
        pixels = self.pixels_of(trainer, batch)
        with trainer.accelerator.autocast():
            recon, mean, logvar = trainer.autoencoder(pixels)
        l1 = (recon.float() - pixels.float()).abs().mean()
        kl = kl_per_element(mean, logvar)
        return {'loss': l1 + trainer.kl_weight * kl, 'l1': l1, 'kl': kl}

    @staticmethod
    def pixels_of(trainer, batch) -> torch.Tensor:
        """What one micro-batch reconstructs: its images, the synthetic frames' normalised depth
        targets as grey images (``depth_maps``), one random crop of all (``crop_hw``) whose place
        is drawn from the batch's sample seeds (resume and multi-process runs draw the same)."""
        from ..targets import normalized_target
        options = trainer.cfg['method']['autoencoder']
        device = trainer.accelerator.device
        pixels = images_of(batch).to(device)
        if options.get('depth_maps') and 'syn' in batch:
            syn = batch['syn']
            method = trainer.cfg['method']
            depth = normalized_target(syn['depth'].to(device), syn['valid'].to(device),
                                      float(method['depth_quantile']),
                                      method.get('target_space', 'depth'))
            pixels = torch.cat([pixels, depth.expand(-1, 3, -1, -1).to(pixels.dtype)])
        crop = options.get('crop_hw')
        if crop:
            ch, cw = (int(v) for v in crop)
            h, w = pixels.shape[-2:]
            if ch > h or cw > w or ch % 8 or cw % 8:
                raise ConfigError(f'method.autoencoder.crop_hw {list(crop)}: multiples of 8 '
                                  f'no larger than the images ({h}x{w})')
            draw = torch.Generator().manual_seed(int(seeds_of(batch).sum()) % (2 ** 63))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=draw))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=draw))
            pixels = pixels[..., top:top + ch, left:left + cw]
        return pixels

    @torch.no_grad()
    def validate(self, trainer, model):
        """L1 and PSNR of the reconstruction from the posterior's mean on validation images,
        and the depth round trip (the ceiling of any depth model on this VAE): the true depth,
        quantile-normalised, encoded, decoded, least-squares aligned: AbsRel and delta1."""
        from ...evaluation.alignment import align_scale_shift
        from ...evaluation.metrics import compute_metrics, mean_metrics
        from ...model.stages import decode_latent, depth_from_decoded
        from ..targets import encode_depth, normalized_target
        device, vae = trainer.accelerator.device, model.vae
        q = float(trainer.cfg['method']['depth_quantile'])
        space = trainer.cfg['method'].get('target_space', 'depth')
        results = {}
        limit = int(trainer.cfg['validation']['max_images'])
        for name, dataset in trainer.validation_sets:
            l1s, psnrs, depth_metrics = [], [], []
            for index in range(min(limit, len(dataset))):
                sample = dataset.load(index)
                pixels = sample['rgb'][None].to(device)
                recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
                err = recon.float() - pixels
                l1s.append(float(err.abs().mean()))
                mse = float(((err / 2) ** 2).mean())      # on the [0, 1] scale
                psnrs.append(10.0 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item())
                if 'depth' in sample and bool(sample['valid'].any()):
                    depth, valid = sample['depth'][None].to(device), sample['valid'][None].to(device)
                    latent = encode_depth(vae, normalized_target(depth, valid, q, space), 1.0)
                    pred = depth_from_decoded(decode_latent(vae, latent, 1.0))[0, 0]
                    gt, ok = depth[0, 0].cpu().numpy(), valid[0, 0].cpu().numpy()
                    aligned = align_scale_shift(pred.float().cpu().numpy(), gt, ok, space=space,
                                                min_depth=1e-3, max_depth=float(gt[ok].max()))
                    depth_metrics.append(compute_metrics(aligned, gt, ok))
            if l1s:
                results[f'val/{name}/l1'] = sum(l1s) / len(l1s)
                results[f'val/{name}/psnr'] = sum(psnrs) / len(psnrs)
            if depth_metrics:
                m = mean_metrics(depth_metrics)
                results[f'val/{name}/depth_round_trip_abs_rel'] = m['abs_rel']
                results[f'val/{name}/depth_round_trip_delta1'] = m['delta1']
        return results

    @torch.no_grad()
    def latent_std(self, trainer, vae) -> float:
        """Standard deviation of the posterior means of up to SCALING_IMAGES training images."""
        sets = list(trainer.synthetic) + ([trainer.real] if trainer.real else [])
        latents = []
        per_set = max(1, SCALING_IMAGES // max(1, len(sets)))
        for dataset in sets:
            for index in range(min(per_set, len(dataset))):
                pixels = dataset.load(index)['rgb'][None].to(trainer.accelerator.device)
                latents.append(vae.encode(pixels).latent_dist.mean.float().flatten())
        return float(torch.cat(latents).std())

    def export(self, trainer, model, out_dir):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from ...model.tiny import _write_text_parts
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arch, vae = trainer.architecture, model.vae
        std = self.latent_std(trainer, vae)
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        vae.save_pretrained(out / 'vae', safe_serialization=True)
        torch.manual_seed(int(trainer.cfg['train']['seed']) + 1)
        UNet2DConditionModel(**arch['unet']).save_pretrained(out / 'unet',
                                                             safe_serialization=True)
        text = arch['text_encoder']
        _write_text_parts(out, hidden_size=int(arch['unet']['cross_attention_dim']),
                          num_heads=int(text['num_attention_heads']),
                          num_layers=int(text['num_hidden_layers']),
                          intermediate_size=int(text['intermediate_size']))
        DDPMScheduler(**SD2_SCHEDULE).save_pretrained(out / 'scheduler')
        write_sd2_index(out)
        (out / 'autoencoder_stats.json').write_text(json.dumps(
            {'latent_std': std, 'scaling_factor': 1.0 / max(std, 1e-6)}, indent=1))
        log.info('autoencoder: latent std %.4f -> scaling_factor %.4f', std, 1.0 / std)
        return out
