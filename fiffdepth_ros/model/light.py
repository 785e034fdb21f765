"""Light autoencoder parts: a small depth decoder and a small image encoder beside a model's VAE.

In a single-pass depth model the UNet is the small part: at 480x640 the SD2 VAE encoder and
decoder cost ~4.3 of the frame's ~5.2 TFLOPs. A model folder may therefore carry two more
components, distilled from the model itself by ``fiffdepth-train`` (stage ``light_autoencoder``,
training/stages/light_autoencoder.py) and loaded like ``unet/`` and ``vae/``:

    light_decoder/   config.json, diffusion_pytorch_model.safetensors, distillation.json
                     depth latent -> the model's relative output (B, 1, 8h, 8w) in [0, 1]: what
                     the engine's decode gives, the family's post-decode steps (channel mean,
                     clipping) included; per-prediction normalisation (E2E-FT) and the resize
                     back stay in postprocess
    light_encoder/   the same files; image in [-1, 1] -> the full encoder's scaled latent mean

Both are built from diffusers' TAESD blocks (EncoderTiny / DecoderTiny, the layers of
AutoencoderTiny; ~1.2M parameters per half at the default width 64) and save / load with
``save_pretrained`` / ``from_pretrained``. ``distillation.json`` says what a part was distilled
on (the teacher's folder, family, a fingerprint of its UNet and VAE weights, data, steps, losses);
a part whose fingerprint does not match the model it is loaded with is used with a warning.

The engine uses them on request (``autoencoder``: full | light | light_encoder | light_decoder).
A downloaded TAESD (a diffusers AutoencoderTiny folder, e.g. madebyollin/taesd for SD1/SD2
latents) can stand in for both halves (``light_path``): its decoder gives RGB, so the family's
own post-decode step turns it into depth, as with the full VAE.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderTiny, EncoderTiny
from diffusers.models.modeling_utils import ModelMixin

from .checkpoint import ModelLoadError

log = logging.getLogger(__name__)

AUTOENCODER_CHOICES = ('full', 'light', 'light_encoder', 'light_decoder')
LIGHT_DECODER, LIGHT_ENCODER = 'light_decoder', 'light_encoder'
RECORD = 'distillation.json'
RECORD_FORMAT = 'fiffdepth-light-autoencoder-v1'


def wanted_parts(autoencoder: str) -> tuple[bool, bool]:
    """(light encoder?, light decoder?) of an ``autoencoder`` choice (ValueError if unknown)."""
    if autoencoder not in AUTOENCODER_CHOICES:
        raise ValueError(f"autoencoder must be one of {', '.join(AUTOENCODER_CHOICES)}, "
                         f"got '{autoencoder}'")
    return (autoencoder in ('light', 'light_encoder'),
            autoencoder in ('light', 'light_decoder'))


class LightDecoder(ModelMixin, ConfigMixin):
    """Depth latent (the engine's scaled latent) -> relative output, one channel.

    ``forward`` returns the raw map (B, 1, 8h, 8w), [0, 1] being the valid range (training
    takes its loss there, unclipped); ``decode_depth`` clips it, as the engine does.
    ``latent_scale`` multiplies the latent first (set at distillation to 1 / the depth latents'
    standard deviation, so that DecoderTiny's soft clamp at +-3 sits at three sigma)."""

    outputs_depth = True

    @register_to_config
    def __init__(self, latent_channels: int = 4, out_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                 num_blocks: tuple[int, ...] = (3, 3, 3, 1), act_fn: str = 'relu',
                 upsample_fn: str = 'nearest', latent_scale: float = 1.0):
        super().__init__()
        if len(set(block_out_channels)) != 1:
            # DecoderTiny's upsampling convolutions keep the width: one width for all levels.
            raise ValueError(f'block_out_channels must be one width repeated, got '
                             f'{list(block_out_channels)}')
        if len(block_out_channels) != len(num_blocks):
            raise ValueError('block_out_channels and num_blocks must have the same length')
        self.decoder = DecoderTiny(in_channels=latent_channels, out_channels=out_channels,
                                   num_blocks=tuple(num_blocks),
                                   block_out_channels=tuple(block_out_channels),
                                   upsampling_scaling_factor=2, act_fn=act_fn,
                                   upsample_fn=upsample_fn)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        # DecoderTiny ends in x * 2 - 1 (its [-1, 1] image convention): back to [0, 1] units.
        return (self.decoder(latent * self.config.latent_scale) + 1.0) * 0.5

    def decode_depth(self, latent: torch.Tensor) -> torch.Tensor:
        return self(latent).float().clamp(0.0, 1.0)


class LightEncoder(ModelMixin, ConfigMixin):
    """Image (B, 3, H, W) in [-1, 1] -> the full encoder's scaled latent mean (B, 4, H/8, W/8).

    The input is cropped to a multiple of the downsampling factor first, so the latent has the
    full encoder's size (floor(H / 8)) and its cells cover the same pixels (DecoderTiny's
    strided convolutions alone would give ceil(H / 8)). ``output_scale`` multiplies the
    network's output (set at distillation to the target latents' standard deviation)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 4,
                 block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                 num_blocks: tuple[int, ...] = (1, 3, 3, 3), act_fn: str = 'relu',
                 output_scale: float = 1.0):
        super().__init__()
        if len(block_out_channels) != len(num_blocks):
            raise ValueError('block_out_channels and num_blocks must have the same length')
        self.encoder = EncoderTiny(in_channels=in_channels, out_channels=latent_channels,
                                   num_blocks=tuple(num_blocks),
                                   block_out_channels=tuple(block_out_channels), act_fn=act_fn)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.downsampling
        h, w = pixels.shape[-2:]
        # Unconditional (a no-op on multiples of f), so an exported graph records the crop for
        # every size; the engine pads anything below f first, so h, w >= f.
        pixels = pixels[..., :h - h % f, :w - w % f]
        return self.encoder(pixels) * self.config.output_scale


class TaesdDecoder(torch.nn.Module):
    """The decoder of a downloaded TAESD (diffusers AutoencoderTiny): latent -> RGB in [-1, 1];
    the engine applies the family's post-decode step (``outputs_depth`` False)."""

    outputs_depth = False

    def __init__(self, taesd):
        super().__init__()
        self.decoder = taesd.decoder
        self.downsampling = 2 ** (len(taesd.config.decoder_block_out_channels) - 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)


class TaesdEncoder(torch.nn.Module):
    """The encoder of a downloaded TAESD: image in [-1, 1] -> SD's scaled latent (TAESD's own
    latent space; AutoencoderTiny's scaling_factor is 1)."""

    def __init__(self, taesd):
        super().__init__()
        self.encoder = taesd.encoder
        self.downsampling = 2 ** (len(taesd.config.encoder_block_out_channels) - 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.downsampling
        h, w = pixels.shape[-2:]
        if h % f or w % f:
            pixels = pixels[..., :max(f, h - h % f), :max(f, w - w % f)]
        return self.encoder(pixels)


# ---------------------------------------------------------------------- provenance
def model_fingerprint(root) -> str:
    """What the light parts were distilled from: the UNet's and VAE's configs and weights
    (size, and 16 sampled 64 KiB blocks of each weights file: a retrained model differs in
    every block; hashing a 3.5 GB UNet whole would cost seconds)."""
    root = Path(root)
    h = hashlib.sha256()
    for part in ('unet', 'vae'):
        for f in sorted((root / part).glob('*')):
            if not f.is_file() or f.suffix not in ('.json', '.safetensors', '.bin'):
                continue
            h.update(f'{part}/{f.name}'.encode())
            size = f.stat().st_size
            with f.open('rb') as fh:
                if size <= 1 << 20:
                    h.update(fh.read())
                    continue
                h.update(str(size).encode())
                block = 1 << 16
                for i in range(16):
                    fh.seek((size - block) * i // 15)
                    h.update(fh.read(block))
    return h.hexdigest()[:32]


def read_record(folder) -> dict:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_record(folder, record: dict) -> None:
    (Path(folder) / RECORD).write_text(json.dumps(
        {'format': RECORD_FORMAT, **record}, indent=1, default=str))


# ---------------------------------------------------------------------- loading
def _how_to_distil(source: str) -> str:
    return (f'Distil them for this model with `fiffdepth-train --config '
            f'config/light_autoencoder.yaml model.init={source} data.real.images=IMAGE_FOLDER` '
            '(README: Light autoencoder), give a downloaded TAESD folder (light_path), or use '
            'autoencoder: full.')


def _load(cls, folder: Path, dtype, what: str):
    try:
        return cls.from_pretrained(folder, torch_dtype=dtype)
    except Exception as exc:        # corrupt weights, a config of another class
        raise ModelLoadError(f'cannot load the {what} in {folder} ({type(exc).__name__}: '
                             f'{exc})') from exc


def load_light_parts(root, source: str, autoencoder: str, dtype=None,
                     light_path: str = ''):
    """(light encoder or None, light decoder or None) for an ``autoencoder`` choice, from the
    model folder ``root`` (``light_encoder/``, ``light_decoder/``) or from ``light_path`` (a
    folder with those two parts, or a diffusers AutoencoderTiny / TAESD folder).

    One ModelLoadError naming every missing part and how to make them."""
    want_encoder, want_decoder = wanted_parts(autoencoder)
    if not (want_encoder or want_decoder):
        return None, None
    base = Path(light_path).expanduser() if light_path else Path(root)
    if light_path and not base.is_dir():
        raise ModelLoadError(f"light_path '{light_path}' is not a folder (expected one with "
                             'light_decoder/ and light_encoder/, or a TAESD AutoencoderTiny '
                             'folder)')
    config = _read_config(base / 'config.json') if light_path else None
    if config is not None and config.get('_class_name') == 'AutoencoderTiny':
        from diffusers import AutoencoderTiny
        taesd = _load(AutoencoderTiny, base, dtype, 'TAESD (AutoencoderTiny)')
        return (TaesdEncoder(taesd) if want_encoder else None,
                TaesdDecoder(taesd) if want_decoder else None)
    wanted = [name for name, on in ((LIGHT_ENCODER, want_encoder), (LIGHT_DECODER, want_decoder))
              if on]
    missing = [name for name in wanted if not (base / name / 'config.json').is_file()]
    if missing:
        where = f"light_path '{light_path}'" if light_path else f"checkpoint '{source}'"
        raise ModelLoadError(
            f"autoencoder '{autoencoder}' asked for, but {where} has no "
            f"{' and no '.join(m + '/' for m in missing)} ({base}). {_how_to_distil(source)}")
    fingerprint = model_fingerprint(root)
    parts = {}
    for name, cls in ((LIGHT_ENCODER, LightEncoder), (LIGHT_DECODER, LightDecoder)):
        if name not in wanted:
            continue
        parts[name] = _load(cls, base / name, dtype, name)
        teacher = read_record(base / name).get('teacher', {})
        if teacher.get('fingerprint') not in (None, fingerprint):
            log.warning("%s in %s was distilled from another model (%s) than '%s': its output "
                        'will not match this model; distil it again', name, base,
                        teacher.get('source', '?'), source)
    return parts.get(LIGHT_ENCODER), parts.get(LIGHT_DECODER)


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
