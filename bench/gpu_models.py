"""Engines on random modules built in memory, for the GPU check kit (bench/gpu_check.py) and
bench/overlap.py: no checkpoint folder, no text encoder (a random 2-token embedding stands in
for the cached empty-prompt embedding), so transformers is not needed.

  modules(size, family)           (unet, vae, embedding) fp32 on the CPU: 'tiny'
                                  (model.tiny.TINY_UNET / TINY_VAE) or 'sd2' (the full SD2
                                  architecture, model.tiny.build_sd2_modules)
  make_engine(mods, family, ...)  a DepthEstimator on a copy of them, in any dtype

Precision: fp32, and fp16 on CUDA, go through the engine's own ``precision`` argument (what the
node runs). The engine has no bf16 (nor CPU fp16: it maps that to fp32), so those are built in
fp32 and then cast -- modules, embedding, the family's prepared tensors -- with cast_engine.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.families import make_family
from fiffdepth_ros.model.families.base import CheckpointInfo
from fiffdepth_ros.model.tiny import (SD2_TEXT_DIM, TINY_UNET, TINY_VAE, build_random_modules,
                                      build_sd2_modules, family_layout)

# Families of the single-pass engine and the released layout each one's UNet has.
LAYOUT = {'fiffdepth': 'fiffdepth', 'e2e_ft': 'e2e_ft', 'lotus_d': 'lotus_d',
          'lotus_d_disparity': 'lotus_d', 'marigold': 'marigold'}
# The UNet layout each family's modules have (Marigold's and E2E-FT's UNets are alike).
UNET_LAYOUT = {'fiffdepth': 'fiffdepth', 'e2e_ft': 'e2e_ft', 'lotus_d': 'lotus_d',
               'lotus_d_disparity': 'lotus_d', 'marigold': 'e2e_ft'}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def modules(size: str, family: str = 'fiffdepth', seed: int = 0):
    """(unet, vae, empty_embedding) with random weights, fp32 on the CPU, the UNet laid out for
    ``family``."""
    layout = UNET_LAYOUT[family]
    if size == 'sd2':
        return build_sd2_modules(seed, layout)
    if size != 'tiny':
        raise ValueError(f"size must be 'tiny' or 'sd2', got {size!r}")
    return build_random_modules(TINY_UNET, TINY_VAE, seed, layout)


def strategy(unet, family: str, marigold_steps: int = 1, seed: int = 0):
    """The family object as from_pretrained would make it for this layout."""
    model_index, scheduler = family_layout(LAYOUT[family])
    info = CheckpointInfo(root=Path('.'), name=f'random-{family.replace("_", "-")}',
                          unet_config=dict(unet.config), model_index=model_index,
                          scheduler_config=scheduler)
    return make_family(info, family, denoising_steps=marigold_steps, ensemble_size=1, seed=seed)


def cast_engine(engine: DepthEstimator, dtype: torch.dtype) -> DepthEstimator:
    """An fp32 engine's modules, embedding and family tensors in ``dtype`` (in place)."""
    from diffusers.utils import logging as diffusers_logging
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()   # .to(dtype) warns about a list of no modules
    try:
        for module in (engine.unet, engine.vae):
            module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    engine.dtype = dtype
    engine._embedding = engine._embedding.to(dtype)
    engine._embeddings.clear()
    engine.strategy.prepare(engine)            # Lotus' task embedding, Marigold's pipeline
    return engine


def make_engine(mods, family: str, device: str, precision: str, processing_res: int,
                marigold_steps: int = 1, compile: bool = False) -> tuple[DepthEstimator, str]:
    """(engine on copies of ``mods``, how its precision was set)."""
    unet, vae, embedding = (copy.deepcopy(m) for m in mods)
    native = precision == 'fp32' or (precision == 'fp16' and torch.device(device).type == 'cuda')
    engine = DepthEstimator(unet, vae, embedding, device=device,
                            precision=precision if native else 'fp32',
                            processing_res=processing_res, compile=compile,
                            model_name=f'random {family}',
                            family=strategy(unet, family, marigold_steps))
    if native:
        return engine, f'precision={precision} (the engine\'s own)'
    cast_engine(engine, DTYPES[precision])
    return engine, f'built in fp32, cast to {precision} (the engine has no {precision} on ' \
                   f'{torch.device(device).type})'


def embedding_dim(size: str) -> int:
    return SD2_TEXT_DIM if size == 'sd2' else TINY_UNET['cross_attention_dim']
