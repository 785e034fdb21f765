"""Tiny random FiffDepth checkpoints in the released layout, and the full-size SD2 architecture.

No weights can be downloaded in tests, CI or the demo: these build models with the exact on-disk
layout and module classes of a released checkpoint (so the real loading code runs), small enough
for a CPU. Their depth is meaningless.
"""
from __future__ import annotations

import json
from pathlib import Path

# The byte-level alphabet of CLIP's BPE tokenizer (bytes_to_unicode).
def _byte_alphabet() -> list[str]:
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) \
        + list(range(ord('®'), ord('ÿ') + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                 attention_head_dim=4, use_linear_projection=True,
                 down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                 up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
# Four VAE levels like SD2 (8x downsampling), so latents have realistic sizes.
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(8, 8, 16, 16), norm_num_groups=8, sample_size=64,
                scaling_factor=0.18215, down_block_types=('DownEncoderBlock2D',) * 4,
                up_block_types=('UpDecoderBlock2D',) * 4)

# Stable Diffusion 2 (stabilityai/stable-diffusion-2) UNet and VAE configurations.
SD2_UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
                down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                                  'CrossAttnDownBlock2D', 'DownBlock2D'),
                up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                                'CrossAttnUpBlock2D'))
SD2_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=768,
               scaling_factor=0.18215,
               down_block_types=('DownEncoderBlock2D',) * 4,
               up_block_types=('UpDecoderBlock2D',) * 4)
SD2_TEXT_DIM = 1024


def _write_tokenizer(folder: Path, max_length: int = 77) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + '</w>': len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab['<|startoftext|>'] = len(vocab)
    vocab['<|endoftext|>'] = len(vocab)
    (folder / 'vocab.json').write_text(json.dumps(vocab))
    (folder / 'merges.txt').write_text('#version: 0.2\n')
    (folder / 'tokenizer_config.json').write_text(json.dumps({
        'tokenizer_class': 'CLIPTokenizer', 'model_max_length': max_length,
        'bos_token': '<|startoftext|>', 'eos_token': '<|endoftext|>',
        'unk_token': '<|endoftext|>', 'pad_token': '<|endoftext|>'}))
    (folder / 'special_tokens_map.json').write_text(json.dumps({
        'bos_token': '<|startoftext|>', 'eos_token': '<|endoftext|>',
        'unk_token': '<|endoftext|>', 'pad_token': '<|endoftext|>'}))


def _model_index() -> dict:
    import diffusers
    return {'_class_name': 'FiffDepthPipeline', '_diffusers_version': diffusers.__version__,
            'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL'],
            'text_encoder': ['transformers', 'CLIPTextModel'],
            'tokenizer': ['transformers', 'CLIPTokenizer']}


# Files a complete checkpoint of ours has (weights are checked separately: any *.safetensors).
_REQUIRED_FILES = ('model_index.json', 'unet/config.json', 'vae/config.json',
                   'text_encoder/config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt',
                   'tokenizer/tokenizer_config.json')


def _is_complete(path: Path, stamp_text: str) -> bool:
    stamp = path / '.fiffdepth_tiny_seed'
    return (stamp.is_file() and stamp.read_text() == stamp_text
            and all((path / f).is_file() for f in _REQUIRED_FILES)
            and all(any((path / part).glob('*.safetensors'))
                    for part in ('unet', 'vae', 'text_encoder')))


def _write_text_parts(path: Path, hidden_size: int, num_heads: int, num_layers: int,
                      intermediate_size: int) -> None:
    """tokenizer/ and a small random CLIP text encoder/ whose embedding has ``hidden_size``."""
    from transformers import CLIPTextConfig, CLIPTextModel
    _write_tokenizer(path / 'tokenizer')
    vocab_size = len(json.loads((path / 'tokenizer' / 'vocab.json').read_text()))
    text_config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                                 intermediate_size=intermediate_size,
                                 num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                 max_position_embeddings=77, bos_token_id=vocab_size - 2,
                                 eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    CLIPTextModel(text_config).save_pretrained(path / 'text_encoder')


