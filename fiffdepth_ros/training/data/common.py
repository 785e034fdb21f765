"""Reading files from a folder or a tar archive, and the shared RGB-D sample format.

A sample is a dict of CHW float32 tensors: ``rgb`` in [-1, 1], ``depth`` in metres and ``valid``
(bool), so every synthetic set feeds the same target code.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import torch


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and what is wrong."""


class FileSource:
    """Files under a folder, or members of a tar archive (Marigold ships its preprocessed sets
    as tars whose member names start with './'). The tar is opened lazily per process, so a
    source can be handed to DataLoader workers."""

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f'dataset {self.root} does not exist')
        self.is_tar = self.root.is_file()
        if self.is_tar and not tarfile.is_tarfile(self.root):
            raise DataError(f'dataset {self.root} is a file but not a tar archive')
        self._tar = None
        self._pid = None
        self._members: dict[str, tarfile.TarInfo] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_tar'] = None          # file handles do not travel to worker processes
        return state

    def _archive(self):
        if self._tar is None or self._pid != os.getpid():
            self._tar = tarfile.open(self.root)
            self._pid = os.getpid()
        return self._tar

    def names(self) -> set[str]:
        """Member names without a leading './' (tar) or relative file paths (folder)."""
        if self.is_tar:
            if self._members is None:
                self._members = {m.name.removeprefix('./'): m
                                 for m in self._archive().getmembers() if m.isfile()}
            return set(self._members)
        return {str(p.relative_to(self.root)) for p in self.root.rglob('*') if p.is_file()}

    def exists(self, rel: str) -> bool:
        if self.is_tar:
            self.names()
            return rel in self._members
        return (self.root / rel).is_file()

    def read(self, rel: str) -> bytes:
        if self.is_tar:
            self.names()
            member = self._members.get(rel)
            if member is None:
                raise DataError(f"'{rel}' is not in {self.root}")
            return self._archive().extractfile(member).read()
        try:
            return (self.root / rel).read_bytes()
        except OSError as exc:
            raise DataError(f'cannot read {self.root / rel}: {exc}') from exc

    def missing(self, rels) -> list[str]:
        if self.is_tar:
            names = self.names()
            return [r for r in rels if r not in names]
        return [r for r in rels if not (self.root / r).is_file()]


def decode_image(data: bytes, where: str, unchanged: bool = False) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB (or the raw array, e.g. uint16 depth, if unchanged)."""
    flag = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise DataError(f'{where} is not a readable image')
    if not unchanged:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_split(path) -> list[list[str]]:
    """A Marigold-style split file: one sample per line, whitespace-separated relative paths."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f'cannot read split file {path}: {exc}') from exc
    rows = [line.split() for line in lines if line.strip() and not line.startswith('#')]
    if not rows:
        raise DataError(f'split file {path} lists no samples')
    return rows


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def resize_sample(rgb: np.ndarray, depth: np.ndarray, size_hw) -> tuple[np.ndarray, np.ndarray]:
    """RGB with area averaging, depth with nearest neighbours (never blends across edges)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if rgb.shape[:2] != (h, w):
        enlarge = h > rgb.shape[0] or w > rgb.shape[1]
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR if enlarge
                         else cv2.INTER_AREA)
    if depth.shape[:2] != (h, w):
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, depth


MIN_ZOOM_VALID = 0.1     # a zoom window with fewer valid depth pixels is not used


def zoom_crop(rgb: np.ndarray, depth: np.ndarray, zoom) -> tuple[np.ndarray, np.ndarray]:
    """``zoom`` = (z, u, v): the window 1/z of the frame's size at relative place (u, v), so
    that, resized back, its objects look z times larger (the data.zoom augmentation)."""
    z, u, v = zoom
    h, w = rgb.shape[:2]
    ch, cw = max(1, int(round(h / z))), max(1, int(round(w / z)))
    top, left = int(round((h - ch) * v)), int(round((w - cw) * u))
    return rgb[top:top + ch, left:left + cw], depth[top:top + ch, left:left + cw]


def valid_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Where a depth map is a training target: finite and inside (min_depth, max_depth)."""
    return np.isfinite(depth) & (depth > min_depth) & (depth < max_depth)


