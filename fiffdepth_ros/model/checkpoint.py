"""Finding and loading a FiffDepth checkpoint in its released diffusers layout.

    model_index.json, unet/, vae/, text_encoder/, tokenizer/ (scheduler/ is not needed)

``model`` is a local folder or a Hugging Face hub id. Hub downloads use huggingface_hub's normal
cache (HF_HOME, HF_HUB_OFFLINE are honoured). The text encoder is fetched and loaded only when
the empty-prompt embedding is not cached yet (see prompt_cache).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MODEL_PARTS = ('unet', 'vae')
TEXT_PARTS = ('text_encoder', 'tokenizer')

HOW_TO_SUPPLY = (
    'Supply weights as a local folder in the released diffusers layout (model_index.json, unet/, '
    'vae/, text_encoder/, tokenizer/): on a connected machine run '
    '`huggingface-cli download <hub-id> --local-dir /models/fiffdepth`, copy the folder to the '
    'robot and set the model parameter to it; or pre-fill the Hugging Face cache (HF_HOME) and '
    'pass the hub id with HF_HUB_OFFLINE=1.')


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found or loaded; the message names it and how to fix it."""


@dataclass
class Checkpoint:
    """A resolved checkpoint folder and a stable identity for caches."""

    root: Path
    identity: str            # changes when the checkpoint changes
    source: str              # what the user asked for (path or hub id)
    hub_id: str | None = None
    cache_dir: str | None = None

    def part(self, name: str) -> Path:
        return self.root / name

    def ensure_text_parts(self) -> None:
        """Make text_encoder/ and tokenizer/ available (downloads them for hub checkpoints)."""
        missing = [p for p in TEXT_PARTS if not self.part(p).is_dir()]
        if not missing:
            return
        if self.hub_id is None:
            raise ModelLoadError(
                f"checkpoint '{self.source}' has no {' or '.join(missing)} folder, needed once to "
                f'compute the empty-prompt embedding. {HOW_TO_SUPPLY}')
        self.root = _download(self.hub_id, self.cache_dir, MODEL_PARTS + TEXT_PARTS)


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split('/')
    return (len(parts) == 2 and all(parts) and not model.startswith(('.', '~', '/'))
            and os.sep not in model.replace('/', ''))


def _download(hub_id: str, cache_dir: str | None, parts: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download
    patterns = ['model_index.json'] + [f'{p}/*' for p in parts]
    try:
        return Path(snapshot_download(repo_id=hub_id, cache_dir=cache_dir,
                                      allow_patterns=patterns))
    except Exception as exc:   # offline, not in cache, no such repo, auth, network
        offline = os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes')
        why = 'it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set' if offline \
            else f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
        raise ModelLoadError(f"cannot get FiffDepth checkpoint '{hub_id}' from the Hugging Face "
                             f'hub ({why}). {HOW_TO_SUPPLY}') from exc


def _local_identity(root: Path) -> str:
    """Path, model_index.json and the UNet's weight files (name, size, mtime): cheap to compute
    at every start and different for any retrained or replaced checkpoint."""
    h = hashlib.sha256(str(root.resolve()).encode())
    h.update((root / 'model_index.json').read_bytes())
    for f in sorted((root / 'unet').glob('*')):
        stat = f.stat()
        h.update(f'{f.name}:{stat.st_size}:{stat.st_mtime_ns}'.encode())
    return 'local-' + h.hexdigest()[:24]


def resolve_checkpoint(model: str, cache_dir: str | None = None) -> Checkpoint:
    """Local folder or hub id -> Checkpoint with unet/ and vae/ present (ModelLoadError else)."""
    if not model:
        raise ModelLoadError(f'no FiffDepth checkpoint given. {HOW_TO_SUPPLY}')
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"FiffDepth checkpoint '{model}' is a file; expected a folder "
                                 f'in the diffusers layout. {HOW_TO_SUPPLY}')
        _check_layout(path, model)
        return Checkpoint(root=path, identity=_local_identity(path), source=model)
    if not _looks_like_hub_id(model):
        raise ModelLoadError(f"FiffDepth checkpoint folder '{model}' does not exist. "
                             f'{HOW_TO_SUPPLY}')
    root = _download(model, cache_dir, MODEL_PARTS)
    _check_layout(root, model)
    # Snapshot folders are named by commit: repo + commit identifies the weights.
    return Checkpoint(root=root, identity=f"hub-{model.replace('/', '--')}-{root.name}",
                      source=model, hub_id=model, cache_dir=cache_dir)


def _check_layout(root: Path, source: str) -> None:
    index = root / 'model_index.json'
    if not index.is_file():
        raise ModelLoadError(f"'{source}' is not a diffusers checkpoint: model_index.json is "
                             f'missing. {HOW_TO_SUPPLY}')
    try:
        json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{source}': model_index.json is unreadable ({exc})") from exc
    missing = [p for p in MODEL_PARTS if not (root / p / 'config.json').is_file()]
    if missing:
        raise ModelLoadError(f"checkpoint '{source}' lacks {', '.join(p + '/' for p in missing)} "
                             f'(with config.json and weights). {HOW_TO_SUPPLY}')


def load_unet_and_vae(checkpoint: Checkpoint, dtype=None):
    """The UNet and VAE of the checkpoint on the CPU in ``dtype`` (the estimator moves them)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    try:
        unet = UNet2DConditionModel.from_pretrained(checkpoint.part('unet'), torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(checkpoint.part('vae'), torch_dtype=dtype)
    except Exception as exc:    # corrupt or incomplete weights, wrong architecture
        raise ModelLoadError(f"cannot load the UNet/VAE of checkpoint '{checkpoint.source}' "
                             f'({type(exc).__name__}: {exc})') from exc
    return unet, vae
