"""Finding and loading a checkpoint in its released diffusers layout.

    model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (configuration only;
    the families that step a scheduler need it, see model.families)

``model`` is a built-in name (``nano``, shipped in the package: model.builtin), a local folder
or a Hugging Face hub id. Hub downloads use huggingface_hub's normal
cache (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE are honoured). Only unet/, vae/ and scheduler/ are
fetched and loaded on every start; text_encoder/ and tokenizer/ only when the empty-prompt
embedding is not cached yet (see prompt_cache). In half precision the checkpoint's ``fp16``
variant files are fetched and loaded when it has them (half the download, no rounding here).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MODEL_PARTS = ('unet', 'vae')
CONFIG_PARTS = ('scheduler',)     # small, configuration only; optional
FP16 = 'fp16'
TEXT_PARTS = ('text_encoder', 'tokenizer')


def how_to_supply(model: str | None = None) -> str:
    """The remedy sentence of every load error (names the hub id when there is one)."""
    hub_id = model if model and looks_like_hub_id(model) else '<hub-id>'
    return (
        'Supply the weights as a local folder in the released diffusers layout (model_index.json, '
        'unet/, vae/, text_encoder/, tokenizer/): on a connected machine run '
        f'`hf download {hub_id} --local-dir /models/fiffdepth` (older huggingface_hub: '
        f'`huggingface-cli download {hub_id} --local-dir /models/fiffdepth`), copy the folder to '
        'this machine and pass it as the model; or pre-fill the Hugging Face cache (HF_HOME) with '
        'that download and pass the hub id (HF_HUB_OFFLINE=1 works then).')


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found or loaded; the message names it and how to fix it."""


@dataclass
class Checkpoint:
    """A resolved checkpoint folder and a stable identity for the embedding cache."""

    root: Path
    identity: str            # changes when the text encoder or tokenizer changes
    source: str              # what the user asked for (path or hub id)
    hub_id: str | None = None
    cache_dir: str | None = None
    variant: str | None = None    # the weights variant fetched ('fp16') or None
    builtin: bool = False         # a built-in name (model.builtin), shipped in the package

    @property
    def name(self) -> str:
        """What the user calls it: the hub id, else the folder's name (family hints)."""
        if self.builtin:
            return self.source
        return self.hub_id or Path(self.source).expanduser().resolve().name

    @property
    def origin(self) -> str:
        """Where the weights came from, for log lines: built-in / hub / local folder."""
        if self.builtin:
            return f'built-in, {self.root}'
        if self.hub_id is not None:
            return f'hub {self.hub_id} @ {self.root.name[:12]}'
        return f'local folder {self.root.expanduser().resolve()}'

    def part(self, name: str) -> Path:
        return self.root / name

    def ensure_text_parts(self) -> None:
        """Make text_encoder/ and tokenizer/ available (downloads them for hub checkpoints)."""
        if not self._missing_text_parts():
            return
        if self.hub_id is not None:
            # Same commit as the UNet/VAE: the snapshot folder is named by it.
            self.root = _download(self.hub_id, self.cache_dir,
                                  MODEL_PARTS + CONFIG_PARTS + TEXT_PARTS,
                                  revision=self.root.name, variant=self.variant)
        missing = self._missing_text_parts()    # offline, a snapshot may still lack them
        if missing:
            where = 'its Hugging Face cache snapshot' if self.hub_id else 'the folder'
            raise ModelLoadError(
                f"checkpoint '{self.source}' has no {' or '.join(p + '/' for p in missing)} "
                f'in {where}, needed once to compute the empty-prompt embedding. '
                f'{how_to_supply(self.source)}')

    def _missing_text_parts(self) -> list[str]:
        marker = {'text_encoder': ('config.json',),
                  'tokenizer': ('tokenizer_config.json', 'vocab.json', 'tokenizer.json')}
        return [p for p in TEXT_PARTS
                if not any((self.part(p) / name).is_file() for name in marker[p])]


def looks_like_hub_id(model: str) -> bool:
    parts = model.split('/')
    return (len(parts) == 2 and all(parts) and not model.startswith(('.', '~', '/'))
            and '\\' not in model)


def _offline() -> bool:
    from huggingface_hub import constants
    env = os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')
    return env or bool(constants.HF_HUB_OFFLINE)


# Files from_pretrained never reads here: other formats and precision/EMA variants (a
# diffusers repo often carries several copies of the UNet weights).
_UNUSED = ['*.msgpack', '*.h5', '*.onnx', '*.onnx_data', '*.ckpt', '*.pb', '*.fp16.*',
           '*.non_ema.*', '*.ema.*']


def has_variant(folder: Path, variant: str | None) -> bool:
    """``folder`` holds weights of ``variant`` (diffusers' name.<variant>.safetensors/.bin)."""
    return variant is not None and any(
        any(folder.glob(f'*.{variant}.{ext}')) for ext in ('safetensors', 'bin'))


