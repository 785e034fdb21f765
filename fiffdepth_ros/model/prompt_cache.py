"""The empty-prompt text embedding, computed once per checkpoint and cached on disk.

FiffDepth conditions its UNet on the embedding of the empty prompt only, so the text encoder (the
largest part of an SD2 checkpoint after the UNet) is needed once: later starts read a small
safetensors file and never load or keep the encoder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .checkpoint import Checkpoint, ModelLoadError, how_to_supply

# How "" is tokenised: not padded (BOS, EOS: 2 tokens for CLIP), exactly as the released
# FiffDepth DirectPipeline, Marigold, E2E-FT and Lotus inference do; real weights were trained
# with this embedding. The mode and a format version are part of the cache file name, so an
# embedding cached by an older version (77 tokens, padding='max_length') is never reused.
EMPTY_PROMPT_PADDING = 'do_not_pad'
CACHE_FORMAT = 'v2'


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else $FIFFDEPTH_CACHE, else ~/.cache/fiffdepth_ros."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get('FIFFDEPTH_CACHE')
    return Path(env) if env else Path.home() / '.cache' / 'fiffdepth_ros'


def embedding_path(checkpoint: Checkpoint, cache_dir=None) -> Path:
    """One small safetensors file per checkpoint identity (see checkpoint._text_identity)."""
    name = f'{checkpoint.identity}-{EMPTY_PROMPT_PADDING}-{CACHE_FORMAT}.safetensors'
    return cache_root(cache_dir) / 'empty_prompt' / name


def compute_empty_embedding(checkpoint: Checkpoint):
    """Tokenise "" without padding (2 tokens) and run the text encoder: (1, 2, D) float32.

    An ordinary tensor (computed under ``no_grad``, not ``inference_mode``), the same kind as one
    read back from the cache: the trainer feeds it to a UNet whose autograd saves it for
    backward, which an inference tensor refuses. So a first run on a new machine (nothing
    cached) and a later one (read from the cache) train alike."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer
    checkpoint.ensure_text_parts()
    try:
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint.part('tokenizer'))
        encoder = CLIPTextModel.from_pretrained(checkpoint.part('text_encoder'))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the text encoder/tokenizer of '{checkpoint.source}' "
                             f'({type(exc).__name__}: {exc}). {how_to_supply(checkpoint.source)}'
                             ) from exc
    # SD2's tokenizer says 77; a tokenizer_config without model_max_length reports a huge
    # sentinel, so never exceed what the encoder's position table holds.
    max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
    tokens = tokenizer('', padding=EMPTY_PROMPT_PADDING, max_length=max_length, truncation=True,
                       return_tensors='pt')
    with torch.no_grad():
        embedding = encoder(tokens.input_ids)[0].float().contiguous()
    return embedding


def load_empty_embedding(checkpoint: Checkpoint, cache_dir=None):
    """(embedding, computed): from the cache when present, else computed and cached."""
    from safetensors.torch import load_file, save_file
    path = embedding_path(checkpoint, cache_dir)
    if path.is_file():
        try:
            return load_file(str(path))['embedding'], False
        except Exception:       # a damaged cache file is recomputed, not fatal
            pass
    embedding = compute_empty_embedding(checkpoint)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic replace: two nodes starting at once never read a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
        os.close(fd)
        save_file({'embedding': embedding}, tmp, metadata={'source': checkpoint.source})
        os.chmod(tmp, 0o644)    # mkstemp makes it private; other users' nodes may share it
        os.replace(tmp, path)
    except OSError:             # read-only cache: still works, just recomputed next start
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return embedding, True
