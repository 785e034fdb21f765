"""Loading shared by the stages that start from an SD2-layout checkpoint."""
from __future__ import annotations

import torch


def load_frozen_parts(trainer, root) -> None:
    """The noise schedule, the cached 2-token empty-prompt embedding and the frozen VAE onto
    ``trainer`` (alphas_cumprod, num_train_timesteps, prediction_type, embedding, vae,
    scaling_factor)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from ...model.checkpoint import resolve_checkpoint
    from ...model.prompt_cache import load_empty_embedding
    device = trainer.accelerator.device
    scheduler = DDPMScheduler.from_pretrained(root / 'scheduler')
    trainer.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    trainer.num_train_timesteps = int(scheduler.config.num_train_timesteps)
    trainer.prediction_type = scheduler.config.prediction_type
    # The text encoder is frozen: the embedding is computed once, never kept in memory.
    embedding, _ = load_empty_embedding(resolve_checkpoint(str(root)))
    trainer.embedding = embedding.to(device)
    trainer.vae = AutoencoderKL.from_pretrained(
        root / 'vae', torch_dtype=trainer.weight_dtype).to(device)
    trainer.vae.eval().requires_grad_(False)
    trainer.scaling_factor = float(trainer.vae.config.scaling_factor or 0.18215)


def load_trainable_unet(trainer, root) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(root / 'unet').float()
    unet.train()
    if trainer.cfg['model']['gradient_checkpointing']:
        unet.enable_gradient_checkpointing()
    return unet
