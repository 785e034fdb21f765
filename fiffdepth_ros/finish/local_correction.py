"""The local correction on a device: the twin of ``scale.local_correction.local_correction``.

The coarse grid comes from the anchors alone (``correction_grid``: thousands of values, numpy on
the host, the same code as the CPU path); what touches every pixel runs here, where the aligned
depth already is: the half-resolution log guide and its extent, the trilinear read of the grid
(OpenCV's ``remap`` reproduced: exact weights in OpenCV 5, 1/32-pixel steps in 4), the bilinear
upsampling (``cv2.resize``'s half-pixel rule, as ``F.interpolate`` with ``align_corners=False``)
and the product with the aligned depth (and the detail level's, upsampled 2x onto the
half-resolution factor); with an image guide, the half-resolution lightness and the
composed guide (the image's half-resolution pixels go to the device, its anchors' lightness is
read on the host). To the host go the aligned depth at the anchors and two
numbers (the guide's extent); to the device the grid and the detail level (tens of kB).

The result equals the numpy path's to float32 rounding (torch's and numpy's log differ in the
last bits; the tests state the tolerance). On a CPU device the tensor's memory is the host's and
the numpy path runs on it as it is (``host_read``): the gathers that reproduce ``remap`` cost
several times OpenCV's own on a CPU, and the result is then the numpy path's exactly.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..scale import local_correction as _host
from ..scale.local_correction import (_LUMA, _SLICE_STEP, LocalCorrectionOptions,
                                      check_guide_image, correction_grid, lightness_at,
                                      local_correction)



@torch.inference_mode()
def local_correction_torch(aligned: torch.Tensor, rows, cols, depth, weight=None,
                           options: LocalCorrectionOptions = LocalCorrectionOptions(),
                           image=None, host_read: bool | None = None):
    """(corrected depth tensor, weights, sigma) as ``local_correction`` gives (depth,
    weights, sigma) for the same arguments; ``aligned`` is an HxW float32 tensor (NaN
    invalid) on any device; rows/cols/depth/weight are host arrays (the anchors); ``image``
    the frame's HxWx3 uint8 RGB host array (its half-resolution pixels go to the device).

    ``host_read`` (None: where ``aligned`` is on the CPU): the tensor's memory is the host's,
    so ``local_correction`` itself runs on it (OpenCV's remap and resize: several times
    cheaper on a CPU than the gathers below, which stand in for them on an accelerator)
    and the result is its, exactly. False forces the torch read (the tests compare it)."""
    aligned = aligned.float()
    if host_read is None:
        host_read = aligned.device.type == 'cpu'
    if host_read:
        host = aligned.detach().cpu().numpy()
        out = local_correction(host, rows, cols, depth, weight, options, image=image)
        return torch.from_numpy(out.depth).to(aligned.device), out.weights, out.sigma
    h, w = aligned.shape
    guide = extent = light = light_at = light_extent = None
    if options.edge_aware:
        guide = torch.log(aligned[::_SLICE_STEP, ::_SLICE_STEP])   # NaN / -inf: invalid
        extent = _extent(guide)
        if image is not None and options.guide != 'depth':
            image = check_guide_image(image, (h, w))
            half = torch.from_numpy(np.ascontiguousarray(image[::_SLICE_STEP, ::_SLICE_STEP]))
            half = half.to(aligned.device).float()
            # The numpy path's order of operations (lightness_guide): the same float32 bits.
            light = half[:, :, 0] * _LUMA[0]
            light += half[:, :, 1] * _LUMA[1]
            light += half[:, :, 2] * _LUMA[2]
            light_extent = _extent(light)
            light_at = (lambda r, c: lightness_at(image, r, c))
    flat = aligned.reshape(-1)

    def sample(r, c):
        index = torch.from_numpy(np.asarray(r, np.int64) * w + np.asarray(c, np.int64))
        return flat[index.to(aligned.device)].cpu().numpy()

    plan = correction_grid((h, w), rows, cols, depth, weight, sample, extent, options,
                           light_at, light_extent)
    if plan.factor is None:
        return aligned.clone(), plan.weights, np.nan
    if light is not None:
        guide = _compose(guide, light, plan.mix)
    factor = torch.from_numpy(plan.factor).to(aligned.device)
    half = _slice_torch(factor, plan.grid, guide)
    if plan.detail is not None:       # the detail level, upsampled 2x (cv2.resize's rule)
        detail = torch.from_numpy(plan.detail).to(aligned.device)
        half = half * F.interpolate(detail[None, None], size=tuple(half.shape),
                                    mode='bilinear', align_corners=False)[0, 0]
    up = F.interpolate(half[None, None], size=(h, w), mode='bilinear', align_corners=False)
    return up[0, 0] * aligned, plan.weights, plan.sigma


def _extent(guide: torch.Tensor):
    """``scale.local_correction.guide_range`` of a half-resolution guide tensor."""
    sub = guide[::2, ::2]
    finite = torch.isfinite(sub)
    inf = torch.tensor(float('inf'), device=sub.device)
    lo, hi = torch.stack([torch.where(finite, sub, inf).amin(),
                          torch.where(finite, sub, -inf).amax()]).cpu().tolist()
    return (lo, hi) if lo <= hi else None


def _compose(log_depth: torch.Tensor, light: torch.Tensor, mix) -> torch.Tensor:
    """``scale.local_correction.compose_guide`` in the same float32 operations."""
    d, c = (np.float32(m) for m in mix)
    if c == 0 and d == 1:
        return log_depth
    out = light * c
    if d == 1:
        out += log_depth
    elif d != 0:
        out += log_depth * d
    return out


def _slice_torch(factor: torch.Tensor, grid, guide: torch.Tensor | None) -> torch.Tensor:
    """``scale.local_correction._slice`` in torch: the grid at every half-resolution pixel."""
    if grid.axis is None:
        return _remap_grid(factor[:, :, 0], grid)
    gh, gw, bins = factor.shape
    gb = (guide - np.float32(grid.axis.g0)) * np.float32(1.0 / grid.axis.width)
    # NaN (invalid aligned depth) -> bin 0, as the numpy path's fmax: a finite factor there.
    gb = torch.fmax(gb, torch.zeros((), device=gb.device)).clamp_(max=float(bins - 1))
    b0 = gb.to(torch.int32).clamp_(0, bins - 2)             # truncation = floor (gb >= 0)
    gb = gb - b0.float()                                     # fraction towards bin b0 + 1
    tiles = factor.permute(0, 2, 1).reshape(gh, bins * gw)   # bin b at x offset b * gw
    # cv2.remap of the tiles at x = b0 * gw + gx (and + gw), y = gy: the bin offset is a whole
    # number of columns, so the taps and weights of (gx, gy) serve every bin (_taps).
    rows0, rows1, col, weights = _taps(grid, factor.device)
    stride = bins * gw + 2
    padded = F.pad(tiles, (1, 2 + gw, 1, 1))                 # the 0 border (and reach)
    # Each entry with its right neighbour, in this bin and the next: one gather per tap row.
    quad = torch.stack([padded[:, :stride], padded[:, 1:stride + 1],
                        padded[:, gw:gw + stride], padded[:, gw + 1:gw + 1 + stride]],
                       -1).reshape(-1, 4)
    base = b0.to(torch.int64) * gw + col
    t0 = quad[base + rows0 * stride]
    t1 = quad[base + rows1 * stride]
    w00, w01, w10, w11 = weights
    lo = t0[:, :, 0] * w00 + t0[:, :, 1] * w01 + t1[:, :, 0] * w10 + t1[:, :, 1] * w11
    hi = t0[:, :, 2] * w00 + t0[:, :, 3] * w01 + t1[:, :, 2] * w10 + t1[:, :, 3] * w11
    return (hi - lo) * gb + lo


_TAPS: dict = {}


def _taps(grid, device):
    """cv2.remap's taps at the half-resolution pixel maps of ``grid`` (``_pixel_maps``), on
    ``device`` (cached per size and device): the padded row of each pixel's upper and lower
    taps (columns), its padded left column (a row) and the four bilinear weights (HxW). The
    rule is the host's (``remap_taps``, which the compiled read uses too): the maps are
    separable, so it runs once per row and column."""
    steps = _host.remap_steps()
    key = (grid.h, grid.w, grid.cell, grid.nh, grid.nw, grid.gh, str(device), steps)
    taps = _TAPS.get(key)
    if taps is None:
        # Copies: the host's taps are cached read only (torch warns on such arrays).
        y0, ay, x0, ax = (torch.tensor(t) for t in _host.remap_taps(grid))
        y0, ay, x0, ax = y0[:, None], ay[:, None], x0[None], ax[None]
        bx, by = 1.0 - ax, 1.0 - ay
        taps = tuple(t.to(device) for t in (
            y0.clamp(-1, grid.gh) + 1, (y0 + 1).clamp(-1, grid.gh) + 1, x0 + 1,
            by * bx, by * ax, ay * bx, ay * ax))
        taps = (*taps[:3], taps[3:])
        if len(_TAPS) > 8:
            _TAPS.clear()
        _TAPS[key] = taps
    return taps


def _remap_grid(src: torch.Tensor, grid) -> torch.Tensor:
    """``cv2.remap(src, *_pixel_maps(grid), INTER_LINEAR)`` with its constant 0 border, as this
    OpenCV computes it (``_taps``): a (gh, gw) plane of ``grid`` at every half-resolution
    pixel."""
    rows0, rows1, col, (w00, w01, w10, w11) = _taps(grid, src.device)
    stride = src.shape[1] + 2
    padded = F.pad(src[None, None], (1, 1, 1, 1))[0, 0].reshape(-1)    # the 0 border
    i0, i1 = rows0 * stride + col, rows1 * stride + col
    return (padded[i0] * w00 + padded[i0 + 1] * w01
            + padded[i1] * w10 + padded[i1 + 1] * w11)
