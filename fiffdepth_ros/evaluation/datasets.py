"""Readers of the zero-shot depth benchmarks, in the layout the reference protocol distributes.

The reference protocol (Marigold's evaluation) ships each benchmark as one uncompressed tar whose
member paths start with ``./``, and a split list whose lines name the members of one sample
(RGB first, then depth, then a filled depth / a mask / KITTI's focal length, whitespace
separated; KITTI lines whose depth is ``None`` have no ground truth and are skipped). Each reader
decodes the depth as that protocol does, builds the valid mask (range, crops, masks), and names
the prediction file the way the protocol's inference writes it (``.npy`` next to the RGB path).

| dataset | depth encoding | valid | extra | inference res | alignment max res |
| nyu     | uint16 PNG / 1000 (raw, not filled) | (1e-3, 10) | Eigen crop rows 45:471, cols 41:601 | native | - |
| kitti   | uint16 PNG / 256 | (1e-5, 80) | KB crop 352x1216 of RGB and depth; Eigen (or Garg) mask | native | - |
| eth3d   | float32 raw 4032x6048, inf = none | (1e-5, inf) | - | 756 | 1024 |
| scannet | uint16 PNG / 1000 | (1e-3, 10) | - | native | - |
| diode   | float npy (metres) | the mask npy | - | 640 | - |

Ranges are open intervals (``min < d < max``), as in the reference.
"""
from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# Where the reference protocol keeps its split lists (for the error message and the README).
SPLIT_URL = 'https://raw.githubusercontent.com/prs-eth/Marigold/main/data_split/'


class DatasetError(ValueError):
    """A dataset folder, archive or split list that cannot be read; the message says why."""


@dataclass
class Sample:
    name: str                 # the RGB member path, as in the split list (the sample's id)
    rgb: np.ndarray           # uint8 HxWx3 (after the dataset's crop)
    depth: np.ndarray         # float32 HxW metres (0 where no measurement)
    valid: np.ndarray         # bool HxW: the pixels the metrics use
    pred_name: str            # relative .npy path of the prediction, the protocol's naming
    extra: dict = field(default_factory=dict)   # e.g. KITTI's focal length


# ---------------------------------------------------------------------------- storage

class _Source:
    """Members of a tar archive (``./``-prefixed or not) or files under a folder."""

    def __init__(self, path: str):
        self.path = path
        self._tar = None
        self._names = None
        if os.path.isfile(path):
            if not tarfile.is_tarfile(path):
                raise DatasetError(f'{path} is a file but not a tar archive')
            self._tar = tarfile.open(path)   # noqa: SIM115 - kept open for random access
        elif not os.path.isdir(path):
            raise DatasetError(f'dataset not found: {path}')

    def read(self, rel: str) -> bytes:
        if self._tar is None:
            full = os.path.join(self.path, rel)
            if not os.path.isfile(full):
                raise DatasetError(f'missing file {full}')
            with open(full, 'rb') as f:
                return f.read()
        for name in ('./' + rel, rel):
            try:
                member = self._tar.getmember(name)
            except KeyError:
                continue
            data = self._tar.extractfile(member)
            if data is not None:
                return data.read()
        raise DatasetError(f'{self.path} has no member ./{rel}')

    def names(self) -> list[str]:
        """Every file path, without the ``./`` prefix, sorted."""
        if self._names is None:
            if self._tar is not None:
                names = [m.name for m in self._tar.getmembers() if m.isfile()]
            else:
                names = [os.path.relpath(os.path.join(d, f), self.path)
                         for d, _, files in os.walk(self.path) for f in files]
            self._names = sorted(n[2:] if n.startswith('./') else n for n in names)
        return self._names

    def close(self):
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def decode_image(data: bytes, what: str) -> np.ndarray:
    """PNG/JPEG bytes -> array as stored (uint16 depth stays uint16; colour as RGB)."""
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f'cannot decode {what} as an image')
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = cv2.cvtColor(img, code)
    return img


def _rgb(data: bytes, what: str) -> np.ndarray:
    img = decode_image(data, what)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        raise DatasetError(f'{what}: expected an 8-bit colour image, got {img.dtype}')
    return img


