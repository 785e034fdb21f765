"""Lotus-D (He et al. 2024; EnVision-Research/Lotus, pipeline.py LotusDPipeline and infer.py).

One UNet pass at t = 999 on the image latent, with the depth task's class embedding
[sin 1, sin 0, cos 1, cos 0]; the output is x0 itself. Differences from FiffDepth, as released:
the image is normalised (x/127.5 - 1) before the float resize; each decoded channel is mapped
to [0, 1] and clipped before the channel mean; the result is resized back with nearest-exact.

One deliberate departure: the release *samples* the VAE latent (latent_dist.sample()); this
engine uses its mean (as FiffDepth and E2E-FT do), so the same image always gives the same
depth.

The v2 disparity checkpoints predict disparity (larger = nearer): kept so, flagged by
``output_space = 'disparity'``; the scale recovery then fits in inverse depth.
"""
from __future__ import annotations

import torch

from .. import stages
from .base import Family

TIMESTEP = 999


def task_embedding() -> torch.Tensor:
    """(1, 4) class label of the depth task (the release's [1, 0] -> [sin, cos])."""
    switch = torch.tensor([[1.0, 0.0]])
    return torch.cat([torch.sin(switch), torch.cos(switch)], dim=-1)


class LotusD(Family):
    name = 'lotus_d'
    class_embedding = True
    input_order = 'normalise_then_resize'
    resize_back = 'nearest-exact'
    release = 'EnVision-Research/Lotus pipeline.py (LotusDPipeline), infer.py'

    def prepare(self, engine) -> None:
        self._timestep = torch.tensor(TIMESTEP, dtype=torch.long, device=engine.device)
        # In the UNet's dtype: its projection class embedding is a Linear layer.
        self._task = task_embedding().to(engine.device, engine.dtype)

    def depth_latent(self, engine, image_latent: torch.Tensor) -> torch.Tensor:
        return stages.unet_pass(engine.unet, image_latent, self._timestep,
                                engine._embedding_for(image_latent.shape[0]),
                                class_labels=self._task)

    def to_depth(self, decoded: torch.Tensor) -> torch.Tensor:
        # diffusers' image postprocess (x/2 + 0.5, clipped per channel), then the channel mean.
        return (decoded.float() * 0.5 + 0.5).clamp(0.0, 1.0).mean(dim=1, keepdim=True)


class LotusDDisparity(LotusD):
    name = 'lotus_d_disparity'
    output_space = 'disparity'
