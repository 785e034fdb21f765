"""Teacher predictions for the real images, computed once (``fiffdepth-pseudolabel``).

The teacher is a transformers ``DepthAnythingForDepthEstimation`` (Depth Anything V2 Large in the
paper). Images are resized as its image processor does for images larger than the input (aspect
kept, the shorter side to ``input_size``, both sides multiples of 14; bicubic), normalised with
the processor's mean/std, batched by size; the affine-invariant disparity is stored as fp16 at the teacher's resolution, scaled to a
peak of 1 (see to_stored), one file per image id (see data/real_images.py). Existing files
are skipped, so an interrupted run resumes.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from .data.common import DataError
from .data.real_images import CACHE_FORMAT, PseudoLabelCache, RealImages

DEFAULT_TEACHER = 'depth-anything/Depth-Anything-V2-Large-hf'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherError(RuntimeError):
    """The teacher cannot be loaded."""


def teacher_size(height: int, width: int, input_size: int = 518, multiple: int = 14):
    """(h, w) for the teacher: the shorter side scaled to ``input_size`` (aspect kept), each side
    rounded to the nearest multiple of 14 and at least ``input_size`` on the shorter one."""
    scale = input_size / min(height, width)

    def fit(side):
        value = int(round(side * scale / multiple)) * multiple
        return max(value, int(np.ceil(input_size / multiple)) * multiple
                   if side == min(height, width) else multiple)
    return fit(height), fit(width)


def to_stored(disparity: np.ndarray) -> np.ndarray:
    """fp16, divided by its largest magnitude: the prediction is affine-invariant (training
    normalises it per image anyway), and fp16 would flush a teacher's very small outputs to 0
    or overflow very large ones. A prediction whose variation is small beside its offset (fp16's
    step near 1 is 4.9e-4) would be rounded to a constant: that one is kept in float32 (the
    offset itself is kept: the 'reciprocal' conversion depends on it)."""
    peak = float(np.abs(disparity).max())
    scaled = disparity / peak if peak > 0 else disparity.astype(np.float32)
    half = scaled.astype(np.float16)
    spread = float(scaled.max() - scaled.min())
    if spread > 0 and float(np.abs(half - scaled).max()) > 1e-3 * spread:
        return scaled.astype(np.float32)
    return half


def load_teacher(source: str, device, dtype):
    from transformers import DepthAnythingForDepthEstimation
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(source)
    except Exception as exc:
        raise TeacherError(f"cannot load the teacher '{source}' as a Depth Anything model "
                           f'({type(exc).__name__}: {str(exc).splitlines()[0]}). Download it '
                           f'with `hf download {source} --local-dir DIR` on a connected machine'
                           ) from exc
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    config = Path(source) / 'preprocessor_config.json'
    if config.is_file():
        data = json.loads(config.read_text())
        mean, std = tuple(data.get('image_mean', mean)), tuple(data.get('image_std', std))
    return model.to(device, dtype).eval(), mean, std


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp.npy')
    os.close(fd)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, images: RealImages, indices, input_size):
        self.images, self.indices, self.input_size = images, list(indices), input_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        rgb = self.images.read(index)
        h, w = teacher_size(*rgb.shape[:2], self.input_size)
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
        return index, torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def run_pseudolabel(teacher: str, images, out_dir, batch_size: int = 8, input_size: int = 518,
                    device: str = 'auto', num_workers: int = 2, progress: bool = True) -> dict:
    """Label every image without a stored prediction; returns counts."""
    from tqdm.auto import tqdm
    from ..model.estimator import resolve_device
    real = RealImages(images)
    cache = PseudoLabelCache(out_dir)
    dev = resolve_device(device)
    dtype = torch.float16 if dev.type == 'cuda' else torch.float32
    manifest = {'format': CACHE_FORMAT, 'teacher': str(teacher), 'input_size': int(input_size),
                'images': str(images),
                'output': 'affine-invariant disparity / its per-image peak, fp16'}
    if cache.manifest_path.is_file():
        old = cache.manifest()
        if old.get('teacher') != manifest['teacher'] or old.get('input_size') != input_size:
            raise DataError(f'{cache.root} holds labels of teacher {old.get("teacher")!r} at '
                            f'{old.get("input_size")} px; refusing to mix in {teacher!r} at '
                            f'{input_size} px (use another --out)')
    todo = [i for i, image_id in enumerate(real.ids) if not cache.label_path(image_id).is_file()]
    counts = {'images': len(real), 'already_done': len(real) - len(todo), 'labelled': 0}
    cache.root.mkdir(parents=True, exist_ok=True)
    cache.manifest_path.write_text(json.dumps(manifest, indent=1))
    if not todo:
        return counts
    model, mean, std = load_teacher(teacher, dev, dtype)
    mean_t = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    buckets: dict[tuple, list] = {}

    @torch.inference_mode()
    def flush(key):
        items = buckets.pop(key)
        x = torch.stack([t for _, t in items]).to(dev).float() / 255.0
        x = ((x - mean_t) / std_t).to(dtype)
        pred = model(pixel_values=x).predicted_depth.float().cpu().numpy()
        for (index, _), disparity in zip(items, pred):
            _save_atomic(cache.label_path(real.ids[index]), to_stored(disparity))
            counts['labelled'] += 1

    loader = torch.utils.data.DataLoader(_Decoded(real, todo, input_size), batch_size=None,
                                         num_workers=num_workers)
    for index, tensor in tqdm(loader, total=len(todo), desc='pseudo-labels', unit='img',
                              disable=not progress):
        key = tuple(tensor.shape)
        buckets.setdefault(key, []).append((index, tensor))
        if len(buckets[key]) >= batch_size:
            flush(key)
    for key in list(buckets):
        flush(key)
    return counts
