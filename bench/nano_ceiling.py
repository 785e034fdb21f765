"""What bounds a FiffDepth-style model on the procedural frames: its autoencoder, and the target.

    python bench/nano_ceiling.py [--model nano|DIR] [--frames 50] [--sizes 128x96,256x192]
                                 [--quantile 0.005] [--threads 1]

Held-out synthetic frames (the seeds bench/nano_quality.py scores, rendered at each size), AbsRel
/ delta1 after least-squares scale and shift (evaluation.alignment / evaluation.metrics) in the
model's output space (model_index.json prediction_type: depth, or disparity):
  target        the normalised training target itself (the quantile clipping's cost alone);
  ceiling       the target encoded and decoded by the model's VAE: what a perfect UNet would
                give (the latent the VAE encodes the true depth to);
  model t=0     the model's own single pass at that size (image latent -> UNet at t = 0);
  latent MAE    of that pass against the encoded target, beside predicting the target's mean;
and how costly an error in the target's units is here: Gaussian noise of sigma added to the
normalised depth target, or to a normalised disparity target aligned in disparity.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fiffdepth_ros.evaluation.alignment import align_scale_shift  # noqa: E402
from fiffdepth_ros.evaluation.metrics import compute_metrics, mean_metrics  # noqa: E402
from fiffdepth_ros.model.checkpoint import resolve_checkpoint  # noqa: E402
from fiffdepth_ros.model.prompt_cache import load_empty_embedding  # noqa: E402
from fiffdepth_ros.model.stages import (decode_latent, depth_from_decoded,  # noqa: E402
                                        encode_image, unet_pass)
from fiffdepth_ros.training.data import procedural  # noqa: E402
from fiffdepth_ros.training.targets import (encode_depth, normalized_target,  # noqa: E402
                                            quantile_normalize)

MAX_DEPTH = 80.0          # config/nano/base.yaml's max_depth for the procedural frames
NOISE = (0.01, 0.03, 0.1)


def scored(pred, gt, valid, space='depth') -> dict:
    return compute_metrics(align_scale_shift(pred, gt, valid, space=space, min_depth=1e-3,
                                             max_depth=MAX_DEPTH), gt, valid)


def load(model: str):
    """(vae, unet, scaling factor, empty-prompt embedding, output space) of a FiffDepth-layout
    checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from fiffdepth_ros.model.families import read_info
    from fiffdepth_ros.model.families.fiffdepth import FiffDepth
    checkpoint = resolve_checkpoint(model)
    space = FiffDepth(read_info(checkpoint)).output_space
    vae = AutoencoderKL.from_pretrained(checkpoint.root / 'vae').eval()
    unet = UNet2DConditionModel.from_pretrained(checkpoint.root / 'unet').eval()
    embedding, _ = load_empty_embedding(checkpoint)
    return vae, unet, vae.config.scaling_factor, embedding, space


def measure(parts, seeds, width, height, quantile) -> dict:
    vae, unet, sf, embedding, space = parts
    rows: dict[str, list] = {}
    mae, mae_mean = [], []
    for seed in seeds:
        f = procedural.render_frame(seed, 'synthetic', width, height)
        gt = np.where(f.valid, f.depth, 0).astype(np.float32)
        valid_t = torch.from_numpy(f.valid)[None, None]
        target = normalized_target(torch.from_numpy(gt)[None, None], valid_t, quantile, space)
        rgb = torch.from_numpy(f.rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            z_target = encode_depth(vae, target, sf)
            z_pred = unet_pass(unet, encode_image(vae, rgb, sf), 0, embedding)
            for name, z in (('ceiling', z_target), ('model t=0', z_pred)):
                decoded = depth_from_decoded(decode_latent(vae, z, sf))[0, 0].numpy()
                rows.setdefault(name, []).append(scored(decoded, gt, f.valid, space))
        mae.append(float((z_pred - z_target).abs().mean()))
        mae_mean.append(float((z_target - z_target.mean()).abs().mean()))
        norm = quantile_normalize(torch.from_numpy(gt)[None, None], valid_t,
                                  quantile)[0, 0].numpy()
        rows.setdefault('target', []).append(scored(target[0, 0].numpy() + (
            2.0 if space == 'disparity' else 0.0), gt, f.valid, space))
        inverse = np.where(f.valid, 1.0 / np.maximum(gt, 1e-3), 0.0).astype(np.float32)
        norm_inv = quantile_normalize(torch.from_numpy(inverse)[None, None], valid_t,
                                      quantile)[0, 0].numpy()
        rng = np.random.default_rng(seed)
        for sigma in NOISE:
            noise = rng.normal(0.0, sigma, norm.shape).astype(np.float32)
            rows.setdefault(f'depth + noise {sigma:g}', []).append(
                scored(norm + noise, gt, f.valid))
            # Shifted positive (the disparity alignment uses pixels where it is > 0); the fit
            # absorbs the shift.
            rows.setdefault(f'disparity + noise {sigma:g}', []).append(
                scored(norm_inv + noise + 2.0, gt, f.valid, space='disparity'))
    out = {name: mean_metrics(r) for name, r in rows.items()}
    out['latent MAE'] = (float(np.mean(mae)), float(np.mean(mae_mean)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='nano')
    ap.add_argument('--frames', type=int, default=50)
    ap.add_argument('--seed-offset', type=int, default=10000,
                    help="held-out seed offset (bench/nano_quality.py's default)")
    ap.add_argument('--sizes', default='128x96,256x192', help='WxH,... rendered sizes')
    ap.add_argument('--quantile', type=float, default=0.005,
                    help="target normalisation quantile (config/nano/base.yaml's)")
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = load(args.model)
    seeds = procedural.held_out_seeds(args.frames, args.seed_offset)
    print(f'# {args.model}: {args.frames} held-out synthetic frames (seeds {seeds.start}..'
          f'{seeds.stop - 1}), quantile {args.quantile:g}, AbsRel / delta1 after least-squares '
          f'alignment in {parts[-1]}')
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.lower().split('x'))
        result = measure(parts, seeds, width, height, args.quantile)
        pred_mae, mean_mae = result.pop('latent MAE')
        print(f'{width}x{height}: latent MAE of the t=0 pass {pred_mae:.3f} (predicting the '
              f"target's mean: {mean_mae:.3f})")
        for name, m in result.items():
            print(f"  {name:<24} {m['abs_rel']:.3f} / {m['delta1']:.3f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
