"""The inference engine of the single-step diffusion depth families (FiffDepth, E2E-FT,
Lotus-D, Marigold; see model.families).

Shared stages (each a method, used by the benchmark too); the family decides the marked steps:

  preprocess  RGB -> resize so the longer side is processing_res, the size being the release's
              float product int(side * (processing_res / longer_side)) (0 = native), antialiased
              bilinear; FiffDepth/E2E-FT round the resized image back to uint8 before
              /255*2-1 (torchvision resizes their uint8 tensor), Lotus normalises first and
              resizes in float [family]. No padding: diffusers' UNet takes any size; only a
              side below the VAE's downsampling factor is replicate-padded up to it.
  encode      VAE encoder + quant_conv, latent = mean x scaling_factor (0.18215 for SD2);
              or the light encoder (model.light, ``autoencoder: light|light_encoder``)
  unet        image latent -> depth latent: one UNet pass (with a scheduler step for
              E2E-FT) [family]
  decode      latent / scaling_factor -> post_quant_conv + decoder -> depth in [0, 1] [family];
              or the light decoder, distilled to give that depth directly
  postprocess crop any padding -> per-prediction normalisation [family] -> resize back to the
              input size (bilinear antialiased, or nearest-exact for Lotus) -> float32 HxW

Marigold runs diffusers' own MarigoldDepthPipeline instead of these stages.
Output: relative, affine-invariant depth (larger = farther), or disparity (larger = nearer)
where ``output_space == 'disparity'``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import stages
from .families import FAMILY_CHOICES, Family
from .families.base import DEFAULT_PROCESSING_RES
from .families.fiffdepth import FiffDepth
from .runtimes import Runtime, TorchRuntime

log = logging.getLogger(__name__)

DEFAULT_SCALING_FACTOR = 0.18215


def resolve_device(device: str) -> torch.device:
    if device in ('', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device '{device}' (use 'auto', 'cpu', 'cuda' or 'cuda:N')"
                         ) from exc
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available "
                         "(use 'auto' or 'cpu')")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == 'bf16':
        raise ValueError("precision 'bf16' runs an exported graph on OpenVINO's CPU plugin "
                         '(export with fiffdepth-export, then runtime openvino); the torch '
                         "engine takes 'auto', 'fp16' or 'fp32'")
    if precision not in ('auto', 'fp16', 'fp32'):
        raise ValueError(f"precision must be 'auto', 'fp16', 'fp32' or 'bf16' (OpenVINO on "
                         f"the CPU), got '{precision}'")
    if precision == 'fp32' or (precision == 'auto' and device.type != 'cuda'):
        return torch.float32
    if device.type != 'cuda':
        # Half-precision convolutions on CPU are slow or unsupported: fall back, say so.
        log.warning('fp16 requested on %s: using fp32 (fp16 is for CUDA)', device)
        return torch.float32
    return torch.float16


@dataclass
class Batch:
    """Preprocessed images and what postprocess needs to undo the resize and padding."""

    pixels: torch.Tensor          # (B, 3, H', W') in [-1, 1]
    input_size: tuple[int, int]   # (H, W) of the original images
    resized: tuple[int, int]      # (h, w) the model sees, before any padding
    padded: bool = False          # a side was padded up to the VAE's minimum


def as_rgb_uint8_or_float(image: np.ndarray) -> np.ndarray:
    """Validate an input image: HxW grey, HxWx3 RGB or HxWx4 RGBA; uint8 (0..255) or float
    (0..1). Returns an HxWxC view (float images as float32)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'expected a numpy image, got {type(image).__name__}')
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f'expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'empty image, shape {image.shape}')
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f'expected uint8 (0..255) or float (0..1) image data, got {image.dtype}')
    image = image.astype(np.float32, copy=False)
    # A float image in 0..255 (a common slip) would otherwise give a silently wrong depth map.
    lo, hi = float(image.min()), float(image.max())
    if not (lo >= -1e-3 and hi <= 1.0 + 1e-3):    # also false for NaN
        raise ValueError(f'float images must hold values in [0, 1], got [{lo:g}, {hi:g}]')
    return image


