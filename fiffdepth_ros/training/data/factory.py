"""Datasets from the configuration's specs.

    data:
      root: /data                       # dataset dirs are relative to this
      split_root: /src/Marigold         # split files are relative to this (Marigold's data_split/)
      synthetic:
        - {kind: hypersim, dir: hypersim/hypersim_processed_train.tar,
           filenames: data_split/hypersim_depth/filename_list_train_filtered.txt,
           resize_to_hw: [480, 640], prob: 0.9}
        - {kind: vkitti, dir: vkitti/vkitti.tar,
           filenames: data_split/vkitti_depth/vkitti_train.txt, kitti_bm_crop: true, prob: 0.1}
        - {kind: rgbd_folder, dir: robot/, filenames: robot/list.txt, depth_scale: 0.001}
      real: {images: laion_art/, pseudo_labels: laion_art_labels/, resize_to_hw: [480, 640]}
"""
from __future__ import annotations

from pathlib import Path

from .common import DataError, FileSource, read_split
from .hypersim import HypersimDepth
from .real_images import PseudoLabelCache, RealImages, RealImagesOnly, RealWithLabels
from .rgbd_folder import RGBDFolder
from .vkitti import VirtualKitti2Depth

KINDS = {'hypersim': HypersimDepth, 'vkitti': VirtualKitti2Depth, 'rgbd_folder': RGBDFolder}
_COMMON = {'kind', 'dir', 'filenames', 'resize_to_hw', 'prob', 'name'}
_EXTRA = {'hypersim': set(), 'vkitti': {'kitti_bm_crop'},
          'rgbd_folder': {'depth_scale', 'min_depth', 'max_depth'}}


def _resolve(base, path) -> Path:
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() else Path(base) / path


def build_synthetic(spec: dict, root='.', split_root='.'):
    kind = spec.get('kind')
    if kind not in KINDS:
        raise DataError(f"synthetic dataset kind must be one of {sorted(KINDS)}, got {kind!r}")
    unknown = set(spec) - _COMMON - _EXTRA[kind]
    if unknown:
        raise DataError(f'{kind} dataset: unknown option(s) {sorted(unknown)}')
    for key in ('dir', 'filenames'):
        if not spec.get(key):
            raise DataError(f'{kind} dataset: {key} is required')
    split = _resolve(split_root, spec['filenames'])
    rows = read_split(split)
    extra = {k: spec[k] for k in _EXTRA[kind] if k in spec}
    dataset = KINDS[kind](FileSource(_resolve(root, spec['dir'])), rows, split,
                          resize_to_hw=spec.get('resize_to_hw'), **extra)
    if len(dataset) == 0:
        raise DataError(f'{kind} dataset: split file {split} lists no usable sample')
    return dataset


def build_real(spec: dict, root='.', need_labels: bool = True):
    """The real images with their pseudo-labels, or (``need_labels`` False: a stage that reads
    images only) the images alone, pseudo_labels optional and unread."""
    unknown = set(spec) - {'images', 'pseudo_labels', 'resize_to_hw'}
    if unknown:
        raise DataError(f'data.real: unknown option(s) {sorted(unknown)}')
    if not spec.get('images') or (need_labels and not spec.get('pseudo_labels')):
        raise DataError('data.real needs images (a folder or shards) and pseudo_labels '
                        '(the fiffdepth-pseudolabel output folder)')
    images = spec['images']
    images = [str(_resolve(root, p)) for p in images] if isinstance(images, list) \
        else str(_resolve(root, images))
    if not need_labels:
        return RealImagesOnly(RealImages(images), resize_to_hw=spec.get('resize_to_hw')
                              or (480, 640))
    return RealWithLabels(RealImages(images),
                          PseudoLabelCache(_resolve(root, spec['pseudo_labels'])),
                          resize_to_hw=spec.get('resize_to_hw') or (480, 640))


def build_training_data(data_cfg: dict, need_synthetic: bool = True, need_real: bool = True,
                        need_labels: bool = True):
    """(synthetic datasets, their sampling probabilities, real set or None), every file the
    configuration names checked to exist before anything is loaded onto a GPU (``need_labels``
    False: real images without pseudo-labels)."""
    synthetic = [build_synthetic(s, data_cfg['root'], data_cfg['split_root'])
                 for s in data_cfg['synthetic']] if need_synthetic else []
    for dataset in synthetic:
        dataset.check_files()
    probs = [float(s.get('prob', 1.0)) for s in data_cfg['synthetic']] if need_synthetic else []
    if synthetic and (min(probs) < 0 or sum(probs) <= 0):
        raise DataError('synthetic dataset probabilities must be >= 0 with a positive sum')
    real = build_real(data_cfg['real'], data_cfg['root'], need_labels) if need_real else None
    if real is not None:
        real.check_files()
    return synthetic, [p / sum(probs) for p in probs], real
