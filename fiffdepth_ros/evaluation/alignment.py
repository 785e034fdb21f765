"""Per-image scale-and-shift alignment of an affine-invariant prediction to ground truth.

The protocol of the zero-shot benchmarks (Marigold's evaluation): a least-squares scale and shift
on the valid pixels, in depth for depth models or in disparity for disparity models, then a clip
to the dataset's depth range. Pure numpy, so the training validation can call it on any array.
"""
from __future__ import annotations

import numpy as np

# Disparity below this is clipped before inverting, so far pixels do not become infinite depth.
MIN_ALIGNED_DISPARITY = 1e-3
# Depth is kept strictly positive so the log metrics are defined.
MIN_EVAL_DEPTH = 1e-6


def nearest_downsample(array: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """The pixels the reference protocol fits on when ``max_resolution`` is set (ETH3D: 1024).

    ``s = min(max_resolution / (H, W))``; when ``s < 1`` the reference passes the HxW map as a
    1xHxW tensor to ``torch.nn.Upsample(scale_factor=s, mode='nearest')``, which on a 3-D tensor
    resamples only the last axis: all rows are kept and columns ``floor(j / s)`` for
    ``j < floor(W * s)``. That is reproduced here so the published ETH3D numbers are comparable.
    """
    if max_resolution is None:
        return array
    h, w = array.shape[-2:]
    s = float(np.min(max_resolution / np.array([h, w], dtype=np.float64)))
    if s >= 1.0:
        return array
    out_w = int(np.floor(w * s))
    cols = np.minimum(np.floor(np.arange(out_w) / s).astype(np.int64), w - 1)
    return array[..., cols]


def fit_scale_shift(
    pred: np.ndarray, target: np.ndarray, valid: np.ndarray, max_resolution: int | None = None
) -> tuple[float, float]:
    """Least-squares ``(scale, shift)`` minimising ``||scale * pred + shift - target||`` on ``valid``.

    Solved from centred moments in float64 (the same minimiser as ``np.linalg.lstsq`` on the
    ``[pred, 1]`` design, without its SVD of a 20-million-row matrix on ETH3D). A constant
    prediction has no scale: ``(0, mean(target))``, the same aligned map lstsq gives.
    """
    pred, target, valid = np.asarray(pred), np.asarray(target), np.asarray(valid, dtype=bool)
    if not (pred.shape == target.shape == valid.shape):
        raise ValueError(f"shapes differ: pred {pred.shape}, target {target.shape}, valid {valid.shape}")
    keep = nearest_downsample(valid, max_resolution)
    p = nearest_downsample(pred, max_resolution)[keep].astype(np.float64)
    t = nearest_downsample(target, max_resolution)[keep].astype(np.float64)
    if p.size < 2:
        raise ValueError(f"alignment needs at least 2 valid pixels, got {p.size}")
    p_mean, t_mean = p.mean(), t.mean()
    p -= p_mean
    var = float(np.dot(p, p))
    if var == 0.0:
        return 0.0, float(t_mean)
    scale = float(np.dot(p, t - t_mean)) / var
    return scale, float(t_mean - scale * p_mean)


def clip_to_range(depth: np.ndarray, min_depth: float | None, max_depth: float | None) -> np.ndarray:
    """Clip to the dataset's depth range, then to ``>= 1e-6`` so logs stay finite."""
    out = np.clip(depth, min_depth, max_depth) if (min_depth is not None or max_depth is not None) else depth
    return np.clip(out, MIN_EVAL_DEPTH, None).astype(np.float32)


def align_scale_shift(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    space: str = "depth",
    max_resolution: int | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    return_params: bool = False,
):
    """Align ``pred`` (HxW, affine-invariant) to metric ``gt`` on ``valid``; returns aligned depth.

    ``space='depth'``: fit ``gt ~ s * pred + t``. ``space='disparity'``: ``pred`` is a disparity;
    fit ``1/gt ~ s * pred + t`` on pixels where both are positive, clip the aligned disparity to
    ``>= 1e-3`` and invert. ``min_depth``/``max_depth`` (optional) fold :func:`clip_to_range` in;
    without them the output is only made strictly positive. ``max_resolution`` fits on a
    nearest-downsampled copy (the output keeps the full resolution).
    With ``return_params`` returns ``(aligned, scale, shift)``.
    """
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, dtype=bool)
    if space == "depth":
        scale, shift = fit_scale_shift(pred, gt, valid, max_resolution)
        aligned = pred * scale + shift
    elif space == "disparity":
        gt_disp = np.zeros(gt.shape, np.float64)
        positive = gt > 0
        gt_disp[positive] = 1.0 / gt[positive]
        scale, shift = fit_scale_shift(pred, gt_disp, valid & positive & (pred > 0), max_resolution)
        aligned_disp = np.clip(pred * scale + shift, MIN_ALIGNED_DISPARITY, None)
        aligned = 1.0 / aligned_disp
    else:
        raise ValueError(f"space must be 'depth' or 'disparity', got {space!r}")
    aligned = clip_to_range(aligned, min_depth, max_depth)
    return (aligned, scale, shift) if return_params else aligned
