"""The network stages shared by every single-step diffusion depth family, and by training.

Pure tensor functions with no grad mode of their own: the estimator calls them under
``torch.inference_mode`` and the trainer calls them with gradients, so what is trained is
exactly what is deployed. Signatures are stable (the training code depends on them).
"""
from __future__ import annotations

import torch


def encode_image(vae, pixels: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> latent: encoder + quant_conv, the Gaussian's mean (no
    sampling) x scaling_factor (0.18215 for SD2)."""
    moments = vae.encoder(pixels)
    if vae.quant_conv is not None:        # SD2 has one; use_quant_conv=False VAEs do not
        moments = vae.quant_conv(moments)
    return moments[:, :vae.config.latent_channels] * scaling_factor


def decode_latent(vae, latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Latent -> raw decoded (B, 3, H, W): latent / scaling_factor -> post_quant_conv -> decoder.

    The decoder runs in its own parameters' dtype (the estimator may keep it in fp32 beside a
    half-precision encoder)."""
    z = latent.to(next(vae.decoder.parameters()).dtype) / scaling_factor
    if vae.post_quant_conv is not None:   # absent in use_post_quant_conv=False VAEs
        z = vae.post_quant_conv(z)
    return vae.decoder(z)


def depth_from_decoded(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded (B, 3, H, W) -> (B, 1, H, W) in [0, 1]: mean over channels, clip to [-1, 1],
    (x + 1) / 2."""
    return (decoded.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0


def unet_pass(unet, latent: torch.Tensor, timestep, embedding: torch.Tensor,
              class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """One UNet evaluation.

    timestep: a number or a 0-d / (B,) tensor; any value, -1 included, goes to the timestep
    embedding as it is. embedding: (1 or B, L, D) text embedding, expanded to the batch.
    class_labels: optional (1 or B, ...) class-embedding input (Lotus' task switcher)."""
    batch = latent.shape[0]
    if not torch.is_tensor(timestep):
        dtype = torch.long if isinstance(timestep, int) else torch.float32
        timestep = torch.tensor(timestep, dtype=dtype, device=latent.device)
    if embedding.shape[0] != batch:
        embedding = embedding.expand(batch, -1, -1)
    if class_labels is not None and class_labels.shape[0] != batch:
        class_labels = class_labels.expand(batch, *class_labels.shape[1:])
    return unet(latent, timestep, encoder_hidden_states=embedding,
                class_labels=class_labels).sample


def light_encode(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> scaled latent through a light encoder (model.light):
    the stand-in for ``encode_image``, distilled to reproduce its output."""
    return encoder(pixels.to(next(encoder.parameters()).dtype))


def light_decode(decoder, latent: torch.Tensor) -> torch.Tensor:
    """Depth latent -> a light decoder's raw output: (B, 1, H, W) depth in [0, 1] units,
    unclipped, for a distilled one (``decoder.outputs_depth``); RGB in [-1, 1] for a TAESD one
    (then the family's ``to_depth`` follows, as after ``decode_latent``)."""
    return decoder(latent.to(next(decoder.parameters()).dtype))
