"""A colourised view of a depth map for people (RViz, rqt_image_view, the demo's pictures)."""
from __future__ import annotations

import numpy as np

# Perceptually ordered OpenCV colour maps. TURBO (default): near = red (warm), far = blue.
COLORMAPS = ('turbo', 'viridis', 'inferno', 'magma', 'plasma')
# Per-frame range: percentiles of the finite depths, so that a few stray pixels (sky, edges)
# do not wash out the picture. Estimated on at most this many samples.
AUTO_PERCENTILES = (2.0, 98.0)
_AUTO_SAMPLES = 50_000


class ColorizeError(ValueError):
    """Arguments colorize_depth cannot work with; the message says why."""


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """The robust per-frame (near, far) range used when no fixed range is given."""
    finite = depth[np.isfinite(depth)]
    if finite.size == 0:
        return 0.0, 1.0
    sample = finite[::max(1, finite.size // _AUTO_SAMPLES)]
    lo, hi = np.percentile(sample, AUTO_PERCENTILES)
    return float(lo), float(hi)


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                   colormap: str = 'turbo') -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of ``depth``; NaN and infinite pixels black.

    vmin/vmax fix the range (no flicker between frames); either left None is taken from this
    frame (``depth_range``). Depths outside the range get the end colours. The colour index runs
    from far (0) to near (255) so that near is warm with 'turbo' and bright with the others.
    """
    import cv2
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2 or depth.size == 0:
        raise ColorizeError(f'depth must be a non-empty HxW array, got shape {depth.shape}')
    if colormap not in COLORMAPS:
        raise ColorizeError(f"unknown colormap '{colormap}': expected one of "
                            f"{', '.join(COLORMAPS)}")
    fixed_min, fixed_max = vmin is not None, vmax is not None
    if fixed_min and fixed_max and not float(vmin) <= float(vmax):
        raise ColorizeError(f'colour range needs vmin <= vmax, got {vmin}..{vmax}')
    if not (fixed_min and fixed_max):
        lo, hi = depth_range(depth)
        # One end fixed, the other from the frame: never let them cross.
        vmin = float(vmin) if fixed_min else min(lo, float(vmax) if fixed_max else lo)
        vmax = float(vmax) if fixed_max else max(hi, vmin)
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ColorizeError(f'colour range must be finite, got {vmin}..{vmax}')
    index = _colour_index(depth, vmin, vmax)
    rgb = cv2.applyColorMap(index, getattr(cv2, f'COLORMAP_{colormap.upper()}'))
    cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB, dst=rgb)
    rgb[~np.isfinite(depth)] = 0
    return rgb


def _colour_index(depth: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """uint8 (vmax - depth) * 255 / (vmax - vmin), rounded and saturated; NaN -> 0."""
    span = max(vmax - vmin, 1e-6)       # a constant frame: everything at the far colour
    with np.errstate(invalid='ignore', over='ignore'):
        scaled = (np.float32(vmax) - depth) * np.float32(255.0 / span)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    return (scaled + 0.5).astype(np.uint8)
