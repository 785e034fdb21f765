"""FiffDepth (yunpeng1998/FiffDepth, fiffdepth/direct_pipeline.py, DirectPipeline.single_infer).

The image latent goes through the UNet once at timestep 0 on the 2-token empty-prompt
embedding; the UNet's output is the depth latent itself.
"""
from __future__ import annotations

import torch

from .. import stages
from .base import Family


class FiffDepth(Family):
    name = 'fiffdepth'
    release = 'yunpeng1998/FiffDepth fiffdepth/direct_pipeline.py'

    def prepare(self, engine) -> None:
        self._timestep = torch.zeros((), dtype=torch.long, device=engine.device)

    def depth_latent(self, engine, image_latent: torch.Tensor) -> torch.Tensor:
        return stages.unet_pass(engine.unet, image_latent, self._timestep,
                                engine._embedding_for(image_latent.shape[0]))
