"""The training stages of the FiffDepth recipe, one small strategy each, run by one trainer:

    autoencoder  a (nano) SD-VAE trained from scratch on images -> an SD2-layout checkpoint
    generator    the UNet trained as a v-prediction diffusion model on the frozen VAE's image
                 latents (empty-prompt conditioning): the "pretrained generator"
    fiffdepth    the FiffDepth transformation of a generator into a depth predictor

Each stage writes an SD2-layout checkpoint the next one starts from (``model.init``).
"""
from __future__ import annotations

from ..config import ConfigError
from .autoencoder import AutoencoderStage
from .base import Stage
from .fiffdepth import FiffDepthStage
from .generator import GeneratorStage

STAGES = {'autoencoder': AutoencoderStage, 'generator': GeneratorStage,
          'fiffdepth': FiffDepthStage}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage must be one of {sorted(STAGES)}, got '{name}'")
    return STAGES[name]()


__all__ = ['STAGES', 'Stage', 'get_stage']
