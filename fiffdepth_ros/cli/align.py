"""fiffdepth-align: align a saved relative depth map to sparse metric anchors.

    fiffdepth-align RELATIVE.npy ANCHORS OUTPUT.npy [--space depth|inverse] [--no-local]
                    [--max-depth M]

RELATIVE.npy: float HxW relative depth (FiffDepth: larger = farther; --space inverse for
disparity-like predictions). ANCHORS: a float .npy in metres or a 16-bit PNG in millimetres, same
size as RELATIVE, 0 or NaN = no anchor. OUTPUT.npy: float32 metric depth in metres, NaN = invalid.
Runs the same scale recovery as the ROS node (robust global fit + local correction) and prints
the fit report. Exit status: 0 metric output written; 1 no usable fit (the output is the fixed
scale mapping, not metric); 2 bad arguments or input files.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..scale.anchors import depth_image_anchors
from ..scale.recovery import ScaleRecovery, ScaleRecoveryConfig


class InputError(ValueError):
    """An input file that cannot be used; the message says why."""


def _load_relative(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(f'relative depth file not found: {path}')
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f'cannot read {path} as a .npy array: {exc}') from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f'{path} holds several arrays; expected one HxW array')
    arr = np.squeeze(arr) if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[2]) else arr
    if arr.ndim != 2:
        raise InputError(f'{path}: expected an HxW relative depth map, got shape {arr.shape}')
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f'{path}: expected numbers, got dtype {arr.dtype}')
    if not np.isfinite(arr).any():
        raise InputError(f'{path}: no finite relative depth values')
    return arr.astype(np.float32)


def _load_anchors(path: str) -> np.ndarray:
    """Metric depth image in metres (0/NaN = none) from .npy (m) or 16-bit PNG (mm)."""
    if not os.path.isfile(path):
        raise InputError(f'anchor file not found: {path}')
    ext = os.path.splitext(path)[1].lower()
    if ext == '.npy':
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f'cannot read {path} as a .npy array: {exc}') from None
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f'{path}: .npy anchors must be float metres, got dtype {arr.dtype} '
                             '(millimetre images: save as 16-bit PNG)')
        depth = arr.astype(np.float32)
    elif ext == '.png':
        import cv2
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f'cannot decode {path} as PNG')
        if img.dtype != np.uint16 or img.ndim != 2:
            raise InputError(f'{path}: PNG anchors must be single-channel 16-bit millimetres, '
                             f'got {img.dtype} with shape {img.shape}')
        depth = img.astype(np.float32) / 1000.0
    else:
        raise InputError(f'{path}: anchors must be a .npy (float metres) or a 16-bit .png '
                         '(millimetres)')
    depth = np.squeeze(depth) if depth.ndim == 3 else depth
    if depth.ndim != 2:
        raise InputError(f'{path}: expected an HxW anchor image, got shape {depth.shape}')
    if np.any(depth < 0):
        raise InputError(f'{path}: negative depths; 0 or NaN marks "no anchor"')
    return depth


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='fiffdepth-align',
        description='Align a relative depth map (.npy) to sparse metric anchors and write metric '
                    'depth (float32 .npy, metres, NaN = invalid).')
    p.add_argument('relative', metavar='RELATIVE.npy', help='float HxW relative depth map')
    p.add_argument('anchors', metavar='ANCHORS',
                   help='metric anchors: float .npy in metres or 16-bit PNG in millimetres, '
                        '0 or NaN = no anchor')
    p.add_argument('output', metavar='OUTPUT.npy', help='where to write the metric depth')
    p.add_argument('--space', choices=('depth', 'inverse'), default='depth',
                   help="fit scale and shift in depth (FiffDepth, default) or inverse depth "
                        "(disparity-like predictions)")
    p.add_argument('--no-local', action='store_true',
                   help='global scale and shift only, no local correction between anchors')
    p.add_argument('--max-depth', type=float, default=None, metavar='M',
                   help='metres: anchors and output beyond this are ignored / NaN '
                        f'(default {ScaleRecoveryConfig().max_depth:g})')
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        relative = _load_relative(args.relative)
        depth = _load_anchors(args.anchors)
        if depth.shape != relative.shape:
            raise InputError(f'anchor image is {depth.shape[1]}x{depth.shape[0]} but the '
                             f'relative depth is {relative.shape[1]}x{relative.shape[0]}: they '
                             'must be the same size (registered to the same camera)')
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise InputError(f'output directory does not exist: {out_dir}')
        kwargs = dict(fit_space=args.space, local_correction=not args.no_local)
        if args.max_depth is not None:
            kwargs['max_depth'] = args.max_depth
        config = ScaleRecoveryConfig(**kwargs)
    except (InputError, ValueError) as exc:
        print(f'fiffdepth-align: error: {exc}', file=sys.stderr)
        return 2

    # Keep every valid anchor (grid_step 1): this tool is for evaluating the alignment.
    anchors = depth_image_anchors(depth, grid_step=1, target_shape=relative.shape,
                                  source='anchors')
    metric, report = ScaleRecovery(config).process(relative, anchors, 0.0)
    np.save(args.output, metric.astype(np.float32))

    print(f'fit report ({args.relative} -> {args.output})')
    for key, value in report.as_dict().items():
        if isinstance(value, float):
            value = f'{value:.6g}'
        print(f'  {key}: {value}')
    valid = int(np.count_nonzero(np.isfinite(metric)))
    print(f'  valid output pixels: {valid} of {metric.size}')
    if not report.metric:
        print('fiffdepth-align: no usable fit: the output is the fixed scale/shift mapping, '
              'not metric', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