def make_sample(rgb: np.ndarray, depth: np.ndarray, min_depth: float, max_depth: float,
                flip: bool) -> dict:
    depth = np.asarray(depth, dtype=np.float32)
    valid = valid_depth(depth, min_depth, max_depth)
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    if flip:
        rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
    return {'rgb': rgb_to_tensor(rgb),
            'depth': torch.from_numpy(np.ascontiguousarray(depth))[None],
            'valid': torch.from_numpy(np.ascontiguousarray(valid))[None]}


class RGBDDataset:
    """Base of the synthetic sets: rows of (rgb path, depth path) in a FileSource."""

    name = 'rgbd'
    min_depth = 1e-5
    max_depth = float('inf')

    def __init__(self, source: FileSource, rows: list[list[str]], split_path,
                 resize_to_hw=None):
        bad = [r for r in rows if len(r) < 2]
        if bad:
            raise DataError(f'split file {split_path}: line {" ".join(bad[0])!r} needs an rgb '
                            f'and a depth path')
        self.source, self.rows, self.split_path = source, rows, Path(split_path)
        self.resize_to_hw = tuple(resize_to_hw) if resize_to_hw else None

    def __len__(self) -> int:
        return len(self.rows)

    def check_files(self) -> None:
        """Every file the split names is present (before any model is loaded)."""
        missing = self.source.missing([p for row in self.rows for p in row[:2]])
        if missing:
            raise DataError(f'{self.name}: split file {self.split_path} names {len(missing)} '
                            f'file(s) absent from {self.source.root}, e.g. {missing[0]}')

    def decode_depth(self, raw: np.ndarray, rel: str) -> np.ndarray:
        raise NotImplementedError

    def read_depth(self, rel: str) -> np.ndarray:
        data = self.source.read(rel)
        where = f'{self.source.root}/{rel}'
        if rel.endswith('.npy'):
            import io
            return np.load(io.BytesIO(data)).astype(np.float32)
        return self.decode_depth(decode_image(data, where, unchanged=True), rel)

    def crop(self, rgb, depth):
        return rgb, depth

    def load(self, index: int, flip: bool = False, zoom=None) -> dict:
        """``zoom``: (z, u, v) of zoom_crop, applied after the dataset's crop; the crop is then
        resized to ``resize_to_hw`` (or back to the frame's size)."""
        rgb_rel, depth_rel = self.rows[index][:2]
        rgb = decode_image(self.source.read(rgb_rel), f'{self.source.root}/{rgb_rel}')
        depth = self.read_depth(depth_rel)
        if depth.ndim == 3:
            depth = depth[..., 0]
        if depth.shape[:2] != rgb.shape[:2]:
            raise DataError(f'{self.name}: {depth_rel} is {depth.shape[1]}x{depth.shape[0]} '
                            f'but {rgb_rel} is {rgb.shape[1]}x{rgb.shape[0]}')
        rgb, depth = self.crop(rgb, depth)
        size_hw = self.resize_to_hw
        if zoom is not None:
            size_hw = size_hw or rgb.shape[:2]
            crop_rgb, crop_depth = zoom_crop(rgb, depth, zoom)
            # A window of sky (or of any invalid depth) has no target: keep the whole frame.
            if valid_depth(crop_depth, self.min_depth, self.max_depth).mean() >= MIN_ZOOM_VALID:
                rgb, depth = crop_rgb, crop_depth
        if size_hw:
            rgb, depth = resize_sample(rgb, depth, size_hw)
        return make_sample(rgb, depth, self.min_depth, self.max_depth, flip)
