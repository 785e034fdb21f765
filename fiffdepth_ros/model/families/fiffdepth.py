"""FiffDepth (yunpeng1998/FiffDepth, fiffdepth/direct_pipeline.py, DirectPipeline.single_infer).

The image latent goes through the UNet once at timestep 0 on the 2-token empty-prompt
embedding; the UNet's output is the depth latent itself.

A model trained with ``method.target_space: disparity`` says so in its model_index.json
(``prediction_type: disparity``, Marigold's key): its decoded map is affine-invariant
disparity, and ``output_space`` tells the scale recovery, the evaluation and the pictures.
"""
from __future__ import annotations

import torch

from .. import stages
from .base import Family


class FiffDepth(Family):
    name = 'fiffdepth'
    release = 'yunpeng1998/FiffDepth fiffdepth/direct_pipeline.py'

    def __init__(self, info=None, **options):
        super().__init__(info, **options)
        prediction = info.prediction_type if info else 'depth'
        if prediction not in ('depth', 'disparity'):
            from ..checkpoint import ModelLoadError
            raise ModelLoadError(f"model_index.json prediction_type {prediction!r}: a FiffDepth "
                                 f"model predicts 'depth' or 'disparity'")
        self.output_space = prediction

    def prepare(self, engine) -> None:
        self._timestep = torch.zeros((), dtype=torch.long, device=engine.device)

    def depth_latent(self, engine, image_latent: torch.Tensor) -> torch.Tensor:
        return stages.unet_pass(engine.unet, image_latent, self._timestep,
                                engine._embedding_for(image_latent.shape[0]))