def range_mask(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """The protocol's validity: ``min_depth < depth < max_depth`` (open interval)."""
    return (depth > min_depth) & (depth < max_depth)


# ---------------------------------------------------------------------------- datasets

class EvalDataset:
    """One benchmark: split lines -> :class:`Sample`. Subclasses set the constants below."""

    name = ''
    archive = ''              # the tar's path under the data folder, as the protocol ships it
    split_file = ''           # the split list's path under the protocol's data_split/
    min_depth = 0.0
    max_depth = np.inf
    processing_res = 0        # inference resolution of the protocol (0 = native)
    alignment_max_res = None  # alignment on a downsampled copy (ETH3D)
    columns = 2               # split columns that name files
    rgb_pattern = r'$^'       # RGB members, to build a split from the archive when none is given

    def __init__(self, data: str, split: str | None = None):
        self.source = _Source(self._archive_path(data))
        self.lines = self._read_split(split)

    # -- locating the data
    def _archive_path(self, data: str) -> str:
        """``data`` may be the tar itself, the folder holding the protocol's tree of tars, the
        folder holding the tar, or the extracted folder."""
        if os.path.isfile(data):
            return data
        for candidate in (os.path.join(data, self.archive),
                          os.path.join(data, os.path.basename(self.archive))):
            if os.path.isfile(candidate):
                return candidate
        if os.path.isdir(data):
            return data
        raise DatasetError(f'{self.name}: no dataset at {data} (expected {self.archive} '
                           'under it, the tar itself, or its extracted folder)')

    def _read_split(self, split: str | None) -> list[list[str]]:
        path = split
        if path is None:
            folder = data_dir = self.source.path
            if os.path.isfile(data_dir):
                folder = os.path.dirname(data_dir)
            for candidate in (os.path.join(folder, os.path.basename(self.split_file)),
                              os.path.join(folder, self.split_file)):
                if os.path.isfile(candidate):
                    path = candidate
                    break
        if path is None:
            lines = self.discover()
            log.warning('%s: no split list (%s) next to the data: evaluating the %d samples '
                        'found in %s; pass --split for the protocol\'s list (%s%s)', self.name,
                        os.path.basename(self.split_file), len(lines), self.source.path,
                        SPLIT_URL, self.split_file)
            return lines
        if not os.path.isfile(path):
            raise DatasetError(f'split list not found: {path}')
        with open(path) as f:
            lines = [ln.split() for ln in f if ln.strip()]
        bad = [ln for ln in lines if len(ln) < self.columns]
        if bad:
            raise DatasetError(f'{path}: {self.name} split lines need {self.columns} columns, '
                               f'got {bad[0]!r}')
        return self.filter_lines(lines)

    def filter_lines(self, lines: list[list[str]]) -> list[list[str]]:
        return lines

    def discover(self) -> list[list[str]]:
        """Split lines for every RGB member of the archive whose ground truth is there too."""
        names = set(self.source.names())
        lines = []
        for n in sorted(names):
            if re.fullmatch(self.rgb_pattern, n):
                line = self.companions(n)
                if all(p in names for p in line[1:self.columns]):
                    lines.append(line)
        if not lines:
            raise DatasetError(f'{self.name}: no samples found in {self.source.path}')
        return lines

    def companions(self, rgb: str) -> list[str]:
        """The split line of one RGB member (used by :meth:`discover`)."""
        raise NotImplementedError

    # -- samples
    def __len__(self) -> int:
        return len(self.lines)

    def sample_names(self) -> list[str]:
        return [ln[0] for ln in self.lines]

    def pred_name(self, rgb: str) -> str:
        """The protocol's prediction file: ``pred_`` + the RGB base name, ``.npy``."""
        stem = os.path.splitext(os.path.basename(rgb))[0]
        return os.path.join(os.path.dirname(rgb), 'pred_' + stem + '.npy')

    def __getitem__(self, index: int) -> Sample:
        line = self.lines[index]
        rgb = _rgb(self.source.read(line[0]), line[0])
        depth = self.read_depth(line[1], rgb.shape[:2]).astype(np.float32)
        if depth.shape != rgb.shape[:2]:
            raise DatasetError(f'{line[0]}: RGB is {rgb.shape[1]}x{rgb.shape[0]} but the depth '
                               f'is {depth.shape[1]}x{depth.shape[0]}')
        rgb, depth = self.crop(rgb), self.crop(depth)
        valid = self.valid_mask(depth, line)
        return Sample(line[0], np.ascontiguousarray(rgb), np.ascontiguousarray(depth), valid,
                      self.pred_name(line[0]), self.extra(line))

    def read_depth(self, rel: str, shape: tuple[int, int]) -> np.ndarray:
        """Metric depth of one sample (``shape``: its RGB's, for headerless formats)."""
        raise NotImplementedError

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image

    def valid_mask(self, depth: np.ndarray, line: list[str]) -> np.ndarray:
        return range_mask(depth, self.min_depth, self.max_depth)

    def extra(self, line: list[str]) -> dict:
        return {}

    def close(self):
        self.source.close()


def _png_depth(data: bytes, what: str, divisor: float) -> np.ndarray:
    img = decode_image(data, what)
    if img.ndim != 2 or img.dtype != np.uint16:
        raise DatasetError(f'{what}: expected a single-channel 16-bit depth PNG, got '
                           f'{img.dtype} with shape {img.shape}')
    return img.astype(np.float32) / np.float32(divisor)


class NYUv2(EvalDataset):
    name = 'nyu'
    archive = 'nyuv2/nyu_labeled_extracted.tar'
    split_file = 'nyu_depth/labeled/filename_list_test.txt'
    min_depth, max_depth = 1e-3, 10.0
    columns = 2                # rgb, raw depth (a third column names the filled depth: unused)
    rgb_pattern = r'test/[^/]+/rgb_\d+\.png'
    EIGEN_CROP = (slice(45, 471), slice(41, 601))

    def companions(self, rgb):
        folder, base = os.path.split(rgb)
        idx = base[len('rgb_'):]
        return [rgb, f'{folder}/depth_{idx}', f'{folder}/filled_{idx}']

    def pred_name(self, rgb):
        # 'rgb_0001.png' -> 'pred_0001.npy'
        base = os.path.basename(rgb)
        return os.path.join(os.path.dirname(rgb),
                            'pred_' + os.path.splitext(base.split('_')[1])[0] + '.npy')

    def read_depth(self, rel, shape):
        return _png_depth(self.source.read(rel), rel, 1000.0)

    def valid_mask(self, depth, line):
        crop = np.zeros(depth.shape, bool)
        crop[self.EIGEN_CROP] = True
        return super().valid_mask(depth, line) & crop


class KITTIEigen(EvalDataset):
    name = 'kitti'
    archive = 'kitti/kitti_eigen_split_test.tar'
    split_file = 'kitti_depth/eigen_test_files_with_gt.txt'
    min_depth, max_depth = 1e-5, 80.0
    rgb_pattern = r'\d{4}_\d\d_\d\d/[^/]+_sync/image_02/data/\d+\.png'
    KB_HEIGHT, KB_WIDTH = 352, 1216
    # Fractions of the (cropped) image height/width kept by the two evaluation masks.
    MASKS = {'garg': (0.40810811, 0.99189189, 0.03594771, 0.96405229),
             'eigen': (0.3324324, 0.91351351, 0.0359477, 0.96405229)}

    def __init__(self, data, split=None, mask: str | None = 'eigen', kb_crop: bool = True):
        if mask is not None and mask not in self.MASKS:
            raise DatasetError(f"KITTI mask must be 'garg', 'eigen' or None, got {mask!r}")
        self.mask, self.kb_crop = mask, kb_crop
        super().__init__(data, split)

    def filter_lines(self, lines):
        return [ln for ln in lines if ln[1] != 'None']

    def companions(self, rgb):
        parts = rgb.split('/')      # date/drive/image_02/data/frame.png
        return [rgb, f'{parts[1]}/proj_depth/groundtruth/image_02/{parts[-1]}']

    def read_depth(self, rel, shape):
        return _png_depth(self.source.read(rel), rel, 256.0)

    def crop(self, image):
        if not self.kb_crop:
            return image
        h, w = image.shape[:2]
        if h < self.KB_HEIGHT or w < self.KB_WIDTH:
            raise DatasetError(f'KITTI image {w}x{h} is smaller than the benchmark crop '
                               f'{self.KB_WIDTH}x{self.KB_HEIGHT}')
        top, left = h - self.KB_HEIGHT, (w - self.KB_WIDTH) // 2
        return image[top:top + self.KB_HEIGHT, left:left + self.KB_WIDTH]

    def valid_mask(self, depth, line):
        valid = super().valid_mask(depth, line)
        if self.mask is None:
            return valid
        h, w = depth.shape
        r0, r1, c0, c1 = self.MASKS[self.mask]
        keep = np.zeros_like(valid)
        keep[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)] = True
        return valid & keep

    def extra(self, line):
        return {'focal_px': float(line[2])} if len(line) > 2 else {}


