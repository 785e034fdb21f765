"""The checkpoint training starts from: any Stable Diffusion 2 layout (unet/, vae/,
text_encoder/, tokenizer/, scheduler/), e.g. stabilityai/stable-diffusion-2 or an E2E-FT or
FiffDepth model to fine-tune further. Checked before any weights are loaded."""
from __future__ import annotations

import json
from pathlib import Path

from ..model.checkpoint import looks_like_hub_id

PARTS = ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler')


class InitCheckpointError(ValueError):
    """The initial checkpoint is missing or not in the SD2 layout training needs."""


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(
            hub_id, allow_patterns=['model_index.json'] + [f'{p}/*' for p in PARTS],
            ignore_patterns=['*.ckpt', '*.msgpack', '*.h5', '*.onnx', '*.fp16.*', '*.bin']))
    except Exception as exc:
        raise InitCheckpointError(
            f"cannot get the initial checkpoint '{hub_id}' from the Hugging Face hub "
            f'({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}); '
            f'download it with `hf download {hub_id} --local-dir DIR` and set model.init=DIR'
        ) from exc


def _read_json(path: Path, source: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InitCheckpointError(f"initial checkpoint '{source}': {path.name} in "
                                  f'{path.parent.name}/ is unreadable ({exc})') from exc


def resolve_init_checkpoint(source: str) -> Path:
    """Local folder or hub id -> folder with the five SD2 parts; a clear error otherwise."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        if not looks_like_hub_id(str(source)):
            raise InitCheckpointError(f"initial checkpoint folder '{source}' does not exist")
        path = _download(str(source))
    if not path.is_dir():
        raise InitCheckpointError(f"initial checkpoint '{source}' is not a folder")
    missing = [p for p in PARTS if not (path / p).is_dir()]
    if not (path / 'model_index.json').is_file():
        missing.insert(0, 'model_index.json')
    if missing:
        raise InitCheckpointError(
            f"initial checkpoint '{source}' is not in the Stable Diffusion 2 layout: it lacks "
            f"{', '.join(p if p.endswith('.json') else p + '/' for p in missing)} (training "
            f"needs model_index.json, {', '.join(p + '/' for p in PARTS)})")
    unet = _read_json(path / 'unet' / 'config.json', source)
    if unet.get('in_channels') != 4 or unet.get('out_channels') != 4:
        raise InitCheckpointError(
            f"initial checkpoint '{source}': its UNet takes {unet.get('in_channels')} and gives "
            f"{unet.get('out_channels')} channels; FiffDepth trains a 4-in / 4-out SD2 UNet "
            f'(8-channel Marigold-style UNets do not fit)')
    if unet.get('class_embed_type') or unet.get('num_class_embeds'):
        raise InitCheckpointError(f"initial checkpoint '{source}': its UNet has a class "
                                  f'embedding (a Lotus-style model); FiffDepth needs a plain '
                                  f'SD2 UNet')
    _read_json(path / 'scheduler' / 'scheduler_config.json', source)
    _read_json(path / 'vae' / 'config.json', source)
    if not any((path / 'unet').glob('*.safetensors')) and not any((path / 'unet').glob('*.bin')):
        raise InitCheckpointError(f"initial checkpoint '{source}': unet/ has no weights")
    return path
