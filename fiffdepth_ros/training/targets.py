"""Depth and pseudo-label maps -> the latent targets of the three UNet uses.

Marigold's convention for depth targets: per image, the 2 % and 98 % quantiles of the valid depth
map to -1 and 1, values outside are clipped; the map is stacked to 3 channels and encoded with the
frozen VAE (the Gaussian's mean x scaling factor). The loss masks come from the pixel validity,
max-pooled 8x8 to the latent grid: a latent cell counts when any pixel under it is valid.

``method.target_space: disparity`` (Marigold's and Lotus' ``prediction_type: disparity``): the
map normalised is 1 / depth instead (near = 1, far = -1, holes filled as far), and the teacher's
affine-invariant disparity pseudo-labels are normalised as they are, with no inversion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.stages import encode_image


def quantile_normalize(depth: torch.Tensor, valid: torch.Tensor, quantile: float = 0.02,
                       fill_invalid: float = 1.0) -> torch.Tensor:
    """(B, 1, H, W) depth -> [-1, 1] per image: the ``quantile`` / ``1 - quantile`` values of
    the valid pixels map to -1 / 1, clipped. Invalid pixels get ``fill_invalid`` (the far
    plane: holes are mostly sky and out-of-range surfaces); the losses mask them anyway."""
    b = depth.shape[0]
    flat = depth.reshape(b, -1).float()
    masked = torch.where(valid.reshape(b, -1), flat, torch.full_like(flat, float('nan')))
    q = torch.tensor([quantile, 1.0 - quantile], dtype=flat.dtype, device=flat.device)
    lo, hi = torch.nanquantile(masked, q, dim=1)                     # (B,), (B,)
    if torch.isnan(lo).any():
        raise ValueError('a depth map has no valid pixel; the dataset must filter such frames')
    span = (hi - lo).clamp_min(1e-6).view(b, 1, 1, 1)
    norm = ((depth.float() - lo.view(b, 1, 1, 1)) / span * 2.0 - 1.0).clamp(-1.0, 1.0)
    return torch.where(valid, norm, torch.full_like(norm, fill_invalid))


TARGET_SPACES = ('depth', 'disparity')


def normalized_target(depth: torch.Tensor, valid: torch.Tensor, quantile: float,
                      space: str = 'depth') -> torch.Tensor:
    """(B, 1, H, W) metric or affine depth -> the [-1, 1] target map in ``space``."""
    if space == 'depth':
        return quantile_normalize(depth, valid, quantile)
    if space == 'disparity':
        disparity = torch.where(valid, 1.0 / depth.float().clamp_min(1e-6),
                                torch.zeros_like(depth, dtype=torch.float32))
        return quantile_normalize(disparity, valid, quantile, fill_invalid=-1.0)
    raise ValueError(f"target space must be one of {TARGET_SPACES}, got '{space}'")


def disparity_to_depth_inverse(disparity: torch.Tensor, quantile: float = 0.02,
                               max_depth_ratio: float = 20.0) -> torch.Tensor:
    """Affine-invariant disparity -> a depth-like map by inversion, per image.

    Disparity is robustly normalised (its quantiles to 0 and 1, clipped), moved to
    [1 / max_depth_ratio, 1] (the clamp: the unknown shift would otherwise put the farthest
    pixels at infinite depth) and inverted: depth in [1, max_depth_ratio]. Affine-invariant
    disparity has no true zero, so ``max_depth_ratio`` (the far/near ratio assumed) is a choice."""
    valid = torch.ones_like(disparity, dtype=torch.bool)
    unit = (quantile_normalize(disparity, valid, quantile) + 1.0) / 2.0       # [0, 1]
    floor = 1.0 / float(max_depth_ratio)
    return 1.0 / (unit * (1.0 - floor) + floor)


def disparity_to_depth_reciprocal(disparity: torch.Tensor, max_depth_ratio: float = 20.0,
                                  **_) -> torch.Tensor:
    """Affine-invariant disparity -> ``1 / disparity``, taking the teacher's shift as zero;
    disparity is clamped at ``peak / max_depth_ratio`` (at most that far/near ratio). Exact
    when the shift is zero, biased when it is not."""
    peak = disparity.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return 1.0 / torch.maximum(disparity, peak / float(max_depth_ratio))


def disparity_to_depth_negate(disparity: torch.Tensor, **_) -> torch.Tensor:
    """Affine-invariant disparity -> ``-disparity``: ordered like depth, no inversion (the
    target is then linear in disparity: near structure is stretched, far compressed)."""
    return -disparity


PSEUDO_LABEL_CONVERSIONS = {
    'inverse': disparity_to_depth_inverse,
    'reciprocal': disparity_to_depth_reciprocal,
    'negate': disparity_to_depth_negate,
}


def pseudo_label_to_normalized(disparity: torch.Tensor, conversion: str = 'inverse',
                               quantile: float = 0.02, max_depth_ratio: float = 20.0,
                               space: str = 'depth') -> torch.Tensor:
    """(B, 1, H, W) teacher disparity -> [-1, 1] target in ``space``, the same quantile
    normalisation as the synthetic targets (every pixel valid). In disparity space the label is
    normalised as it is (``conversion`` and ``max_depth_ratio`` only serve depth targets)."""
    if space == 'disparity':
        label = disparity.float()
        return quantile_normalize(label, torch.ones_like(label, dtype=torch.bool), quantile)
    if space != 'depth':
        raise ValueError(f"target space must be one of {TARGET_SPACES}, got '{space}'")
    try:
        convert = PSEUDO_LABEL_CONVERSIONS[conversion]
    except KeyError:
        raise ValueError(f"unknown pseudo-label conversion '{conversion}' "
                         f'(one of {sorted(PSEUDO_LABEL_CONVERSIONS)})') from None
    depth = convert(disparity.float(), quantile=quantile, max_depth_ratio=max_depth_ratio)
    return quantile_normalize(depth, torch.ones_like(depth, dtype=torch.bool), quantile)


def latent_mask(valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """(B, 1, H, W) pixel validity -> (B, 1, H/f, W/f) latent validity (f x f max-pool)."""
    return F.max_pool2d(valid.float(), kernel_size=factor, stride=factor) > 0


def encode_depth(vae, normalized: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """[-1, 1] (B, 1, H, W) -> depth latent: stacked to 3 channels, VAE mean x scaling."""
    dtype = next(vae.encoder.parameters()).dtype
    return encode_image(vae, normalized.to(dtype).expand(-1, 3, -1, -1), scaling_factor)


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)
