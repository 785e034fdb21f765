"""The trained model in the released FiffDepth layout (what ``DirectPipeline.from_pretrained``
of yunpeng1998/FiffDepth and this package's ``DepthEstimator.from_pretrained`` load):

    model_index.json (_class_name: DirectPipeline), unet/, vae/, text_encoder/, tokenizer/

The frozen parts are copied from the initial checkpoint unchanged; scheduler/ is copied
too (not listed in model_index.json: DirectPipeline does not take one), so the export is again an
SD2-layout checkpoint that training can start from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

FROZEN_PARTS = ('vae', 'text_encoder', 'tokenizer', 'scheduler')


def released_model_index(processing_res: int = 768, prediction_type: str = 'depth') -> dict:
    """The released DirectPipeline's model_index.json. ``prediction_type`` ('depth' or
    'disparity', Marigold's key and values) says what the decoded map is; the released
    DirectPipeline ignores keys its constructor does not take, so the folder stays loadable
    there (it would read a disparity model's output as depth: the key is for this package)."""
    import diffusers
    index = {'_class_name': 'DirectPipeline', '_diffusers_version': diffusers.__version__,
            'unet': ['diffusers', 'UNet2DConditionModel'],
            'vae': ['diffusers', 'AutoencoderKL'],
            'text_encoder': ['transformers', 'CLIPTextModel'],
            'tokenizer': ['transformers', 'CLIPTokenizer'],
            'scale_invariant': True, 'shift_invariant': True,
            'default_processing_resolution': int(processing_res)}
    if prediction_type != 'depth':
        index['prediction_type'] = prediction_type
    return index


def export_model(unet, init_root, out_dir, processing_res: int = 768,
                 prediction_type: str = 'depth') -> Path:
    """Write ``unet`` (the trained or EMA weights) with the initial checkpoint's frozen parts."""
    out = Path(out_dir)
    init_root = Path(init_root)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / 'unet', safe_serialization=True)
    for part in FROZEN_PARTS:
        src = init_root / part
        if src.is_dir() and src.resolve() != (out / part).resolve():
            shutil.copytree(src, out / part, dirs_exist_ok=True)
    (out / 'model_index.json').write_text(
        json.dumps(released_model_index(processing_res, prediction_type), indent=2))
    return out
