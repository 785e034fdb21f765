"""Per-image depth metrics of the zero-shot benchmarks (pure numpy).

Definitions follow the reference protocol (Marigold's evaluation): with ``d = pred``, ``g = gt``
over the ``n`` valid pixels,
abs_rel = mean(|d-g|/g); sq_rel = mean((d-g)^2/g); rmse = sqrt(mean((d-g)^2));
rmse_log = sqrt(mean((ln d - ln g)^2)); log10 = mean(|log10 d - log10 g|);
delta_k = fraction with max(d/g, g/d) < 1.25^k (strict); i_rmse = sqrt(mean((1/d-1/g)^2));
silog = 100 * sqrt(mean(e^2) - mean(e)^2) with e = ln d - ln g. ``mae`` (metres) is added for
the metric protocol. The runner averages each over images (not over pixels).
"""
from __future__ import annotations

import numpy as np

METRIC_NAMES = (
    "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "i_rmse", "silog",
    "mae",
)
# Larger is better for these; the rest are errors.
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})


def compute_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """All metrics of one image on ``valid`` (pred must be > 0 there: align/clip first)."""
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, dtype=bool)
    if not (pred.shape == gt.shape == valid.shape):
        raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}, valid {valid.shape}")
    d, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    if d.size == 0:
        raise ValueError("no valid pixels to evaluate")
    if np.any(d <= 0) or np.any(g <= 0):
        raise ValueError("prediction and ground truth must be > 0 on valid pixels (clip the prediction)")
    # Each intermediate once: ETH3D has ~20 million valid pixels per image.
    diff = d - g
    abs_diff = np.abs(diff)
    sq_diff = diff * diff
    inv_g = 1.0 / g
    log_diff = np.log(d) - np.log(g)
    sq_log = log_diff * log_diff
    mean_sq_log, mean_log = float(np.mean(sq_log)), float(np.mean(log_diff))
    ratio = np.maximum(d / g, g / d)
    inv_diff = 1.0 / d - inv_g
    return {
        "abs_rel": float(np.dot(abs_diff, inv_g) / d.size),
        "sq_rel": float(np.dot(sq_diff, inv_g) / d.size),
        "rmse": float(np.sqrt(np.mean(sq_diff))),
        "rmse_log": float(np.sqrt(mean_sq_log)),
        # |log10 d - log10 g| = |ln d - ln g| / ln 10
        "log10": float(np.mean(np.abs(log_diff)) / np.log(10.0)),
        "delta1": float(np.count_nonzero(ratio < 1.25) / d.size),
        "delta2": float(np.count_nonzero(ratio < 1.25**2) / d.size),
        "delta3": float(np.count_nonzero(ratio < 1.25**3) / d.size),
        "i_rmse": float(np.sqrt(np.dot(inv_diff, inv_diff) / d.size)),
        # max(0, .) guards the tiny negative that rounding gives for a perfect prediction.
        "silog": float(100.0 * np.sqrt(max(0.0, mean_sq_log - mean_log ** 2))),
        "mae": float(np.mean(abs_diff)),
    }


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over images (the protocol's reduction)."""
    if not per_image:
        return {}
    keys = [k for k in per_image[0] if all(k in m for m in per_image)]
    return {k: float(np.mean([m[k] for m in per_image])) for k in keys}
