"""Dense depth on a device: the scale recovery plan applied where the relative depth is.

Twins of ``scale.fit.apply_fit``, ``ScaleRecovery.apply`` (range clip; the local correction is
``finish.local_correction``) and ``conversions.depth_image.depth_to_16uc1``, in the same
float32 arithmetic.
"""
from __future__ import annotations

import numpy as np
import torch

from ..scale.recovery import Plan, ScaleRecovery
from .local_correction import local_correction_torch


@torch.inference_mode()
def apply_fit_torch(relative: torch.Tensor, scale: float, shift: float, space: str
                    ) -> torch.Tensor:
    """Metric depth (float32, a new tensor); not a positive finite depth -> NaN."""
    out = relative.float() * np.float32(scale)
    out += np.float32(shift)
    if space == 'inverse':
        out = torch.reciprocal(out)
    bad = ~(out > 0) | (out == float('inf'))
    return out.masked_fill_(bad, float('nan'))


@torch.inference_mode()
def clip_range_torch(depth: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """NaN outside [lo, hi], in place (the thresholds in float32, as numpy compares)."""
    lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    return depth.masked_fill_((depth > hi32) | (depth < lo32), float('nan'))


@torch.inference_mode()
def apply_plan_torch(recovery: ScaleRecovery, relative: torch.Tensor, plan: Plan
                     ) -> torch.Tensor:
    """``recovery.apply(relative, plan)`` on the relative depth's device.

    The local correction's coarse grid is built on the host from the anchors; its dense read
    runs on the device (``finish.local_correction``): no HxW image crosses for it.
    """
    depth = apply_fit_torch(relative, plan.scale, plan.shift, plan.space)
    if plan.local is not None:
        depth, weights, _ = local_correction_torch(depth, *plan.local, recovery.guided_options,
                                                   image=plan.image)
        plan.report.local_inliers = int(np.count_nonzero(weights))
    return clip_range_torch(depth, plan.min_depth, plan.max_depth)


@torch.inference_mode()
def depth_to_16uc1_torch(depth_m: torch.Tensor) -> torch.Tensor:
    """Millimetres, rounded half to even, saturated at 65535, 0 = invalid: (H, W, 2) uint8
    little-endian bytes (torch has no full uint16 arithmetic on every device)."""
    d = depth_m.float()
    invalid = ~(d > 0) | torch.isinf(d)
    mm = (d * np.float32(1000.0)).masked_fill_(invalid, 0.0).clamp_(0.0, 65535.0)
    mm = torch.round(mm).to(torch.int32)
    return mm.unsqueeze(-1).view(torch.uint8)[..., :2].contiguous()