def _batch_key(image: np.ndarray) -> tuple:
    """Images with equal keys can share one tensor: same size, channels and uint8-ness."""
    return image.shape, image.dtype == np.uint8


def target_size(height: int, width: int, processing_res: int) -> tuple[int, int]:
    """(h, w) the model sees: longer side about processing_res (0: unchanged), aspect kept.

    Exactly the releases' resize_max_res: a float scale factor and int() of each product, so
    the longer side can come out one pixel short (1121 * (768 / 1121) is 767.99... in floating
    point: 1121x640 -> 767x438) -- kept, since the weights were trained and evaluated that
    way. Never a zero side."""
    if processing_res <= 0:
        return height, width
    factor = min(processing_res / width, processing_res / height)
    return max(1, int(height * factor)), max(1, int(width * factor))


class DepthEstimator:
    """Loaded once; ``predict`` / ``predict_batch`` per frame.

    ``family`` is the family's name, ``output_space`` 'depth' or 'disparity'; ``strategy`` the
    family object that runs the steps in which the families differ."""

    def __init__(self, unet, vae, empty_embedding: torch.Tensor, device='cpu',
                 precision='auto', processing_res: int = 768, upcast_vae: bool = False,
                 compile: bool = False, model_name: str = 'unnamed',
                 family: Family | None = None, runtime: Runtime | None = None,
                 light_encoder=None, light_decoder=None,
                 default_processing_res: int = DEFAULT_PROCESSING_RES):
        """``light_encoder`` / ``light_decoder`` (model.light) replace the VAE's halves; with
        both, ``vae`` may be None (not loaded at all). ``default_processing_res``: what a
        negative ``processing_res`` means (the model's own; from_pretrained reads it from the
        checkpoint's model_index.json or the export's metadata)."""
        self.default_processing_res = int(default_processing_res)
        self.strategy = family if family is not None else FiffDepth()
        # Where the pass runs (model.runtimes): the modules below (torch), or an exported
        # graph that owns its network (unet, vae and the embedding are then None).
        self.runtime = runtime if runtime is not None else TorchRuntime()
        self._warned_fixed_size = False
        if not self.runtime.uses_torch_modules:
            self._init_graph_runtime(processing_res, model_name)
            return
        self.device = resolve_device(str(device))
        self.dtype = resolve_dtype(precision, self.device)
        self.processing_res = processing_res
        self.model_name = model_name
        self.model_source = 'modules given in memory'   # from_pretrained: where it was found
        # A family running its own pipeline (Marigold) decodes in the VAE's one dtype.
        self.upcast_vae = (bool(upcast_vae) and self.dtype != torch.float32
                           and not self.strategy.own_pipeline)
        if (light_encoder is not None or light_decoder is not None) and self.strategy.own_pipeline:
            raise ValueError(f'the light autoencoder is for the single-pass families; '
                             f'{self.strategy.name} runs its own pipeline (autoencoder: full)')
        self.unet = self._prepare_module(unet, self.dtype)
        self.light_encoder = self._prepare_light(light_encoder)
        self.light_decoder = self._prepare_light(light_decoder)
        self.vae = self._prepare_vae(vae) if vae is not None else None
        self._decoder32 = self.upcast_vae and vae is not None   # decoder in fp32
        if self._decoder32:
            self._fp32_decoder()
        self.scaling_factor = float(getattr(getattr(vae, 'config', None), 'scaling_factor', None)
                                    or DEFAULT_SCALING_FACTOR)
        # Smallest side the VAE encoder takes (each downsampling halves it); below it, pad.
        self.min_side = (2 ** (len(vae.config.block_out_channels) - 1) if vae is not None
                         else max(p.downsampling for p in (light_encoder, light_decoder)))
        self._embedding = empty_embedding.to(self.device, self.dtype)
        self._embeddings: dict[int, torch.Tensor] = {}      # expanded per batch size
        self._warned_overflow = False
        if compile:
            # Compiled lazily on the first frame of each size (the first call is slow).
            self.unet = torch.compile(self.unet)
            if self.vae is not None:
                self.vae.encoder = torch.compile(self.vae.encoder)
                self.vae.decoder = torch.compile(self.vae.decoder)
            # (An fp32 re-decode after an fp16 overflow recompiles the decoder once.)
        self.strategy.prepare(self)

    def _init_graph_runtime(self, processing_res: int, model_name: str) -> None:
        """The shared state of an engine whose runtime runs an exported graph."""
        self.device = self.runtime.device
        self.dtype = torch.float32                 # the graph's input (fp16 inside if so)
        self.processing_res = processing_res
        self.model_name = model_name
        self.model_source = 'exported graph'
        self.upcast_vae = self._decoder32 = False
        self.min_side = self.runtime.min_side
        self.unet = self.vae = self.light_encoder = self.light_decoder = None

    @property
    def processing_res(self) -> int:
        """The longer side the model sees (0: native size). Set a negative value for the
        model's own (``default_processing_res``: model_index.json's
        default_processing_resolution, as diffusers' Marigold pipeline reads it, else 768)."""
        return self._processing_res

    @processing_res.setter
    def processing_res(self, value) -> None:
        value = -1 if value is None else int(value)
        self._processing_res = self.default_processing_res if value < 0 else value

    @property
    def family(self) -> str:
        return self.strategy.name

    @property
    def autoencoder(self) -> str:
        """Which halves run light: 'full', 'light', 'light_encoder' or 'light_decoder' (an
        exported graph: what it was exported with)."""
        if not self.runtime.uses_torch_modules:
            return self.runtime.info.autoencoder
        enc, dec = self.light_encoder is not None, self.light_decoder is not None
        return {(False, False): 'full', (True, True): 'light', (True, False): 'light_encoder',
                (False, True): 'light_decoder'}[(enc, dec)]

    @property
    def output_space(self) -> str:
        return self.strategy.output_space

    def _prepare_module(self, module, dtype=None):
        """Cast (before the move: less device memory), move, eval, channels_last, SDPA."""
        from diffusers.models.attention_processor import AttnProcessor2_0
        if dtype is not None and next(module.parameters()).dtype != dtype:
            module = module.to(dtype)
        module = module.to(self.device).eval().requires_grad_(False)
        module = module.to(memory_format=torch.channels_last)
        module.set_attn_processor(AttnProcessor2_0())     # PyTorch SDPA kernels
        return module

    def _prepare_light(self, module):
        """A light part (model.light): cast, move, eval, channels_last (no attention)."""
        if module is None:
            return None
        if next(module.parameters()).dtype != self.dtype:
            module = module.to(self.dtype)
        module = module.to(self.device).eval().requires_grad_(False)
        return module.to(memory_format=torch.channels_last)

    def _prepare_vae(self, vae):
        if not self.upcast_vae:
            return self._prepare_module(vae, self.dtype)
        # Encoder in half, decoder in fp32 from the weights as loaded (from_pretrained loads
        # the VAE in fp32 for this, so the decoder's weights are never rounded to fp16).
        vae.encoder.to(self.dtype)
        if vae.quant_conv is not None:
            vae.quant_conv.to(self.dtype)
        vae.decoder.float()
        if vae.post_quant_conv is not None:
            vae.post_quant_conv.float()
        return self._prepare_module(vae)

    def _fp32_decoder(self) -> None:
        # In place: the half decoder is never used again, so it must not stay in GPU memory.
        self.vae.decoder.float()
        if self.vae.post_quant_conv is not None:
            self.vae.post_quant_conv.float()
        self._decoder32 = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str, device: str = 'auto', precision: str = 'auto',
                        processing_res: int | None = -1, upcast_vae: bool = False,
                        compile: bool = False, cache_dir: str | None = None,
                        hub_cache_dir: str | None = None, model_family: str = 'auto',
                        denoising_steps: int = 0, ensemble_size: int = 1,
                        seed: int = 0, autoencoder: str = 'full',
                        light_path: str = '', runtime: str = 'auto',
                        providers=None) -> 'DepthEstimator':
        """Load a checkpoint (built-in name such as 'nano', local folder or hub id in its released
        diffusers layout).

        device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        precision: 'auto' (fp16 on CUDA, fp32 on CPU), 'fp16' or 'fp32'; fp16 on the CPU is
            mapped to fp32 with a warning (half-precision CPU convolutions are slow or missing).
            In fp16 the checkpoint's fp16 variant files are loaded when it has them.
        processing_res: longer side the model sees (0 = native size; negative or None = the
            checkpoint's own default_processing_resolution, else 768); settable later.
        upcast_vae: decode in fp32 when running fp16 (for checkpoints whose fp16 decode
            overflows; without it an overflowing frame is re-decoded in fp32 and a warning says
            so once).
        compile: torch.compile the UNet and the VAE encoder/decoder (slow first frame per size).
        cache_dir: where the empty-prompt embedding is cached ($FIFFDEPTH_CACHE or
            ~/.cache/fiffdepth_ros by default).
        hub_cache_dir: Hugging Face hub cache (default: huggingface_hub's own, HF_HOME).
        model_family: 'auto' (detected from the checkpoint) or one of model.families.FAMILIES.
        denoising_steps, ensemble_size, seed: Marigold only (0 steps = the checkpoint's
            default).
        autoencoder: 'full' (the VAE), 'light' (the folder's light_encoder/ and light_decoder/,
            model.light; the VAE is then not loaded), 'light_encoder' or 'light_decoder' (one
            half light). light_path: take the light parts from this folder instead (one with
            light_encoder/ and light_decoder/, or a downloaded TAESD AutoencoderTiny folder).
        runtime: 'auto', 'torch', 'onnxruntime' or 'openvino' (model.runtimes): an export
            folder (fiffdepth-export) runs on its own runtime under 'auto'.
        providers: exported graphs only: ONNX Runtime execution providers or OpenVINO devices,
            in order (a list or 'tensorrt,cuda,cpu'; default: the runtime's own order).

        Raises ModelLoadError (missing, incomplete, unloadable or unknown checkpoint) and
        ValueError (bad device, precision or model_family).
        """
        from .checkpoint import FP16, load_unet_and_vae, resolve_checkpoint
        from .families import make_family, read_info
        from .light import load_light_parts, wanted_parts
        from .prompt_cache import load_empty_embedding
        from .runtimes import is_export, load_exported, runtime_for_checkpoint
        if is_export(model):
            return load_exported(cls, model, runtime=runtime, device=device,
                                 precision=precision, processing_res=processing_res,
                                 model_family=model_family, providers=providers,
                                 cache_dir=cache_dir)
        runtime_for_checkpoint(runtime, model)
        dtype = resolve_dtype(precision, resolve_device(device))   # bad arguments fail first
        light = wanted_parts(autoencoder)                          # (encoder, decoder) light?
        if model_family not in FAMILY_CHOICES:
            raise ValueError(f"unknown model_family '{model_family}': expected one of "
                             f"{', '.join(FAMILY_CHOICES)}")
        checkpoint = resolve_checkpoint(model, cache_dir=hub_cache_dir,
                                        variant=FP16 if dtype == torch.float16 else None)
        info = read_info(checkpoint)
        family = make_family(info, model_family,
                             denoising_steps=denoising_steps, ensemble_size=ensemble_size,
                             seed=seed)
        if any(light) and family.own_pipeline:
            raise ValueError(f"autoencoder '{autoencoder}': the light autoencoder is for the "
                             f'single-pass families, not {family.name}')
        light_encoder, light_decoder = load_light_parts(checkpoint.root, model, autoencoder,
                                                        dtype, light_path)
        embedding, _ = load_empty_embedding(checkpoint, cache_dir)
        vae_dtype = torch.float32 if upcast_vae else dtype
        unet, vae = load_unet_and_vae(checkpoint, dtype, vae_dtype=vae_dtype,
                                      with_vae=not all(light))
        estimator = cls(unet, vae, embedding, device=device,
                        precision='fp16' if dtype == torch.float16 else 'fp32',
                        processing_res=processing_res, upcast_vae=upcast_vae, compile=compile,
                        model_name=model, family=family, light_encoder=light_encoder,
                        light_decoder=light_decoder,
                        default_processing_res=info.default_processing_res)
        estimator.model_source = checkpoint.origin
        return estimator

    def describe(self) -> dict:
        precision = {torch.float16: 'fp16', torch.float32: 'fp32'}.get(self.dtype, str(self.dtype))
        if self._decoder32 and self.dtype != torch.float32:
            precision += ' (VAE decoder fp32)'
        if not self.runtime.uses_torch_modules:
            precision = self.runtime.precision
        info = {'model': self.model_name, 'model_source': self.model_source,
                'device': str(self.device), 'precision': precision,
                'processing_res': self.processing_res, 'autoencoder': self.autoencoder,
                **self.strategy.describe(), **self.runtime.describe()}
        if self.runtime.fixed_size:
            info['static_size'] = 'x'.join(map(str, self.runtime.fixed_size))
            if self._warned_fixed_size:
                info['static_size'] += ' (frames of another size resized to it)'
        return info

    # ------------------------------------------------------------------ stages
    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model sees: the longer side about processing_res, aspect kept; a static
        export's own size whatever the frame (said once in the log when that differs)."""
        size = target_size(height, width, self.processing_res)
        fixed = self.runtime.fixed_size
        if fixed is None or tuple(fixed) == size:
            return size
        if not self._warned_fixed_size:
            log.warning('static export of %dx%d (h x w): %dx%d frames at processing_res %d '
                        '(%dx%d) are resized to %dx%d instead (export with --dynamic, or at '
                        'this size, to keep the aspect ratio)', *fixed, height, width,
                        self.processing_res, *size, *fixed)
            self._warned_fixed_size = True
        return tuple(fixed)

    @torch.inference_mode()
    def preprocess(self, images: list[np.ndarray]) -> Batch:
        """Same-size images -> (B, 3, h, w) tensor in [-1, 1] on the device."""
        arrays = [as_rgb_uint8_or_float(img) for img in images]
        size = arrays[0].shape[:2]
        if any(_batch_key(a) != _batch_key(arrays[0]) for a in arrays):
            raise ValueError('preprocess takes images of one size, channel count and kind '
                             '(uint8 or float); use predict_batch for mixed images')
        # One host copy at most (none for a single contiguous image); uint8 travels to the
        # device as uint8 (4x less to transfer) and becomes float there.
        host = np.ascontiguousarray(arrays[0])[None] if len(arrays) == 1 else np.stack(arrays)
        if not host.flags.writeable:
            # Views of message buffers (rosbags) are read-only; torch wants to own writable data.
            host = host.copy()
        x = torch.from_numpy(host).to(self.device).permute(0, 3, 1, 2)
        is_uint8 = x.dtype == torch.uint8
        x = x.float()                      # 0..255 (uint8) or 0..1 (float): a new tensor
        if not is_uint8:
            x = x.clamp_(0.0, 1.0)         # inputs may stray by the validated 1e-3
        channels = x.shape[1]
        if channels == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels == 4:
            x = x[:, :3]                   # RGBA: alpha is not part of the scene
        h, w = self.target_size(*size)
        resize = (h, w) != tuple(size)
        if self.strategy.input_order == 'normalise_then_resize':
            x = x / 127.5 - 1.0 if is_uint8 else x * 2.0 - 1.0
            if resize:
                x = _resize(x, (h, w), 'bilinear')
        else:
            if resize:
                x = _resize(x, (h, w), 'bilinear')
                if is_uint8:               # the release resizes a uint8 tensor: rounded back
                    x = x.round_().clamp_(0.0, 255.0)
            x = x / 255.0 * 2.0 - 1.0 if is_uint8 else x * 2.0 - 1.0
        pad_h, pad_w = max(0, self.min_side - h), max(0, self.min_side - w)
        if pad_h or pad_w:                 # only below what the VAE can downsample at all
            x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return Batch(pixels=x, input_size=tuple(size), resized=(h, w),
                     padded=bool(pad_h or pad_w))

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H', W') in [-1, 1] -> scaled latent mean (B, 4, ~H'/8, ~W'/8)."""
        if self.light_encoder is not None:
            return stages.light_encode(self.light_encoder, pixels)
        return stages.encode_image(self.vae, pixels, self.scaling_factor)

    def _embedding_for(self, batch: int) -> torch.Tensor:
        emb = self._embeddings.get(batch)
        if emb is None:
            emb = self._embedding.expand(batch, -1, -1).contiguous()
            self._embeddings[batch] = emb
        return emb

    @torch.inference_mode()
    def run_unet(self, latent: torch.Tensor) -> torch.Tensor:
        """The family's UNet step: image latent -> depth latent."""
        return self.strategy.depth_latent(self, latent)

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Depth latent -> (B, 1, H', W') float32 relative depth in [0, 1]."""
        if self.light_decoder is not None:
            out = stages.light_decode(self.light_decoder, latent)
            if self.light_decoder.outputs_depth:         # distilled: the depth itself
                return out.float().clamp_(0.0, 1.0)
            return self.strategy.to_depth(out)           # a TAESD decoder: RGB, as the VAE's
        image = stages.decode_latent(self.vae, latent, self.scaling_factor)
        # Half precision can overflow in the decoder (inf/NaN); one sync per frame to know.
        if image.dtype != torch.float32 and not torch.isfinite(image).all():
            if not self._warned_overflow:
                log.warning('fp16 VAE decode gave non-finite values: decoded again in fp32, and '
                            'in fp32 from now on (upcast_vae=True skips the fp16 attempt)')
                self._warned_overflow = True
            self._fp32_decoder()
            image = stages.decode_latent(self.vae, latent.float(), self.scaling_factor)
        return self.strategy.to_depth(image)

    @torch.inference_mode()
    def postprocess(self, depth: torch.Tensor, batch: Batch) -> list[np.ndarray]:
        """Crop any padding, normalise, resize to the input size: float32 HxW in [0, 1]."""
        out = self.postprocess_on_device(depth, batch)[:, 0].float().cpu().numpy()
        return [np.ascontiguousarray(d) for d in out]

    @torch.inference_mode()
    def postprocess_on_device(self, depth: torch.Tensor, batch: Batch) -> torch.Tensor:
        """As postprocess, but (B, 1, H, W) on the model's device (no copy, no sync)."""
        if batch.padded:
            depth = depth[:, :, :batch.resized[0], :batch.resized[1]]
        depth = self.strategy.normalise(depth)
        # The decoded size can differ from the resized one by a few pixels (sides that are not
        # multiples of 8): the release resizes straight to the input size, so does this.
        if tuple(depth.shape[-2:]) != batch.input_size:
            depth = _resize(depth, batch.input_size, self.strategy.resize_back)
        return depth.clamp_(0.0, 1.0)

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    def _predict_same_size(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if self.strategy.own_pipeline:
            return self.strategy.predict(self, [_rgb(as_rgb_uint8_or_float(i)) for i in images])
        batch = self.preprocess(images)
        return self.postprocess(self.runtime.depth(self, batch.pixels), batch)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Relative depth (float32 HxW in [0, 1]; larger = farther, or nearer where
        ``output_space == 'disparity'``) of one image."""
        return self._predict_same_size([image])[0]

    @torch.inference_mode()
    def predict_on_device(self, image: np.ndarray) -> torch.Tensor:
        """As predict, but a float32 (H, W) tensor left on the model's device, for finishing
        there (fiffdepth_ros.finish); families with their own pipeline come back from the host."""
        if self.strategy.own_pipeline:
            return torch.from_numpy(self.predict(image)).to(self.device)
        batch = self.preprocess([image])
        depth = self.runtime.depth(self, batch.pixels)
        return self.postprocess_on_device(depth, batch)[0, 0].float()

    def predict_batch(self, images: list[np.ndarray], max_batch: int = 8) -> list[np.ndarray]:
        """Several images, in order; images of one size (and format) share batches of at most
        ``max_batch``."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(_batch_key(as_rgb_uint8_or_float(img)), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), max_batch):
                chunk = indices[start:start + max_batch]
                for i, depth in zip(chunk, self._predict_same_size([images[i] for i in chunk])):
                    out[i] = depth
        return out


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """torchvision.transforms.functional.resize on a float tensor, antialias=True."""
    if mode == 'nearest-exact':            # antialiasing does not apply to nearest
        return F.interpolate(x, size=size, mode='nearest-exact')
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxWxC (C = 1, 3, 4) -> HxWx3, for pipelines that take RGB only."""
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 4:
        return image[..., :3]
    return np.repeat(image, 3, axis=2)