class ETH3D(EvalDataset):
    name = 'eth3d'
    archive = 'eth3d/eth3d.tar'
    split_file = 'eth3d_depth/eth3d_filename_list.txt'
    min_depth, max_depth = 1e-5, np.inf
    processing_res = 756
    alignment_max_res = 1024
    rgb_pattern = r'rgb/[^/]+/images/dslr_images/[^/]+\.JPG'
    def companions(self, rgb):
        scene, base = rgb.split('/')[1], rgb.split('/')[-1]
        return [rgb, f'depth/{scene}_dslr_depth/{scene}/ground_truth_depth/dslr_images/{base}']

    def read_depth(self, rel, shape):
        # Headerless float32 rows at the DSLR image's size (4032x6048 in the release).
        h, w = shape
        data = self.source.read(rel)
        if len(data) != h * w * 4:
            raise DatasetError(f'{rel}: {len(data)} bytes, expected a raw float32 {w}x{h} depth '
                               'map (the size of its RGB image)')
        depth = np.frombuffer(data, dtype='<f4').reshape(h, w).copy()
        depth[np.isinf(depth)] = 0.0          # inf marks "no ground truth"
        return depth


class ScanNet(EvalDataset):
    name = 'scannet'
    archive = 'scannet/scannet_val_sampled_800_1.tar'
    split_file = 'scannet_depth/scannet_val_sampled_list_800_1.txt'
    min_depth, max_depth = 1e-3, 10.0
    rgb_pattern = r'scene\d+_\d+/color/\d+\.jpg'

    def companions(self, rgb):
        scene, base = rgb.split('/')[0], os.path.splitext(rgb.split('/')[-1])[0]
        return [rgb, f'{scene}/depth/{base}.png']

    def read_depth(self, rel, shape):
        return _png_depth(self.source.read(rel), rel, 1000.0)


