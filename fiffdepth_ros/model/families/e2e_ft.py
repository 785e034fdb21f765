"""E2E-FT (Garcia et al. 2024; VisualComputingInstitute/diffusion-e2e-ft,
Marigold/marigold/marigold_pipeline.py with its inference defaults: 1 DDIM step, trailing
timestep spacing, zero noise, ensemble of 1).

The UNet sees [image latent, zeros] at t = 999 and predicts v; the DDIM step of the
checkpoint's own scheduler configuration turns it into x0 (sqrt(a_t) x_t - sqrt(1 - a_t) v,
x_t = 0, for v-prediction; its clip/threshold settings apply as configured). The decoded depth
is then min-max normalised per prediction, as that pipeline does.
"""
from __future__ import annotations

import torch

from .. import stages
from .base import Family


class E2EFT(Family):
    name = 'e2e_ft'
    unet_in_channels = 8
    needs_scheduler = True
    release = 'VisualComputingInstitute/diffusion-e2e-ft Marigold/marigold/marigold_pipeline.py'

    def prepare(self, engine) -> None:
        from diffusers import DDIMScheduler
        # The release always loads a DDIMScheduler from the checkpoint with trailing spacing.
        self.scheduler = DDIMScheduler.from_config(self.info.scheduler_config,
                                                   timestep_spacing='trailing')
        self.scheduler.set_timesteps(1)
        self._t = int(self.scheduler.timesteps[0])            # 999
        self._timestep = torch.tensor(self._t, dtype=torch.long, device=engine.device)

    def depth_latent(self, engine, image_latent: torch.Tensor) -> torch.Tensor:
        noisy = torch.zeros_like(image_latent)                # noise='zeros'
        unet_input = torch.cat([image_latent, noisy], dim=1)  # image first, as released
        v = stages.unet_pass(engine.unet, unet_input, self._timestep,
                             engine._embedding_for(image_latent.shape[0]))
        return self.scheduler.step(v, self._t, noisy).pred_original_sample

    def normalise(self, depth: torch.Tensor) -> torch.Tensor:
        # Each prediction to [0, 1]; a constant prediction becomes zeros (as released).
        lo = depth.amin(dim=(1, 2, 3), keepdim=True)
        hi = depth.amax(dim=(1, 2, 3), keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (depth - lo) / torch.where(span > 0, span, 1),
                           torch.zeros_like(depth))
