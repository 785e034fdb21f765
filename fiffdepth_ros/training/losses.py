"""The FiffDepth losses, pure functions of latent tensors.

Every loss is reduced per image first and then averaged over the images, so a batch split across
processes (each averaging its own images, the gradients averaged by DDP) gives the same value and
gradient as the whole batch in one process.
"""
from __future__ import annotations

import torch


def _per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) values, (B, 1, h, w) bool mask -> (B,) mean over channels and masked cells."""
    weight = mask.to(values.dtype)
    total = (values * weight).flatten(1).sum(1)
    count = weight.flatten(1).sum(1) * values.shape[1]
    return total / count.clamp_min(1.0)


def masked_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on the valid latent cells, per image, then over images."""
    return _per_image_mean((pred - target).abs(), mask).mean()


def gradient_matching(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      scales: int = 4) -> torch.Tensor:
    """MiDaS' gradient-matching loss on the residual R = pred - target.

    At scale k the maps are subsampled by 2^k; |R(x+1) - R(x)| and |R(y+1) - R(y)| count where
    both cells are valid, summed and divided by the number of valid cells (times channels) of
    that scale; the scales are summed (``scales=1``: the single-scale loss)."""
    residual = pred - target
    mask = mask.to(residual.dtype)
    total = residual.new_zeros(residual.shape[0])
    for k in range(int(scales)):
        step = 2 ** k
        r = residual[:, :, ::step, ::step]
        m = mask[:, :, ::step, ::step]
        gx = (r[..., 1:] - r[..., :-1]).abs() * (m[..., 1:] * m[..., :-1])
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * (m[..., 1:, :] * m[..., :-1, :])
        count = m.flatten(1).sum(1) * r.shape[1]
        total = total + (gx.flatten(1).sum(1) + gy.flatten(1).sum(1)) / count.clamp_min(1.0)
    return total.mean()


def trajectory_loss(pred_v: torch.Tensor, target_v: torch.Tensor) -> torch.Tensor:
    """|| v_t - U(b_t, t) ||^2: mean squared error per image, then over images."""
    return (pred_v.float() - target_v.float()).pow(2).flatten(1).mean(1).mean()


def depth_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                gm_scales: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MAE, L_GM) of one prediction, computed in fp32."""
    pred, target = pred.float(), target.float()
    return masked_mae(pred, target, mask), gradient_matching(pred, target, mask, gm_scales)
