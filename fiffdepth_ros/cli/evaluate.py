"""fiffdepth-eval: the zero-shot depth benchmarks, and metric depth from sparse anchors.

    fiffdepth-eval --dataset nyu|kitti|eth3d|scannet|diode --data DIR
                   [--model nano|PATH_OR_ID | --predictions DIR [--space depth|disparity]]
                   [--split FILE] [--processing-res N] [--limit N] [--output DIR]
                   [--protocol relative|anchors] [--anchors 100,500,1000|lines16]
                   [--anchor-local on|off|both] [--pictures K]
                   [--model-family auto|fiffdepth|e2e_ft|lotus_d|lotus_d_disparity|marigold]
                   [--autoencoder full|light|light_encoder|light_decoder] [--light-path DIR]

--data: the folder of the protocol's tars (e.g. BASE/nyuv2/nyu_labeled_extracted.tar), the tar
itself, or an extracted copy. --split: the protocol's split list (default: looked for next to the
data; without one every sample in the archive is used, with a warning). --predictions scores
.npy files another program wrote, named as the protocol names them (e.g. NYU
``test/kitchen_0004/pred_0001.npy``). Results go to --output (default ./eval/DATASET[/anchors]):
summary table (also printed), per-sample CSV, the model's predictions under prediction/, and
with --pictures K colourised prediction/error pictures of the K worst and best samples. A rerun
with the same --output skips the samples already scored.
Exit status: 0 done; 2 bad arguments, data or predictions.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..evaluation.datasets import DATASETS, DatasetError, open_dataset
from ..evaluation.runner import (EvaluationError, FilePredictor, ModelPredictor, evaluate,
                                 evaluate_anchors)
from ..model.checkpoint import ModelLoadError
from ..params import SPECS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='fiffdepth-eval', description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', required=True, choices=sorted(DATASETS))
    p.add_argument('--data', required=True, metavar='DIR', help='dataset tar folder, tar, or '
                   'extracted folder')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--model', metavar='PATH_OR_ID', help="'nano' (the built-in demonstration "
                     'model, the default without --predictions), a checkpoint folder or hub id')
    src.add_argument('--predictions', metavar='DIR', help='score .npy predictions in DIR')
    p.add_argument('--space', choices=('depth', 'disparity'), default='depth',
                   help='what the --predictions files hold (models report their own)')
    p.add_argument('--split', metavar='FILE', help="the protocol's split list")
    p.add_argument('--processing-res', type=int, default=None, metavar='N',
                   help="model input's longer side (default: the protocol's for the dataset)")
    p.add_argument('--limit', type=int, default=None, metavar='N', help='first N samples only')
    p.add_argument('--output', metavar='DIR', help='results folder')
    p.add_argument('--protocol', choices=('relative', 'anchors'), default='relative',
                   help='relative: least-squares alignment to the ground truth (the papers); '
                        'anchors: metric depth from sparse ground-truth anchors')
    p.add_argument('--anchors', default=None, metavar='LIST',
                   help="anchor settings: counts of random pixels and/or 'lines16' "
                        "(default: lines16 on kitti, 100,500,1000 elsewhere)")
    p.add_argument('--anchor-local', default='both', choices=('on', 'off', 'both'),
                   help='local correction after the global fit (default: both rows)')
    p.add_argument('--seed', type=int, default=0, help='anchor sampling seed')
    p.add_argument('--local-guide', choices=('depth', 'image', 'both'), default=None,
                   help="anchors protocol: what guides the local correction between anchors "
                        "(the sample's RGB image joins the prediction; default: the node's "
                        "local_guide default)")
    p.add_argument('--kitti-mask', choices=('eigen', 'garg', 'none'), default='eigen')
    p.add_argument('--pictures', type=int, default=0, metavar='K',
                   help='colourised pictures of the K worst and K best samples')
    p.add_argument('--model-family', default='auto', metavar='NAME',
                   help="'auto' (detected from the checkpoint), fiffdepth, e2e_ft, lotus_d, "
                        'lotus_d_disparity or marigold')
    p.add_argument('--denoising-steps', type=int, default=0, metavar='N',
                   help="Marigold only: steps (0 = the checkpoint's default)")
    p.add_argument('--ensemble-size', type=int, default=1, metavar='N', help='Marigold only')
    p.add_argument('--device', default='auto')
    p.add_argument('--precision', default='auto', choices=SPECS['precision'].choices,
                   help="'bf16': an export on --runtime openvino (CPUs with bf16)")
    p.add_argument('--runtime', default='auto', choices=SPECS['runtime'].choices,
                   help='auto: torch for a checkpoint, the export\'s own runtime for an export '
                        'folder (fiffdepth-export)')
    p.add_argument('--no-progress', action='store_true')
    from .predict import add_autoencoder_arguments
    add_autoencoder_arguments(p)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.predictions and not args.model:
        from ..model.builtin import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        if args.limit is not None and args.limit < 1:
            raise EvaluationError(f'--limit must be >= 1, got {args.limit}')
        kwargs = {}
        if args.dataset == 'kitti':
            kwargs['mask'] = None if args.kitti_mask == 'none' else args.kitti_mask
        dataset = open_dataset(args.dataset, args.data, args.split, **kwargs)
        output = args.output or os.path.join(
            'eval', args.dataset + ('_anchors' if args.protocol == 'anchors' else ''))
        settings = {}
        if args.predictions:
            predictor = FilePredictor(args.predictions, args.space)
        else:
            from ..model.estimator import DepthEstimator
            res = dataset.processing_res if args.processing_res is None else args.processing_res
            estimator = DepthEstimator.from_pretrained(
                args.model, device=args.device, precision=args.precision, processing_res=res,
                model_family=args.model_family, denoising_steps=args.denoising_steps,
                ensemble_size=args.ensemble_size, autoencoder=args.autoencoder,
                light_path=args.light_path, runtime=args.runtime)
            predictor = ModelPredictor(estimator, os.path.join(output, 'prediction'))
            settings = {'processing_res': res, 'precision': args.precision,
                        'family': getattr(estimator, 'family', args.model_family),
                        'denoising_steps': args.denoising_steps,
                        'ensemble_size': args.ensemble_size, 'autoencoder': args.autoencoder,
                        'runtime': estimator.describe().get('runtime', args.runtime)}
        if args.protocol == 'relative':
            result = evaluate(dataset, predictor, output, args.limit, args.pictures,
                              progress=not args.no_progress, settings=settings)
        else:
            from ..evaluation.anchors_protocol import parse_settings
            spec = args.anchors or ('lines16' if args.dataset == 'kitti' else '100,500,1000')
            result = evaluate_anchors(dataset, predictor, output,
                                      parse_settings(spec, args.anchor_local), args.limit,
                                      args.seed, progress=not args.no_progress,
                                      run_settings=settings, local_guide=args.local_guide)
    except (DatasetError, EvaluationError, ModelLoadError, ValueError, OSError) as exc:
        print(f'fiffdepth-eval: error: {exc}', file=sys.stderr)
        return 2
    print(result.text, end='')
    print(f'results in {result.output_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
