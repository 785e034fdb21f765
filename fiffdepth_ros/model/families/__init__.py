"""The single-step diffusion depth families, and which one a checkpoint is.

Detection reads the checkpoint's own files, in this order:
  1. unet/config.json: in_channels (4: the image latent alone; 8: image latent + a depth
     latent) and a class embedding (Lotus' task switcher);
  2. model_index.json _class_name (a training script and the hub may save the same model under
     different pipeline names, so several names map to one family);
  3. scheduler/scheduler_config.json (LCMScheduler: Marigold-LCM);
  4. for what the files cannot tell -- E2E-FT and Marigold share one layout, Lotus-D depth and
     disparity too -- the checkpoint's name (hub id or folder: 'e2e-ft', 'disparity').
``model_family`` overrides detection; it is still checked against the UNet's layout, so a
mismatch is one clear error instead of a channel-count RuntimeError deep inside torch.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..checkpoint import Checkpoint, ModelLoadError
from .base import CheckpointInfo, Family
from .e2e_ft import E2EFT
from .fiffdepth import FiffDepth
from .lotus_d import LotusD, LotusDDisparity
from .marigold import Marigold

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in
                                     (FiffDepth, E2EFT, LotusD, LotusDDisparity, Marigold)}
FAMILY_CHOICES = ('auto',) + tuple(FAMILIES)
log = logging.getLogger(__name__)

# model_index.json _class_name values seen for each family's checkpoints.
PIPELINE_CLASSES = {
    'fiffdepth': ('FiffDepthPipeline', 'DirectPipeline'),
    'lotus_d': ('LotusDPipeline', 'DirectDiffusionPipeline'),
    'marigold': ('MarigoldDepthPipeline', 'MarigoldPipeline'),
}
UNSUPPORTED_CLASSES = {'LotusGPipeline': 'Lotus-G (multi-step generative Lotus)',
                       'MarigoldNormalsPipeline': 'Marigold normals',
                       'MarigoldIntrinsicsPipeline': 'Marigold intrinsics'}


def _read_json(path: Path, source: str, required: bool):
    if not path.is_file():
        if required:
            raise ModelLoadError(f"checkpoint '{source}' has no {path.parent.name}/{path.name}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"checkpoint '{source}': {path.parent.name}/{path.name} is "
                             f'unreadable ({exc})') from exc


def read_info(checkpoint: Checkpoint) -> CheckpointInfo:
    root = checkpoint.root
    return CheckpointInfo(
        root=root, name=checkpoint.name,
        unet_config=_read_json(root / 'unet' / 'config.json', checkpoint.source, True),
        model_index=_read_json(root / 'model_index.json', checkpoint.source, False) or {},
        scheduler_config=_read_json(root / 'scheduler' / 'scheduler_config.json',
                                    checkpoint.source, False))


def _class_family(pipeline_class: str) -> str | None:
    if 'e2e' in pipeline_class.lower():
        return 'e2e_ft'
    for family, names in PIPELINE_CLASSES.items():
        if pipeline_class in names:
            return family
    return None


def _name_hints(name: str) -> set[str]:
    lowered = name.lower()
    hints = set()
    if 'e2e-ft' in lowered or 'e2e_ft' in lowered or 'e2eft' in lowered:
        hints.add('e2e_ft')
    if 'disparity' in lowered:
        hints.add('disparity')
    return hints


def _layout_error(info: CheckpointInfo, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"checkpoint '{info.name}': {why}. Found: {info.summary()}. Supported: "
        f"{', '.join(FAMILIES)} (set model_family to choose one whose layout matches).")


def detect_family(info: CheckpointInfo) -> str:
    """The family name of a checkpoint (ModelLoadError naming what was found if unknown)."""
    if info.pipeline_class in UNSUPPORTED_CLASSES:
        raise _layout_error(info, f'{UNSUPPORTED_CLASSES[info.pipeline_class]} is not a '
                                  'supported single-step depth model')
    by_class = _class_family(info.pipeline_class)
    hints = _name_hints(info.name)
    channels, embed = info.in_channels, info.class_embed_type
    if channels == 4 and embed is None:
        family = 'fiffdepth'
    elif (channels == 4 and embed == 'projection'
          and info.unet_config.get('projection_class_embeddings_input_dim') == 4):
        family = 'lotus_d_disparity' if 'disparity' in hints else 'lotus_d'
        if family == 'lotus_d' and 'lotus-depth-d-v1' not in info.name.lower():
            # Depth and disparity checkpoints have identical files: a renamed disparity one
            # would be taken for depth (larger = farther) and fitted in the wrong space.
            log.warning("checkpoint '%s' is Lotus-D; its files cannot tell depth from "
                        "disparity and its name says neither 'disparity' nor "
                        "'lotus-depth-d-v1': taken as depth. Set model_family: "
                        'lotus_d_disparity if it predicts disparity.', info.name)
    elif channels == 8 and embed is None:
        if by_class == 'e2e_ft' or 'e2e_ft' in hints:
            family = 'e2e_ft'
        elif by_class == 'marigold' or info.scheduler_class == 'LCMScheduler':
            family = 'marigold'
            log.info("checkpoint '%s': an 8-channel %s without 'e2e-ft' in its name: run as "
                     'Marigold (set model_family: e2e_ft for an E2E-FT checkpoint)', info.name,
                     info.pipeline_class or 'UNet')
        else:
            raise _layout_error(info, 'an 8-channel UNet is E2E-FT or Marigold, and neither '
                                      'the pipeline class nor the name tells which')
    elif channels == 8:
        raise _layout_error(info, 'an 8-channel UNet with a class embedding is Lotus-G, a '
                                  'multi-step model this engine does not run')
    else:
        raise _layout_error(info, 'no supported family has this UNet layout')
    if by_class is not None and by_class != family.removesuffix('_disparity') \
            and not (by_class == 'marigold' and family == 'e2e_ft'):
        # (E2E-FT checkpoints are fine-tuned Marigold ones and may keep Marigold's class.)
        raise _layout_error(info, f'model_index.json names a {by_class} pipeline but the UNet '
                                  f'is laid out for {family}')
    return family


def check_layout(info: CheckpointInfo, family: str) -> None:
    """An explicitly chosen family must match the UNet it will be fed to."""
    cls = FAMILIES[family]
    if info.in_channels != cls.unet_in_channels:
        raise _layout_error(info, f'{family} needs a UNet with {cls.unet_in_channels} input '
                                  f'channels')
    if cls.class_embedding != (info.class_embed_type is not None):
        need = 'needs' if cls.class_embedding else 'takes no'
        raise _layout_error(info, f'{family} {need} a class embedding')
    if cls.needs_scheduler and info.scheduler_config is None:
        raise ModelLoadError(f"checkpoint '{info.name}': {family} needs "
                             'scheduler/scheduler_config.json, which is missing')


def make_family(info: CheckpointInfo, model_family: str = 'auto', **options) -> Family:
    if model_family not in FAMILY_CHOICES:
        raise ValueError(f"unknown model_family '{model_family}': expected one of "
                         f"{', '.join(FAMILY_CHOICES)}")
    family = detect_family(info) if model_family == 'auto' else model_family
    check_layout(info, family)
    cls = FAMILIES[family]
    return cls(info, **options) if cls is Marigold else cls(info)
