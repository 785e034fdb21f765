"""stage: generator -- the UNet trained as an ordinary diffusion model on the frozen VAE's image
latents, conditioned on the empty-prompt embedding: the "pretrained generator" FiffDepth starts
from (SD2 at full scale). Noise schedule and prediction type (v-prediction for SD2) come from the
checkpoint's scheduler/; the export is again an SD2-layout checkpoint.
"""
from __future__ import annotations

import torch

from ...model.stages import encode_image, unet_pass
from ..export import export_model
from ..step import schedule_coefficients
from .base import Stage, images_of, seeds_of, write_sd2_index
from .common import load_frozen_parts, load_trainable_unet

VALIDATION_TIMESTEPS = (100, 500, 900)     # fixed, so validation losses compare across steps


def diffusion_target(x0, noise, t, alphas_cumprod, prediction_type: str):
    """(x_t, target) of the forward process x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    sa, sb = schedule_coefficients(alphas_cumprod, t)
    x_t = sa * x0 + sb * noise
    if prediction_type == 'v_prediction':
        return x_t, sa * noise - sb * x0
    if prediction_type == 'epsilon':
        return x_t, noise
    if prediction_type == 'sample':
        return x_t, x0
    raise ValueError(f"unknown prediction_type '{prediction_type}'")


def per_sample_noise(seeds: torch.Tensor, shape, num_train_timesteps: int):
    """Timestep in [1, T - 1] and noise per sample from its own seed (batch-split invariant)."""
    from ..step import per_sample_draws
    return per_sample_draws(seeds, shape, num_train_timesteps, 1)


class GeneratorStage(Stage):
    name = 'generator'
    trains = 'unet'
    needs_depth = False

    def build(self, trainer):
        load_frozen_parts(trainer, trainer.init_root)
        return load_trainable_unet(trainer, trainer.init_root)

    def _loss(self, trainer, unet, pixels, t, noise):
        with torch.no_grad():
            x0 = encode_image(trainer.vae, pixels.to(trainer.weight_dtype),
                              trainer.scaling_factor).float()
        x_t, target = diffusion_target(x0, noise, t, trainer.alphas_cumprod,
                                       trainer.prediction_type)
        dtype = next(unet.parameters()).dtype
        with trainer.accelerator.autocast():
            pred = unet_pass(unet, x_t.to(dtype), t, trainer.embedding)
        return torch.nn.functional.mse_loss(pred.float(), target)

    def loss(self, trainer, batch):
        device = trainer.accelerator.device
        pixels = images_of(batch).to(device)
        with torch.no_grad():
            shape = encode_image(trainer.vae, pixels[:1].to(trainer.weight_dtype),
                                 trainer.scaling_factor).shape[1:]
        t, noise = per_sample_noise(seeds_of(batch), shape, trainer.num_train_timesteps)
        return {'loss': self._loss(trainer, trainer.unet, pixels, t.to(device),
                                   noise.to(device))}

    @torch.no_grad()
    def validate(self, trainer, unet):
        """The diffusion loss at fixed timesteps and fixed noise on the validation images."""
        device = trainer.accelerator.device
        results = {}
        limit = int(trainer.cfg['validation']['max_images'])
        for name, dataset in trainer.validation_sets:
            totals = {t: 0.0 for t in VALIDATION_TIMESTEPS}
            n = min(limit, len(dataset))
            for index in range(n):
                pixels = dataset.load(index)['rgb'][None].to(device)
                shape = encode_image(trainer.vae, pixels.to(trainer.weight_dtype),
                                     trainer.scaling_factor).shape[1:]
                g = torch.Generator().manual_seed(index)
                noise = torch.randn((1,) + tuple(shape), generator=g).to(device)
                for t in VALIDATION_TIMESTEPS:
                    tt = torch.tensor([t], dtype=torch.long, device=device)
                    totals[t] += float(self._loss(trainer, unet, pixels, tt, noise)) / n
            for t, value in totals.items():
                results[f'val/{name}/diffusion_t{t}'] = value
        return results

    def export(self, trainer, unet, out_dir):
        out = export_model(unet, trainer.init_root, out_dir)
        write_sd2_index(out)               # a generator, not yet a depth model
        return out
