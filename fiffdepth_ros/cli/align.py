"""fiffdepth-align: align a saved relative depth map to sparse metric anchors.

    fiffdepth-align RELATIVE.npy ANCHORS OUTPUT.npy [--space depth|inverse] [--no-local]
                    [--max-depth M] [--image RGB] [--local-guide depth|image|both]

RELATIVE.npy: float HxW relative depth (FiffDepth: larger = farther; --space inverse for
disparity-like predictions). ANCHORS: a float .npy in metres or a 16-bit PNG in millimetres, same
size as RELATIVE, 0 or NaN = no anchor. OUTPUT.npy: float32 metric depth in metres, NaN = invalid.
Runs the same scale recovery as the ROS node (robust global fit + local correction) and prints
the fit report. --image: the frame's colour image (8-bit, 3 channels, the same size), which then
guides the local correction with the prediction (``local_guide``; without it the prediction
alone, as before). Exit status: 0 metric output written; 1 no usable fit (the output is the
fixed scale mapping, not metric); 2 bad arguments or input files (an anchor image without a
single valid anchor included).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..scale.anchors import depth_image_anchors
from ..scale.local_correction import GUIDES, GuideImageError
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


def _load_image(path: str) -> np.ndarray:
    """An 8-bit colour image (PNG, JPEG, ...) as HxWx3 RGB."""
    import cv2
    if not os.path.isfile(path):
        raise InputError(f'image file not found: {path}')
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f'cannot decode {path} as an image')
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        raise InputError(f'{path}: a grey image cannot guide the local correction; give the '
                         'colour (8-bit RGB) image')
    if img.dtype != np.uint8:
        raise InputError(f'{path}: the image must be 8-bit colour, got {img.dtype}')
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f'{path}: expected a colour image, got shape {img.shape}')
    code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code)


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
    p.add_argument('--image', metavar='RGB', default=None,
                   help="the frame's colour image (8-bit, same size as RELATIVE): it guides the "
                        'local correction between anchors together with the prediction')
    p.add_argument('--local-guide', choices=GUIDES, default=None,
                   help='what guides the local correction when --image is given (default '
                        f"'{ScaleRecoveryConfig().local_guide}'); without --image the "
                        'prediction alone')
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
        if args.local_guide is not None:
            if args.image is None:
                raise InputError('--local-guide needs --image (without it the prediction '
                                 'alone guides the local correction)')
            kwargs['local_guide'] = args.local_guide
        config = ScaleRecoveryConfig(**kwargs)
        recovery = ScaleRecovery(config)
        image = None
        if args.image is not None:
            image = _load_image(args.image)
            if image.shape[:2] != relative.shape:
                raise InputError(f'image is {image.shape[1]}x{image.shape[0]} but the relative '
                                 f'depth is {relative.shape[1]}x{relative.shape[0]}: they must '
                                 'be the same size (the same camera)')
            recovery.guide_image(image, relative.shape)      # the checks the node makes
        # Keep every valid anchor (grid_step 1): this tool is for evaluating the alignment.
        anchors = depth_image_anchors(depth, grid_step=1, target_shape=relative.shape,
                                      source='anchors')
        if not len(anchors):
            raise InputError(f'{args.anchors}: no valid anchor (every pixel is 0, NaN or '
                             'infinite)')
    except (InputError, GuideImageError, ValueError) as exc:
        print(f'fiffdepth-align: error: {exc}', file=sys.stderr)
        return 2

    metric, report = recovery.process(relative, anchors, 0.0, image)
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
