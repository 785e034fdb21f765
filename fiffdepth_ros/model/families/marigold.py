"""Marigold (v1.0, v1.1, LCM; prs-eth/Marigold), run through diffusers' own
MarigoldDepthPipeline -- not re-implemented: it is the reference the single-step families are
compared with. Denoising steps, ensemble size and seed are options; each frame starts from the
same seed, so a frame's depth does not depend on what ran before.

The pipeline gets the engine's prepared UNet and VAE (channels_last, SDPA) and the cached
2-token empty-prompt embedding (the same tokenisation as the pipeline's own), so the text
encoder is never kept in memory.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Family

# model_index.json config keys that MarigoldDepthPipeline takes as constructor arguments.
_PIPELINE_CONFIG = ('prediction_type', 'scale_invariant', 'shift_invariant',
                    'default_denoising_steps', 'default_processing_resolution')


class Marigold(Family):
    name = 'marigold'
    unet_in_channels = 8
    needs_scheduler = True
    own_pipeline = True
    release = "diffusers MarigoldDepthPipeline (prs-eth/Marigold)"

    def __init__(self, info=None, denoising_steps: int = 0, ensemble_size: int = 1,
                 seed: int = 0, **options):
        super().__init__(info, **options)
        self.denoising_steps = int(denoising_steps) or None   # None: the checkpoint's default
        self.ensemble_size = int(ensemble_size)
        self.seed = int(seed)
        if self.ensemble_size < 1:
            raise ValueError(f'ensemble_size must be at least 1, got {ensemble_size}')
        prediction = info.prediction_type if info else 'depth'
        self.output_space = 'disparity' if prediction == 'disparity' else 'depth'

    def prepare(self, engine) -> None:
        from diffusers import MarigoldDepthPipeline
        config = {k: self.info.model_index[k] for k in _PIPELINE_CONFIG
                  if k in self.info.model_index}
        self.pipeline = MarigoldDepthPipeline(
            unet=engine.unet, vae=engine.vae, scheduler=self._scheduler(), text_encoder=None,
            tokenizer=None, **config)
        self.pipeline.empty_text_embedding = engine._embedding
        self.pipeline.set_progress_bar_config(disable=True)

    def _scheduler(self):
        from diffusers import DDIMScheduler, LCMScheduler
        cls = LCMScheduler if self.info.scheduler_class == 'LCMScheduler' else DDIMScheduler
        return cls.from_config(self.info.scheduler_config)

    def check_processing_res(self, processing_res: int) -> None:
        factor = self.pipeline.vae_scale_factor
        if processing_res % factor:
            raise ValueError(f'Marigold needs processing_res to be a multiple of {factor} '
                             f'(or 0 = native), got {processing_res}')

    def predict(self, engine, images: list[np.ndarray]) -> list[np.ndarray]:
        self.check_processing_res(engine.processing_res)
        generator = torch.Generator(device=engine.device).manual_seed(self.seed)
        out = self.pipeline(
            images, num_inference_steps=self.denoising_steps, ensemble_size=self.ensemble_size,
            processing_resolution=engine.processing_res, match_input_resolution=True,
            batch_size=len(images), generator=generator, output_type='pt')
        depth = out.prediction.float().clamp_(0.0, 1.0)[:, 0].cpu().numpy()
        return [np.ascontiguousarray(d) for d in depth]

    def describe(self) -> dict:
        steps = self.denoising_steps or self.info.model_index.get('default_denoising_steps')
        return {**super().describe(), 'denoising_steps': steps,
                'ensemble_size': self.ensemble_size, 'seed': self.seed}
