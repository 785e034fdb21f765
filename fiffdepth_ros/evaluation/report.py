"""Writing evaluation results: per-sample CSV (read back to resume), summary table, pictures."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from .metrics import HIGHER_IS_BETTER


class PerSampleCSV:
    """Append-only per-sample rows; rows already in the file are the samples done.

    Floats are written with ``repr`` (exact round trip), so a resumed run averages the same
    numbers as an uninterrupted one.
    """

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields = path, list(fields)
        self.done: dict[str, dict] = {}
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            _drop_partial_last_line(path)
            with open(path, newline='') as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != self.fields:
                    raise ValueError(f'{path} has columns {reader.fieldnames}, this run writes '
                                     f'{self.fields}: use another --output folder')
                for row in reader:
                    self.done[row['key']] = {k: _number(v) for k, v in row.items()}
        else:
            with open(path, 'w', newline='') as f:
                csv.writer(f).writerow(self.fields)

    def append(self, row: dict) -> None:
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, self.fields).writerow(
                {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        self.done[row['key']] = row


def _drop_partial_last_line(path: str) -> None:
    """A run killed while appending leaves a line without its newline: that sample is redone."""
    with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
            f.truncate(data.rfind(b'\n') + 1)


def _number(text: str):
    try:
        return float(text) if text not in ('', 'True', 'False') else text
    except ValueError:
        return text


def format_table(title: str, rows: list[tuple[str, dict]], keys: list[str]) -> str:
    """A plain-text table: one row per configuration, one column per metric."""
    head = ['', *keys]
    body = [[label, *(_cell(m.get(k)) for k in keys)] for label, m in rows]
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: '  '.join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return '\n'.join([title, line(head), *(line(r) for r in body)]) + '\n'


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    if isinstance(v, float):
        return f'{v:.4f}' if abs(v) < 1000 else f'{v:.1f}'
    return str(v)


def write_summary(output_dir: str, name: str, text: str, payload: dict) -> None:
    with open(os.path.join(output_dir, f'{name}.txt'), 'w') as f:
        f.write(text)
    with open(os.path.join(output_dir, f'{name}.json'), 'w') as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def ranked(done: dict[str, dict], metric: str = 'abs_rel', count: int = 3):
    """(worst, best) sample keys by ``metric``."""
    keys = [k for k, r in done.items() if isinstance(r.get(metric), float)]
    keys.sort(key=lambda k: done[k][metric], reverse=metric not in HIGHER_IS_BETTER)
    return keys[:count], keys[::-1][:count]


def save_pictures(folder: str, tag: str, rgb: np.ndarray, aligned: np.ndarray, gt: np.ndarray,
                  valid: np.ndarray) -> list[str]:
    """RGB, aligned prediction and AbsRel error pictures of one sample (PNG)."""
    import cv2

    from ..conversions.colorize import colorize_depth
    os.makedirs(folder, exist_ok=True)
    lo, hi = float(np.percentile(gt[valid], 2)), float(np.percentile(gt[valid], 98))
    error = np.full(gt.shape, np.nan, np.float32)
    error[valid] = np.abs(aligned[valid] - gt[valid]) / gt[valid]
    pictures = {
        'rgb': rgb,
        'pred': colorize_depth(aligned, lo, hi),
        'gt': colorize_depth(np.where(valid, gt, np.nan), lo, hi),
        # colorize_depth paints small values warm; negate so large errors are the warm ones.
        'abs_rel': colorize_depth(-error, -0.25, 0.0),
    }
    paths = []
    for kind, img in pictures.items():
        path = os.path.join(folder, f'{tag}_{kind}.png')
        cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
