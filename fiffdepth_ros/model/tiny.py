"""Tiny random checkpoints in each family's released layout, and the full-size SD2 architecture.

No weights can be downloaded in tests, CI or the demo: these build models with the exact on-disk
layout and module classes of a released checkpoint (so the real loading code runs), small enough
for a CPU. Their depth is meaningless.

Layouts (``family``):
  fiffdepth  model_index FiffDepthPipeline; 4-channel UNet; no scheduler (the release has none)
  e2e_ft     8-channel UNet; Marigold v1.0's DDIM scheduler configuration (v-prediction; the
             release forces trailing spacing); model_index MarigoldPipeline (fine-tuned from
             Marigold), so the folder's name (``*e2e-ft*``) tells it apart, as the hub ids do
  lotus_d    4-channel UNet with a 4-d projection class embedding; model_index LotusDPipeline
  marigold   8-channel UNet; model_index MarigoldDepthPipeline with its config (v1.1 style:
             trailing DDIM, v-prediction, 1 default step)
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


FAMILY_LAYOUTS = ('fiffdepth', 'e2e_ft', 'lotus_d', 'marigold')

# Stable Diffusion 2's noise schedule, as Marigold's checkpoints carry it.
_SD2_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                     beta_schedule='scaled_linear', clip_sample=False, set_alpha_to_one=False,
                     steps_offset=1, prediction_type='v_prediction')
_SCHEDULERS = {'e2e_ft': dict(_SD2_SCHEDULE, timestep_spacing='leading'),
               'lotus_d': dict(_SD2_SCHEDULE, timestep_spacing='leading',
                               prediction_type='sample'),
               'marigold': dict(_SD2_SCHEDULE, timestep_spacing='trailing')}
_PIPELINE_CLASS = {'fiffdepth': 'FiffDepthPipeline', 'e2e_ft': 'MarigoldPipeline',
                   'lotus_d': 'LotusDPipeline', 'marigold': 'MarigoldDepthPipeline'}


def unet_config(base: dict, family: str) -> dict:
    """The UNet configuration of ``family`` on top of a base (TINY_UNET or SD2_UNET)."""
    config = dict(base)
    if family in ('e2e_ft', 'marigold'):
        config['in_channels'] = 8                  # [image latent, depth latent]
    elif family == 'lotus_d':
        config.update(class_embed_type='projection', projection_class_embeddings_input_dim=4)
    return config


def _model_index(family: str = 'fiffdepth') -> dict:
    import diffusers
    index = {'_class_name': _PIPELINE_CLASS[family], '_diffusers_version': diffusers.__version__,
             'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL'],
             'text_encoder': ['transformers', 'CLIPTextModel'],
             'tokenizer': ['transformers', 'CLIPTokenizer']}
    if family in _SCHEDULERS:
        index['scheduler'] = ['diffusers', 'DDIMScheduler']
    if family == 'marigold':
        index.update(prediction_type='depth', scale_invariant=True, shift_invariant=True,
                     default_denoising_steps=1, default_processing_resolution=768)
    return index


def family_layout(family: str) -> tuple[dict, dict | None]:
    """(model_index, scheduler config or None) of ``family``'s layout, without writing files
    (the benchmark builds SD2-size modules in memory)."""
    config = None
    if family in _SCHEDULERS:
        from diffusers import DDIMScheduler
        config = dict(DDIMScheduler(**_SCHEDULERS[family]).config)
        config['_class_name'] = 'DDIMScheduler'
    return _model_index(family), config


def _write_scheduler(path: Path, family: str) -> None:
    if family in _SCHEDULERS:
        from diffusers import DDIMScheduler
        DDIMScheduler(**_SCHEDULERS[family]).save_pretrained(path / 'scheduler')


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


def build_tiny_checkpoint(path, seed: int = 0, family: str = 'fiffdepth') -> Path:
    """Write (or reuse) a tiny random checkpoint at ``path`` in ``family``'s released layout.

    A complete checkpoint already built there with the same seed and family is reused as it is
    (its identity, and so the embedding cache, stays the same)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if family not in FAMILY_LAYOUTS:
        raise ValueError(f'unknown family layout {family!r}: one of {FAMILY_LAYOUTS}')
    path = Path(path)
    stamp = str(seed) if family == 'fiffdepth' else f'{family}-{seed}'
    if _is_complete(path, stamp):
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    UNet2DConditionModel(**unet_config(TINY_UNET, family)).save_pretrained(path / 'unet')
    AutoencoderKL(**TINY_VAE).save_pretrained(path / 'vae')
    _write_text_parts(path, hidden_size=TINY_UNET['cross_attention_dim'], num_heads=4,
                      num_layers=2, intermediate_size=64)
    _write_scheduler(path, family)
    (path / 'model_index.json').write_text(json.dumps(_model_index(family), indent=2))
    (path / '.fiffdepth_tiny_seed').write_text(stamp)   # last: marks the build complete
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


def build_random_modules(unet_base: dict, vae_config: dict, seed: int = 0,
                         family: str = 'fiffdepth'):
    """(unet, vae, empty_embedding (1, 2, cross_attention_dim)) of the given architectures with
    random weights, fp32 on the CPU, the UNet laid out for ``family`` (8 input channels for
    e2e_ft/marigold, a class embedding for lotus_d); nothing written to disk.

    Modules are created on the meta device and materialised with a cheap uniform init: the
    default initialisation of SD2's 950M parameters takes minutes on a small CPU, for weights
    that are random anyway (a forward pass costs the same whatever the values)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    config = unet_config(unet_base, family)
    with torch.device('meta'):
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(**vae_config)
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae):
        module.to_empty(device='cpu')
        _random_init_(module, generator)
    embedding = torch.randn(1, 2, config['cross_attention_dim'], generator=generator) * 0.1
    return unet.eval(), vae.eval(), embedding


def build_sd2_modules(seed: int = 0, family: str = 'fiffdepth'):
    """Full-size SD2 UNet (~866M parameters) and VAE (~84M) with random weights, no download:
    ``build_random_modules`` of SD2_UNET / SD2_VAE (embedding (1, 2, 1024))."""
    return build_random_modules(SD2_UNET, SD2_VAE, seed, family)


def build_sd2_checkpoint(path, seed: int = 0, dtype=None, family: str = 'fiffdepth') -> Path:
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
    if family != 'fiffdepth':
        stamp_text += f'-{family}'
    if _is_complete(path, stamp_text):
        return path
    path.mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as diffusers_logging
    unet, vae, _ = build_sd2_modules(seed, family)
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
    _write_scheduler(path, family)
    (path / 'model_index.json').write_text(json.dumps(_model_index(family), indent=2))
    (path / '.fiffdepth_tiny_seed').write_text(stamp_text)
    return path
