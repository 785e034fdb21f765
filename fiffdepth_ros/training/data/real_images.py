"""Real, unlabeled images (LAION-Art in the paper) and their cached teacher predictions.

Images come from a folder (searched recursively) or from webdataset tar shards (a folder of
.tar files, a glob, a brace pattern such as ``shards/{00000..00199}.tar``, or a list), the way
such sets are downloaded (img2dataset). Each image has a stable id: its path without the suffix
(folder) or ``<shard name>/<webdataset key>`` (shards). ``fiffdepth-pseudolabel`` stores one
fp16 prediction per id under ``<cache>/labels/<id>.npy``; training only reads them.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .common import DataError, FileSource, decode_image, rgb_to_tensor

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')
CACHE_FORMAT = 'fiffdepth-pseudolabels-v1'


def expand_shards(spec) -> list[Path]:
    """A folder of .tar files, a glob, a brace pattern, or a list of those -> shard paths."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[Path] = []
    for item in specs:
        item = str(item)
        if os.path.isdir(item):
            out += sorted(Path(item).glob('*.tar'))
            continue
        patterns = [item]
        if '{' in item:
            from braceexpand import braceexpand
            patterns = list(braceexpand(item))
        for pattern in patterns:
            matches = sorted(glob.glob(pattern)) if any(c in pattern for c in '*?[') \
                else [pattern]
            out += [Path(m) for m in matches]
    return out


class RealImages:
    """Random access to real images by index; ``ids[i]`` names image i in the label cache."""

    def __init__(self, images):
        self.spec = images
        self.entries: list[tuple[FileSource, str]] = []     # (source, member or rel path)
        self.ids: list[str] = []
        path = Path(str(images)) if not isinstance(images, (list, tuple)) else None
        if path is not None and not path.exists() and not any(c in str(images) for c in '*?[{'):
            raise DataError(f'real images {images} do not exist (expected an image folder or '
                            f'webdataset .tar shards)')
        if path is not None and path.is_dir() and not any(path.glob('*.tar')):
            self._index_folder(path)
        else:
            self._index_shards(expand_shards(images))
        if not self.ids:
            raise DataError(f'no real images found in {images} (looked for '
                            f"{', '.join(IMAGE_EXTENSIONS)} files or webdataset .tar shards)")

    def _index_folder(self, root: Path) -> None:
        source = FileSource(root)
        for rel in sorted(source.names()):
            if rel.rsplit('.', 1)[-1].lower() in IMAGE_EXTENSIONS:
                self.entries.append((source, rel))
                self.ids.append(Path(rel).with_suffix('').as_posix())

    def _index_shards(self, shards: list[Path]) -> None:
        from webdataset.tariterators import base_plus_ext
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise DataError(f'webdataset shard {missing[0]} does not exist')
        for shard in shards:
            source = FileSource(shard)
            for member in sorted(source.names()):
                key, ext = base_plus_ext(member)
                if key is None or ext is None:
                    continue
                if ext.lower() in IMAGE_EXTENSIONS:
                    self.entries.append((source, member))
                    self.ids.append(f'{shard.name.removesuffix(".tar")}/{key}')

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as HxWx3 uint8 RGB."""
        source, rel = self.entries[index]
        return decode_image(source.read(rel), f'{source.root}/{rel}')


class PseudoLabelCache:
    """The teacher's predictions, one fp16 .npy per image id."""

    def __init__(self, root):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / 'manifest.json'

    def label_path(self, image_id: str) -> Path:
        return self.root / 'labels' / f'{image_id}.npy'

    def manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f'{self.root} is not a pseudo-label cache (no readable '
                            f'manifest.json: {exc}); run fiffdepth-pseudolabel first') from exc
        if data.get('format') != CACHE_FORMAT:
            raise DataError(f'{self.manifest_path}: unknown format {data.get("format")!r}')
        return data

    def check_covers(self, images: RealImages) -> None:
        self.manifest()
        missing = [i for i in images.ids if not self.label_path(i).is_file()]
        if missing:
            raise DataError(f'pseudo-label cache {self.root} lacks {len(missing)} of '
                            f'{len(images)} real images (e.g. {missing[0]}); run '
                            f'fiffdepth-pseudolabel --images {images.spec} --out {self.root} '
                            f'(it resumes)')

    def read(self, image_id: str) -> np.ndarray:
        path = self.label_path(image_id)
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(f'cannot read pseudo-label {path}: {exc}') from exc


def cover_crop(image: np.ndarray, size_hw, crop_u: float, crop_v: float, zoom: float = 1.0,
               interpolation: int | None = None) -> np.ndarray:
    """Resize ``image`` to cover ``size_hw`` (aspect kept; ``zoom`` >= 1 times larger, the
    data.zoom augmentation), then crop that size at (crop_u, crop_v) in [0, 1] (0.5 = centred).
    ``interpolation``: default area when shrinking, bilinear when enlarging."""
    th, tw = size_hw
    h, w = image.shape[:2]
    scale = max(th / h, tw / w) * max(1.0, float(zoom))
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (rw, rh), interpolation=interpolation)
    top, left = int(round((rh - th) * crop_v)), int(round((rw - tw) * crop_u))
    return image[top:top + th, left:left + tw]


class RealImagesOnly:
    """Real images without labels (stages that need none: light_autoencoder), resized to cover
    ``resize_to_hw`` and cropped where the batch plan says, as RealWithLabels does."""

    def __init__(self, images: RealImages, resize_to_hw=(480, 640)):
        self.images = images
        self.size_hw = (int(resize_to_hw[0]), int(resize_to_hw[1]))

    def __len__(self) -> int:
        return len(self.images)

    def check_files(self) -> None:
        """The images were listed when the set was opened; nothing else to check."""

    def load(self, index: int, flip: bool = False, crop_u: float = 0.5, crop_v: float = 0.5,
             zoom: float = 1.0) -> dict:
        rgb = cover_crop(self.images.read(index), self.size_hw, crop_u, crop_v, zoom)
        if flip:
            rgb = rgb[:, ::-1]
        return {'rgb': rgb_to_tensor(rgb)}


class RealWithLabels:
    """Real images with their pseudo-labels, resized to cover ``resize_to_hw`` and cropped."""

    def __init__(self, images: RealImages, labels: PseudoLabelCache, resize_to_hw=(480, 640)):
        self.images, self.labels = images, labels
        self.size_hw = (int(resize_to_hw[0]), int(resize_to_hw[1]))

    def __len__(self) -> int:
        return len(self.images)

    def check_files(self) -> None:
        self.labels.check_covers(self.images)

    def load(self, index: int, flip: bool = False, crop_u: float = 0.5, crop_v: float = 0.5,
             zoom: float = 1.0) -> dict:
        """crop_u, crop_v in [0, 1]: where the crop window sits (0.5 = centred); ``zoom`` >= 1:
        the image is resized ``zoom`` times larger than covering first (data.zoom)."""
        rgb = cover_crop(self.images.read(index), self.size_hw, crop_u, crop_v, zoom)
        label = cover_crop(self.labels.read(self.images.ids[index]), self.size_hw, crop_u, crop_v,
                           zoom, interpolation=cv2.INTER_LINEAR)
        if flip:
            rgb, label = rgb[:, ::-1], label[:, ::-1]
        return {'rgb': rgb_to_tensor(rgb),
                'label': torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None]}