class DIODE(EvalDataset):
    name = 'diode'
    archive = 'diode/diode_val.tar'
    split_file = 'diode_depth/diode_val_all_filename_list.txt'
    min_depth, max_depth = 0.6, 350.0
    processing_res = 640
    columns = 3
    rgb_pattern = r'(indoors|outdoor)/scene_\d+/scan_\d+/[^/]+\d\.png'

    def companions(self, rgb):
        stem = os.path.splitext(rgb)[0]
        return [rgb, stem + '_depth.npy', stem + '_depth_mask.npy']

    def _npy(self, rel):
        try:
            return np.load(io.BytesIO(self.source.read(rel)), allow_pickle=False).squeeze()
        except ValueError as exc:
            raise DatasetError(f'cannot read {rel} as .npy: {exc}') from None

    def read_depth(self, rel, shape):
        return self._npy(rel)

    def valid_mask(self, depth, line):
        # The reference takes DIODE's own validity mask as is (no range test); the range
        # only clips the aligned prediction.
        mask = self._npy(line[2]).astype(bool)
        if mask.shape != depth.shape:
            raise DatasetError(f'{line[2]}: mask shape {mask.shape} differs from depth '
                               f'{depth.shape}')
        return mask


DATASETS = {cls.name: cls for cls in (NYUv2, KITTIEigen, ETH3D, ScanNet, DIODE)}


def open_dataset(name: str, data: str, split: str | None = None, **kwargs) -> EvalDataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}': expected one of {', '.join(DATASETS)}")
    return DATASETS[name](data, split, **kwargs)
