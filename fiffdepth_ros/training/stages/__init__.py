"""The training stages of the FiffDepth recipe, one small strategy each, run by one trainer:

    autoencoder  a (nano) SD-VAE trained from scratch on images -> an SD2-layout checkpoint
    generator    the UNet trained as a v-prediction diffusion model on the frozen VAE's image
                 latents (empty-prompt conditioning): the "pretrained generator"
    fiffdepth    the FiffDepth transformation of a generator into a depth predictor
    light_autoencoder  a small depth decoder and image encoder distilled from a depth model's
                 own VAE (any family but Marigold), written into its folder (model.light)

Each of the first three writes an SD2-layout checkpoint the next one starts from
(``model.init``).
"""
from __future__ import annotations

from ..config import ConfigError
from .autoencoder import AutoencoderStage
from .base import Stage
from .fiffdepth import FiffDepthStage
from .generator import GeneratorStage
from .light_autoencoder import LightAutoencoderStage

STAGES = {'autoencoder': AutoencoderStage, 'generator': GeneratorStage,
          'fiffdepth': FiffDepthStage, 'light_autoencoder': LightAutoencoderStage}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage must be one of {sorted(STAGES)}, got '{name}'")
    return STAGES[name]()


__all__ = ['STAGES', 'Stage', 'get_stage']
