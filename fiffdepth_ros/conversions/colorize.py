"""A colourised view of a depth map for people (RViz, rqt_image_view, the demo's PNGs)."""
from __future__ import annotations

import numpy as np

# Perceptually ordered OpenCV colour maps; TURBO: near = red, far = blue.
COLORMAPS = ('turbo', 'viridis', 'inferno', 'magma', 'plasma')


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                   colormap: str = 'turbo') -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``depth``; NaN/inf pixels black.

    With vmin/vmax None the range is the 2nd-98th percentile of the finite values of this frame,
    so a few stray pixels do not wash out the picture; give both for a fixed range (no flicker).
    Near is warm (red) and far is cool (blue) with 'turbo'.
    """
    import cv2
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f'depth must be HxW, got shape {depth.shape}')
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap '{colormap}': expected one of {', '.join(COLORMAPS)}")
    finite = np.isfinite(depth)
    if vmin is None or vmax is None:
        values = depth[finite]
        if values.size:
            lo, hi = np.percentile(values[::max(1, values.size // 50000)], (2, 98))
        else:
            lo, hi = 0.0, 1.0
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = max(float(vmax) - float(vmin), 1e-6)
    # Index 255 = near (warm end of TURBO), 0 = far.
    scaled = (float(vmax) - np.where(finite, depth, vmax)) * (255.0 / span)
    index = np.clip(scaled, 0, 255).astype(np.uint8)
    code = getattr(cv2, f'COLORMAP_{colormap.upper()}')
    rgb = cv2.cvtColor(cv2.applyColorMap(index, code), cv2.COLOR_BGR2RGB)
    rgb[~finite] = 0
    return rgb