def _download(hub_id: str, cache_dir: str | None, parts: tuple[str, ...],
              revision: str | None = None, variant: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    offline = _offline()

    def fetch(ignore: list[str], allow: list[str] | None = None) -> Path:
        # local_files_only as well: HF_HUB_OFFLINE set after huggingface_hub was imported counts.
        return Path(snapshot_download(
            repo_id=hub_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
            allow_patterns=['model_index.json'] + (allow or [f'{p}/*' for p in parts]),
            ignore_patterns=ignore))
    try:
        if variant is not None:
            # Half precision: the fp16 copies only (configs, tokenizer files and the variant's
            # weights), when every weighted part has one; else the full-precision files.
            allow = [f'{p}/{pattern}' for p in parts
                     for pattern in ('*.json', '*.txt', f'*.{variant}.safetensors')]
            root = fetch([], allow)
            if all(has_variant(root / p, variant) for p in parts if p in MODEL_PARTS):
                return root
        root = fetch(_UNUSED + ['*.bin'])          # safetensors only, when the repo has them
        weightless = [p for p in parts if p not in ('tokenizer',) + CONFIG_PARTS
                      and not any((root / p).glob('*.safetensors'))]
        if weightless and not offline:
            root = fetch(_UNUSED)                  # an older repo: pickled .bin weights
        return root
    except Exception as exc:   # offline and not cached, no such repo, auth, network
        if offline:
            why = 'it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set'
        else:
            first_line = str(exc).splitlines()[0] if str(exc) else ''
            why = f'{type(exc).__name__}: {first_line}'
        raise ModelLoadError(
            f"cannot get FiffDepth checkpoint '{hub_id}': there is no local folder of that name "
            f'and the Hugging Face hub did not provide it ({why}). {how_to_supply(hub_id)}'
        ) from exc


def _hash_large_file(h, path: Path, size: int, samples: int = 16, block: int = 1 << 16) -> None:
    """Size, mtime and 16 evenly spaced 64 KiB blocks: hashing a whole 1.4 GB text encoder on
    every start would cost seconds (minutes from an SD card); a retrained or replaced encoder
    differs in every block, and a touched file only costs one recomputation."""
    h.update(f'{size}:{path.stat().st_mtime_ns}'.encode())
    with path.open('rb') as f:
        for i in range(samples):
            f.seek((size - block) * i // (samples - 1))
            h.update(f.read(block))


def _text_identity(root: Path) -> str:
    """What the empty-prompt embedding depends on: the resolved folder and the text encoder's
    and tokenizer's files (small ones by their whole content, weights by a sampled hash)."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for part in TEXT_PARTS:
        for f in sorted((root / part).glob('*')):
            if not f.is_file():
                continue
            h.update(f'{part}/{f.name}'.encode())
            size = f.stat().st_size
            if size < 4 << 20:
                h.update(f.read_bytes())
            else:
                _hash_large_file(h, f, size)
    return 'local-' + h.hexdigest()[:24]


def resolve_checkpoint(model: str, cache_dir: str | None = None,
                       variant: str | None = None) -> Checkpoint:
    """Built-in name ('nano'), local folder or hub id -> Checkpoint with unet/ and vae/ present
    (ModelLoadError else).

    ``cache_dir`` is the Hugging Face hub cache (default: huggingface_hub's own); ``variant``
    ('fp16' in half precision) is fetched from the hub when the repository has it."""
    if not model:
        raise ModelLoadError(f'no FiffDepth checkpoint given. {how_to_supply()}')
    from .builtin import builtin_folder, is_builtin
    if is_builtin(model):                  # 'nano': shipped in the package (model.builtin)
        root = builtin_folder(model)
        _check_layout(root, model)
        return Checkpoint(root=root, identity=_text_identity(root), source=model, builtin=True)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"FiffDepth checkpoint '{model}' is a file; expected a folder "
                                 f'in the diffusers layout. {how_to_supply()}')
        _check_layout(path, model)
        return Checkpoint(root=path, identity=_text_identity(path), source=model)
    if not looks_like_hub_id(model):
        raise ModelLoadError(f"FiffDepth checkpoint folder '{model}' does not exist. "
                             f'{how_to_supply()}')
    root = _download(model, cache_dir, MODEL_PARTS + CONFIG_PARTS, variant=variant)
    _check_layout(root, model)
    # Snapshot folders are named by commit: repo + commit identifies the whole checkpoint.
    return Checkpoint(root=root, identity=f"hub-{model.replace('/', '--')}-{root.name}",
                      source=model, hub_id=model, cache_dir=cache_dir, variant=variant)


def _check_layout(root: Path, source: str) -> None:
    index = root / 'model_index.json'
    if not index.is_file():
        raise ModelLoadError(f"'{source}' is not a FiffDepth checkpoint in the diffusers layout: "
                             f'model_index.json is missing. {how_to_supply(source)}')
    try:
        json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{source}': model_index.json is unreadable ({exc}). "
                             f'{how_to_supply(source)}') from exc
    missing = [p for p in MODEL_PARTS if not (root / p / 'config.json').is_file()]
    if missing:
        raise ModelLoadError(f"checkpoint '{source}' lacks {', '.join(p + '/' for p in missing)} "
                             f'(with config.json and weights). {how_to_supply(source)}')


def _variant_for(folder: Path, dtype) -> str | None:
    """'fp16' when loading in half precision and the folder has fp16 files (the release's
    half-precision loading), else None (full-precision files, cast on load)."""
    import torch
    return FP16 if dtype == torch.float16 and has_variant(folder, FP16) else None


def load_unet_and_vae(checkpoint: Checkpoint, dtype=None, vae_dtype=None,
                      with_vae: bool = True):
    """The UNet (in ``dtype``) and VAE (in ``vae_dtype``, default ``dtype``; None when not
    ``with_vae``: both halves light, model.light) of the checkpoint, on the CPU (the estimator
    moves them); fp16 variant files preferred in half precision."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    vae_dtype = dtype if vae_dtype is None else vae_dtype
    unet_dir, vae_dir = checkpoint.part('unet'), checkpoint.part('vae')
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=dtype,
                                                    variant=_variant_for(unet_dir, dtype))
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=vae_dtype,
                                            variant=_variant_for(vae_dir, vae_dtype)
                                            ) if with_vae else None
    except Exception as exc:    # corrupt or incomplete weights, wrong architecture
        raise ModelLoadError(f"cannot load the UNet/VAE of checkpoint '{checkpoint.source}' "
                             f'({type(exc).__name__}: {exc}). {how_to_supply(checkpoint.source)}'
                             ) from exc
    return unet, vae
