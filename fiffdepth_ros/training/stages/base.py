"""What a training stage supplies to the shared trainer (loop.py): which module it trains, its
loss on a collated micro-batch, its validation and its export. Everything else (accelerate,
the data plan, optimiser, schedule, EMA, checkpoints, logging) is the trainer's."""
from __future__ import annotations

import json
from pathlib import Path

import torch


class Stage:
    name = ''
    trains = 'unet'            # the trainer attribute that holds the trained (prepared) module
    needs_depth = True         # False: the stage reads images only (depth and labels ignored)
    needs_labels = True        # False: data.real may be images alone (no pseudo_labels)

    def init_root(self, cfg: dict) -> Path | None:
        """The checked initial checkpoint folder, or None for a stage that starts from scratch."""
        from ..init_checkpoint import resolve_init_checkpoint
        return resolve_init_checkpoint(cfg['model']['init'])

    def build(self, trainer) -> torch.nn.Module:
        """Load the frozen parts onto ``trainer`` and return the module to train (fp32)."""
        raise NotImplementedError

    def loss(self, trainer, batch: dict) -> dict:
        """Scalar loss terms of one micro-batch; 'loss' is the one back-propagated."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, trainer, model) -> dict:
        return {}

    def export(self, trainer, model, out_dir: Path) -> Path:
        raise NotImplementedError


def images_of(batch: dict) -> torch.Tensor:
    """All images of a micro-batch (synthetic and real parts), (B, 3, H, W) in [-1, 1]."""
    parts = [batch[k]['rgb'] for k in ('syn', 'real') if k in batch]
    if len(parts) == 2 and parts[0].shape[-2:] != parts[1].shape[-2:]:
        raise ValueError(f'synthetic and real images differ in size ({tuple(parts[0].shape)} vs '
                         f'{tuple(parts[1].shape)}): give both the same resize_to_hw')
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def seeds_of(batch: dict) -> torch.Tensor:
    return torch.cat([batch[k]['seed'] for k in ('syn', 'real') if k in batch])


def sd2_model_index() -> dict:
    """model_index.json of an SD2-layout generator checkpoint (what stabilityai ships)."""
    import diffusers
    return {'_class_name': 'StableDiffusionPipeline', '_diffusers_version': diffusers.__version__,
            'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL'],
            'text_encoder': ['transformers', 'CLIPTextModel'],
            'tokenizer': ['transformers', 'CLIPTokenizer'],
            'scheduler': ['diffusers', 'DDPMScheduler'],
            'safety_checker': [None, None], 'feature_extractor': [None, None],
            'requires_safety_checker': False}


def write_sd2_index(out_dir: Path) -> None:
    (Path(out_dir) / 'model_index.json').write_text(json.dumps(sd2_model_index(), indent=2))
