"""fiffdepth-train: turn a Stable Diffusion 2 checkpoint into a FiffDepth model.

    fiffdepth-train --config config/train_fiffdepth.yaml [key.sub=value ...] [--resume latest]
    accelerate launch --multi_gpu --num_processes 8 -m fiffdepth_ros.cli.train --config ...

Overrides use the configuration's dotted keys (train.max_steps=1000 data.root=/data). --check
validates the configuration, the data and the initial checkpoint, then stops.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='fiffdepth-train', description=__doc__.split('\n')[0])
    ap.add_argument('--config', help='training YAML (config/train_fiffdepth.yaml)')
    ap.add_argument('overrides', nargs='*', help='key.sub=value (YAML values)')
    ap.add_argument('--resume', help="'latest' or a checkpoint folder (output_dir/checkpoints/"
                                     "step-NNNNNNN)")
    ap.add_argument('--check', action='store_true',
                    help='check configuration, data and initial checkpoint, then exit')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from ..training.config import ConfigError, load_config
    from ..training.data.common import DataError
    from ..model.checkpoint import ModelLoadError
    from ..training.init_checkpoint import InitCheckpointError
    try:
        cfg = load_config(args.config, args.overrides)
        if args.check:
            from ..training.data.factory import build_training_data
            from ..training.stages import get_stage
            synthetic, _, real = build_training_data(
                cfg['data'], need_synthetic=int(cfg['train']['batch_size_synthetic']) > 0,
                need_real=int(cfg['train']['batch_size_real']) > 0,
                need_labels=get_stage(cfg['stage']).needs_labels)
            from ..training.data.factory import build_synthetic
            for spec in cfg['validation']['datasets']:
                build_synthetic(spec, cfg['data']['root'], cfg['data']['split_root']).check_files()
            root = get_stage(cfg['stage']).init_root(cfg)
            print(f"fiffdepth-train: ok: stage {cfg['stage']}, "
                  f'{sum(len(d) for d in synthetic)} synthetic samples, '
                  f'{len(real) if real else 0} real images, initial checkpoint '
                  f"{root or 'none (from scratch)'}")
            return 0
        from ..training.loop import train
        out = train(cfg, resume=args.resume)
    except (ConfigError, DataError, InitCheckpointError, ModelLoadError) as exc:
        print(f'fiffdepth-train: error: {exc}', file=sys.stderr)
        return 2
    print(f'fiffdepth-train: model written to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