def build_tiny_checkpoint(path, seed: int = 0) -> Path:
    """Write (or reuse) a tiny random checkpoint at ``path`` in the released layout.

    A complete checkpoint already built there with the same seed is reused as it is (its
    identity, and so the embedding cache, stays the same)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(path)
    if _is_complete(path, str(seed)):
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    UNet2DConditionModel(**TINY_UNET).save_pretrained(path / 'unet')
    AutoencoderKL(**TINY_VAE).save_pretrained(path / 'vae')
    _write_text_parts(path, hidden_size=TINY_UNET['cross_attention_dim'], num_heads=4,
                      num_layers=2, intermediate_size=64)
    (path / 'model_index.json').write_text(json.dumps(_model_index(), indent=2))
    (path / '.fiffdepth_tiny_seed').write_text(str(seed))   # last: marks the build complete
    return path


def _random_init_(module, generator) -> None:
    """Cheap random init of a freshly materialised module: fan-in scaled uniform weights (the
    variance of the usual init, so activations stay finite), unit norm scales, zero biases."""
    import torch
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('weight') and param.ndim > 1:
                bound = (3.0 / param[0].numel()) ** 0.5
                param.uniform_(-bound, bound, generator=generator)
            elif 'norm' in name and name.endswith('weight'):
                param.fill_(1.0)
            else:
                param.zero_()
        for buffer in module.buffers():
            buffer.zero_()


def build_sd2_modules(seed: int = 0):
    """Full-size SD2 UNet (~866M parameters) and VAE (~84M) with random weights, no download.

    Modules are created on the meta device and materialised with a cheap uniform init: the
    default initialisation of 950M parameters takes minutes on a small CPU, for weights that are
    random anyway (a forward pass costs the same whatever the values). Returns
    (unet, vae, empty_embedding of shape (1, 77, 1024)), fp32 on the CPU.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    with torch.device('meta'):
        unet = UNet2DConditionModel(**SD2_UNET)
        vae = AutoencoderKL(**SD2_VAE)
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae):
        module.to_empty(device='cpu')
        _random_init_(module, generator)
    embedding = torch.randn(1, 77, SD2_TEXT_DIM, generator=generator) * 0.1
    return unet.eval(), vae.eval(), embedding


def build_sd2_checkpoint(path, seed: int = 0, dtype=None) -> Path:
    """Write (or reuse) a checkpoint with the full-size SD2 UNet and VAE (random weights) in the
    released layout at ``path``, for benchmarks that load through ``DepthEstimator``.

    The weights are stored in ``dtype`` (default float16: 1.9 GB instead of 3.8 GB on disk;
    loading in fp32 upcasts them). The text encoder is a one-layer CLIP text model with SD2's
    embedding width (1024): it runs once per checkpoint (the embedding is cached), so its size
    does not matter for throughput. Takes about 10-20 s on a small CPU.
    """
    import torch
    path = Path(path)
    dtype = torch.float16 if dtype is None else dtype
    stamp_text = f'sd2-{seed}-{str(dtype).removeprefix("torch.")}'
    if _is_complete(path, stamp_text):
        return path
    path.mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as diffusers_logging
    unet, vae, _ = build_sd2_modules(seed)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()   # .to(fp16) warns about a list of no modules
    try:
        unet.to(dtype).save_pretrained(path / 'unet')
        del unet
        vae.to(dtype).save_pretrained(path / 'vae')
    finally:
        diffusers_logging.set_verbosity(verbosity)
    torch.manual_seed(seed)
    _write_text_parts(path, hidden_size=SD2_TEXT_DIM, num_heads=16, num_layers=1,
                      intermediate_size=4 * SD2_TEXT_DIM)
    (path / 'model_index.json').write_text(json.dumps(_model_index(), indent=2))
    (path / '.fiffdepth_tiny_seed').write_text(stamp_text)
    return path
