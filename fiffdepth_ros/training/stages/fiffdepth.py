"""stage: fiffdepth -- the FiffDepth transformation (step.py's three uses of the UNet), validated
with the evaluation's alignment and metrics, exported in the released DirectPipeline layout."""
from __future__ import annotations

import torch

from ..export import export_model
from ..step import MethodSettings, build_inputs, fiffdepth_loss
from .base import Stage
from .common import load_frozen_parts, load_trainable_unet


class FiffDepthStage(Stage):
    name = 'fiffdepth'
    trains = 'unet'

    def build(self, trainer):
        load_frozen_parts(trainer, trainer.init_root)
        trainer.settings = MethodSettings.from_config(trainer.cfg['method'],
                                                      trainer.prediction_type)
        return load_trainable_unet(trainer, trainer.init_root)

    def loss(self, trainer, batch):
        inputs = build_inputs(batch, trainer.vae, trainer.scaling_factor,
                              trainer.num_train_timesteps, trainer.cfg['method'],
                              trainer.accelerator.device)
        with trainer.accelerator.autocast():
            terms, _ = fiffdepth_loss(trainer.unet, trainer.embedding, trainer.alphas_cumprod,
                                      inputs, trainer.settings)
        return terms

    @torch.no_grad()
    def validate(self, trainer, unet):
        """AbsRel and delta1 after least-squares scale and shift (the evaluation's functions),
        the UNet run exactly as the engine runs it."""
        from ...evaluation.alignment import align_scale_shift
        from ...evaluation.metrics import compute_metrics, mean_metrics
        from ...model.stages import decode_latent, depth_from_decoded, encode_image, unet_pass
        results = {}
        space = trainer.cfg['method'].get('target_space', 'depth')    # the model's output
        limit = int(trainer.cfg['validation']['max_images'])
        for name, dataset in trainer.validation_sets:
            per_image = []
            for index in range(min(limit, len(dataset))):
                sample = dataset.load(index)
                pixels = sample['rgb'][None].to(trainer.accelerator.device, trainer.weight_dtype)
                latent = encode_image(trainer.vae, pixels, trainer.scaling_factor)
                with trainer.accelerator.autocast():
                    depth_latent = unet_pass(unet, latent, 0, trainer.embedding)
                decoded = decode_latent(trainer.vae, depth_latent.to(trainer.weight_dtype),
                                        trainer.scaling_factor)
                pred = depth_from_decoded(decoded.float())[0, 0].cpu().numpy()
                gt = sample['depth'][0].numpy()
                valid = sample['valid'][0].numpy()
                if valid.sum() < 2:
                    continue
                aligned = align_scale_shift(pred, gt, valid, space=space,
                                            min_depth=dataset.min_depth,
                                            max_depth=dataset.max_depth)
                per_image.append(compute_metrics(aligned, gt, valid))
            means = mean_metrics(per_image)
            for key in ('abs_rel', 'delta1'):
                if key in means:
                    results[f'val/{name}/{key}'] = means[key]
        return results

    def export(self, trainer, unet, out_dir):
        return export_model(
            unet, trainer.init_root, out_dir,
            processing_res=int(trainer.cfg['export']['default_processing_resolution']),
            prediction_type=trainer.cfg['method'].get('target_space', 'depth'))
