"""The relative-depth benchmark loop: predict (or load predictions), align, score, report.

Resumable: each scored sample is one row of ``per_sample_metrics.csv`` in the output folder, and
a model's raw predictions are kept under ``prediction/`` in the protocol's naming (so they can be
scored again with ``--predictions``); a rerun skips the samples already in the CSV.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from .alignment import align_scale_shift
from .datasets import EvalDataset, Sample
from .metrics import METRIC_NAMES, compute_metrics, mean_metrics
from .report import PerSampleCSV, format_table, ranked, save_pictures, write_summary

log = logging.getLogger(__name__)

SPACES = ('depth', 'disparity')


class EvaluationError(ValueError):
    """A run that cannot go on (mismatched predictions, a reused output folder)."""


# ---------------------------------------------------------------------------- predictions

class ModelPredictor:
    """Relative depth from a loaded estimator; its raw outputs are written under ``save_dir``."""

    def __init__(self, estimator, save_dir: str | None = None):
        self.estimator = estimator
        self.space = getattr(estimator, 'output_space', 'depth')
        if self.space not in SPACES:
            raise EvaluationError(f'estimator output space {self.space!r} is not one of {SPACES}')
        self.save_dir = save_dir
        self.label = str(getattr(estimator, 'model_name', type(estimator).__name__))

    def __call__(self, sample: Sample) -> np.ndarray:
        path = os.path.join(self.save_dir, sample.pred_name) if self.save_dir else None
        if path and os.path.isfile(path):        # predicted by an interrupted run
            return np.load(path).astype(np.float32)
        pred = np.asarray(self.estimator.predict(sample.rgb), dtype=np.float32)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + '.tmp.npy'
            np.save(tmp, pred)
            os.replace(tmp, path)                # never a half-written prediction
        return pred


class FilePredictor:
    """Predictions another program wrote: ``DIR/<protocol name>.npy`` per sample."""

    def __init__(self, folder: str, space: str = 'depth'):
        if not os.path.isdir(folder):
            raise EvaluationError(f'predictions folder not found: {folder}')
        if space not in SPACES:
            raise EvaluationError(f'space must be one of {SPACES}, got {space!r}')
        self.folder, self.space, self.label = folder, space, folder

    def __call__(self, sample: Sample) -> np.ndarray:
        path = os.path.join(self.folder, sample.pred_name)
        if not os.path.isfile(path):
            raise EvaluationError(f'missing prediction {path} for {sample.name}')
        return np.load(path, allow_pickle=False).astype(np.float32).squeeze()


# ---------------------------------------------------------------------------- scoring

def score_arrays(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, space: str = 'depth',
                 min_depth: float | None = None, max_depth: float | None = None,
                 max_resolution: int | None = None, return_aligned: bool = False):
    """The protocol on bare arrays (the training validation's entry point): least-squares
    alignment in ``space``, clip to the range, metrics; plus ``scale``, ``shift``, ``n_valid``."""
    if pred.shape != gt.shape:
        raise EvaluationError(f'prediction is {pred.shape[1]}x{pred.shape[0]} but the ground '
                              f'truth is {gt.shape[1]}x{gt.shape[0]}')
    if not np.isfinite(pred[valid]).all():
        raise EvaluationError('prediction has non-finite values on valid pixels')
    aligned, scale, shift = align_scale_shift(pred, gt, valid, space=space,
                                              max_resolution=max_resolution, min_depth=min_depth,
                                              max_depth=max_depth, return_params=True)
    metrics = compute_metrics(aligned, gt, valid)
    metrics.update(scale=scale, shift=shift, n_valid=int(np.count_nonzero(valid)))
    return (metrics, aligned) if return_aligned else metrics


def score_sample(pred: np.ndarray, sample: Sample, dataset: EvalDataset, space: str,
                 return_aligned: bool = False):
    """One benchmark sample, with its dataset's range and alignment resolution."""
    try:
        return score_arrays(pred, sample.depth, sample.valid, space, dataset.min_depth,
                            dataset.max_depth, dataset.alignment_max_res, return_aligned)
    except EvaluationError as exc:
        raise EvaluationError(f'{sample.name}: {exc} (after the dataset crop)') from None


@dataclass
class RunResult:
    mean: dict
    count: int
    text: str
    output_dir: str


def _check_run(output_dir: str, settings: dict) -> None:
    """One output folder holds one configuration: refuse to mix two in a resumed CSV."""
    path = os.path.join(output_dir, 'run.json')
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            raise EvaluationError(f'{output_dir} holds a run with other settings ({before}); '
                                  'use another --output folder')
    else:
        with open(path, 'w') as f:
            json.dump(settings, f, indent=2, sort_keys=True)


def evaluate(dataset: EvalDataset, predictor, output_dir: str, limit: int | None = None,
             pictures: int = 0, progress: bool = True, settings: dict | None = None) -> RunResult:
    """Score the first ``limit`` samples (all when None); returns the averages over images."""
    os.makedirs(output_dir, exist_ok=True)
    space = predictor.space
    _check_run(output_dir, {'dataset': dataset.name, 'space': space,
                            'predictions': predictor.label, **(settings or {})})
    fields = ['key', 'pred_name', 'n_valid', 'scale', 'shift', *METRIC_NAMES]
    table = PerSampleCSV(os.path.join(output_dir, 'per_sample_metrics.csv'), fields)
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    names = dataset.sample_names()
    todo = [i for i in indices if names[i] not in table.done]
    if len(todo) < len(indices):
        log.info('resuming: %d of %d samples already scored', len(indices) - len(todo),
                 len(indices))
    from tqdm.auto import tqdm
    for i in tqdm(todo, desc=f'eval {dataset.name}', disable=not progress):
        sample = dataset[i]
        metrics = score_sample(predictor(sample), sample, dataset, space)
        table.append({'key': sample.name, 'pred_name': sample.pred_name, **metrics})

    rows = [table.done[names[i]] for i in indices]
    mean = mean_metrics([{k: r[k] for k in METRIC_NAMES} for r in rows])
    text = format_table(
        f'{dataset.name}: {len(rows)} samples, {space} least-squares alignment, depth range '
        f'({dataset.min_depth:g}, {dataset.max_depth:g}) m, predictions: {predictor.label}',
        [('mean', mean)], list(METRIC_NAMES))
    write_summary(output_dir, 'eval_metrics', text, {'dataset': dataset.name, 'count': len(rows),
                                                      'space': space, 'mean': mean})
    if pictures:
        _pictures(dataset, predictor, output_dir, {names[i]: table.done[names[i]]
                                                   for i in indices}, pictures)
    return RunResult(mean, len(rows), text, output_dir)


def _pictures(dataset, predictor, output_dir, done, count):
    worst, best = ranked(done, 'abs_rel', count)
    index = {n: i for i, n in enumerate(dataset.sample_names())}
    for label, keys in (('worst', worst), ('best', best)):
        for rank, key in enumerate(keys):
            sample = dataset[index[key]]
            _, aligned = score_sample(predictor(sample), sample, dataset, predictor.space,
                                      return_aligned=True)
            tag = f'{label}{rank + 1}_' + os.path.splitext(sample.pred_name)[0].replace('/', '_')
            save_pictures(os.path.join(output_dir, 'pictures'), tag, sample.rgb, aligned,
                          sample.depth, sample.valid)


# ---------------------------------------------------------------------------- anchor protocol

ANCHOR_COLUMNS = ('abs_rel', 'rmse', 'mae', 'delta1', 'coverage', 'anchors', 'inliers',
                  'local_inliers', 'ms')
# Which sensor the sampled anchors imitate, for their weights.
ANCHOR_SENSOR = {'nyu': 'depth', 'scannet': 'depth', 'kitti': 'lidar', 'eth3d': 'lidar',
                 'diode': 'lidar'}


def evaluate_anchors(dataset: EvalDataset, predictor, output_dir: str, settings,
                     limit: int | None = None, seed: int = 0, progress: bool = True,
                     run_settings: dict | None = None, local_guide: str | None = None
                   ) -> RunResult:
    """The sparse-anchor metric protocol over the dataset, one row per (sample, setting);
    ``local_guide``: what guides the local correction (the sample's RGB image joins it),
    None for the node's default."""
    from .anchors_protocol import (DEFAULT_GUIDE, evaluate_anchor_frame, kitti_principal_point,
                                   sample_seed)
    os.makedirs(output_dir, exist_ok=True)
    space = predictor.space
    local_guide = local_guide or DEFAULT_GUIDE
    _check_run(output_dir, {'dataset': dataset.name, 'space': space, 'protocol': 'anchors',
                            'seed': seed, 'predictions': predictor.label,
                            'local_guide': local_guide,
                            'settings': [s.label for s in settings], **(run_settings or {})})
    fields = ['key', 'sample', 'setting', 'status', 'fit_residual', *ANCHOR_COLUMNS,
              *(m for m in METRIC_NAMES if m not in ANCHOR_COLUMNS)]
    table = PerSampleCSV(os.path.join(output_dir, 'per_sample_anchor_metrics.csv'), fields)
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    names = dataset.sample_names()
    key = lambda name, s: f'{name}|{s.label}'  # noqa: E731
    todo = [i for i in indices if any(key(names[i], s) not in table.done for s in settings)]
    if any(s.sampler == 'lines16' for s in settings) and (
            dataset.name != 'kitti' or any(len(dataset.lines[i]) < 3 for i in todo)):
        raise EvaluationError("the lines16 anchors need KITTI's focal length from the split list "
                              '(its third column): pass --dataset kitti with --split')
    from tqdm.auto import tqdm
    for i in tqdm(todo, desc=f'anchors {dataset.name}', disable=not progress):
        sample = dataset[i]
        relative = predictor(sample)
        if relative.shape != sample.depth.shape:
            raise EvaluationError(f'{sample.name}: prediction shape {relative.shape} differs '
                                  f'from the ground truth {sample.depth.shape}')
        camera = {}
        if dataset.name == 'kitti' and 'focal_px' in sample.extra:
            camera = {'focal_px': sample.extra['focal_px'],
                      'principal_point': kitti_principal_point()}
        for s in settings:
            if key(sample.name, s) in table.done:
                continue
            # Every setting of a sample draws from the same seed: 100 vs 500 differ only in N.
            row = evaluate_anchor_frame(relative, sample.depth, sample.valid, s, space,
                                        dataset.min_depth, dataset.max_depth,
                                        sample_seed(sample.name, seed),
                                        ANCHOR_SENSOR.get(dataset.name, 'lidar'), **camera,
                                        image=sample.rgb, local_guide=local_guide)
            table.append({f: row.get(f, '') for f in fields} |
                         {'key': key(sample.name, s), 'sample': sample.name,
                          'setting': s.label})

    rows, payload = [], {}
    for s in settings:
        done = [table.done[key(names[i], s)] for i in indices]
        ok = [r for r in done if isinstance(r.get('abs_rel'), float)]
        mean = mean_metrics([{k: r[k] for k in (*ANCHOR_COLUMNS, *METRIC_NAMES)} for r in ok])
        mean['failed'] = len(done) - len(ok)
        rows.append((s.label, mean))
        payload[s.label] = mean
    text = format_table(
        f'{dataset.name}: {len(indices)} samples, metric depth from sparse ground-truth anchors '
        f'through scale recovery ({space} model, temporal filter off), predictions: '
        f'{predictor.label}; means over the frames with a metric fit (failed: without)',
        rows, [*ANCHOR_COLUMNS, 'failed'])
    write_summary(output_dir, 'anchor_metrics', text, {'dataset': dataset.name,
                                                       'count': len(indices), 'seed': seed,
                                                       'settings': payload})
    return RunResult(payload, len(indices), text, output_dir)
