"""The single pass as one ONNX graph (``fiffdepth-export``), for ONNX Runtime, OpenVINO and
TensorRT (through ONNX Runtime's TensorRT provider, or trtexec on the same file).

The graph is the torch engine's own pass, traced: ``stages.encode_image`` (VAE encoder mean),
the family's ``depth_latent`` (one UNet evaluation on the cached empty-prompt embedding, folded
in as a constant, with E2E-FT's DDIM step or Lotus' task embedding), ``stages.decode_latent``
and the family's ``to_depth`` -- nothing here re-implements them. Preprocessing (resize, uint8
rounding, normalisation) and postprocessing (the family's per-prediction normalisation, resize
back) stay outside, shared with the torch runtime (model.estimator).

Shapes: static (the given height x width only) or dynamic (any height and width >= the VAE's
downsampling factor). A dynamic graph is traced at a size whose latent is *not* a multiple of
the UNet's upsampling factor, so the UNet's explicit upsample sizes are recorded as shape
computations and every size works, multiples of 8 and 64 or not.

fp16: UNet, VAE encoder and the embedding in half precision, the VAE decoder (and
post_quant_conv) in fp32 -- the torch engine's upcast_vae -- with fp32 input and output.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import stages
from .checkpoint import ModelLoadError
from .runtimes.export_info import GRAPH_FILE, ExportInfo

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXTERNAL_DATA = GRAPH_FILE + '.data'
PROTOBUF_LIMIT = 2 * 1024 ** 3          # one ONNX protobuf file holds at most 2 GiB


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why and what to do."""


@dataclass
class ExportConfig:
    """What ``fiffdepth-export`` writes (built from its arguments at the CLI boundary)."""

    model: str                           # checkpoint folder, hub id or built-in name
    output: Path                         # the export folder (created)
    height: int | None = None            # static size; both or neither
    width: int | None = None
    dynamic: bool = False                # any size (no --height/--width)
    processing_res: int = -1             # recorded for dynamic exports (-1: the model's own)
    fp16: bool = False
    opset: int = DEFAULT_OPSET
    model_family: str = 'auto'
    runtime: str = 'onnxruntime'         # what 'auto' picks when the folder is loaded
    autoencoder: str = 'full'            # full | light | light_encoder | light_decoder
    light_path: str = ''                 # the light parts' folder (default: the model's)
    overwrite: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.dynamic == (self.height is not None or self.width is not None):
            raise ExportError('give either --height and --width (a static graph) or --dynamic')
        if not self.dynamic and (not self.height or not self.width
                                 or self.height < 1 or self.width < 1):
            raise ExportError('a static export needs both --height and --width (positive)')
        if self.opset < 17:
            raise ExportError(f'--opset {self.opset}: 17 or newer is needed (GroupNormalization '
                              'and LayerNormalization of the VAE and UNet)')
        if self.runtime not in ('onnxruntime', 'openvino'):
            raise ExportError(f"default runtime must be 'onnxruntime' or 'openvino', got "
                              f"'{self.runtime}'")
        from .light import wanted_parts
        try:
            wanted_parts(self.autoencoder)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        if self.processing_res < -1:
            raise ExportError("--processing-res must be >= 0 (or -1: the model's own)")


class SinglePassGraph(torch.nn.Module):
    """pixels (1, 3, h, w) fp32 in [-1, 1] -> depth (1, 1, h', w') fp32 in [0, 1], exactly the
    torch engine's encode -> family UNet step -> decode -> to_depth."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self.unet, self.vae = engine.unet, engine.vae     # registered: named initialisers
        # the light parts (model.light, autoencoder: light*) where the engine runs them
        self.light_encoder, self.light_decoder = engine.light_encoder, engine.light_decoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        engine = self.engine
        if self.light_encoder is not None:
            latent = stages.light_encode(self.light_encoder, pixels)
        else:
            latent = stages.encode_image(engine.vae, pixels.to(engine.dtype),
                                         engine.scaling_factor)
        depth_latent = engine.strategy.depth_latent(engine, latent)
        if self.light_decoder is not None:
            out = stages.light_decode(self.light_decoder, depth_latent)
            if self.light_decoder.outputs_depth:          # distilled: the depth itself
                return out.float().clamp(0.0, 1.0)
            return engine.strategy.to_depth(out).float()  # a TAESD decoder: RGB
        decoded = stages.decode_latent(engine.vae, depth_latent, engine.scaling_factor)
        return engine.strategy.to_depth(decoded).float()


def _to_half(engine) -> None:
    """The engine's UNet, encoder and embedding in fp16, its decoder kept in fp32 (upcast_vae):
    on the CPU too, where the estimator itself would refuse fp16 (tracing runs it once)."""
    engine.unet.half()
    if engine.light_encoder is not None:
        engine.light_encoder.half()
    if engine.vae is not None:
        engine.vae.encoder.half()
        if engine.vae.quant_conv is not None:
            engine.vae.quant_conv.half()
        engine.vae.decoder.float()
        if engine.vae.post_quant_conv is not None:
            engine.vae.post_quant_conv.float()
    engine.dtype = torch.float16
    engine.upcast_vae = engine._decoder32 = True
    engine._embedding = engine._embedding.half()
    engine._embeddings.clear()
    engine.strategy.prepare(engine)      # family constants (timestep, task label) re-made


def unet_up_factor(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def trace_size(engine) -> tuple[int, int]:
    """A dynamic graph's tracing size: latents (2f+1) x (3f+1) for the UNet's upsampling
    factor f, so the UNet records explicit upsample sizes (see the module docstring)."""
    f = unet_up_factor(engine.unet)
    down = engine.min_side
    return down * (2 * f + 1), down * (3 * f + 1)


def load_for_export(config: ExportConfig):
    """The torch engine (fp32 on the CPU, then halved for --fp16) of the checkpoint."""
    from .estimator import DepthEstimator
    engine = DepthEstimator.from_pretrained(
        config.model, device='cpu', precision='fp32',
        processing_res=config.processing_res if config.dynamic else max(config.height,
                                                                         config.width),
        model_family=config.model_family, runtime='torch', autoencoder=config.autoencoder,
        light_path=config.light_path)
    if engine.strategy.own_pipeline:
        raise ExportError(
            f"'{config.model}' is a {engine.family} checkpoint: Marigold runs diffusers' "
            'MarigoldDepthPipeline (seeded noise, several denoising steps, ensembling), which '
            'is not one fixed pass; it stays on the torch runtime. Single-pass families export: '
            'fiffdepth, e2e_ft, lotus_d, lotus_d_disparity')
    if config.fp16:
        _to_half(engine)
    return engine


def _source_revision(model: str) -> str | None:
    from .checkpoint import resolve_checkpoint
    try:
        checkpoint = resolve_checkpoint(model)
    except ModelLoadError:
        return None
    return checkpoint.root.name if checkpoint.hub_id else None


def _package_version() -> str:
    from .. import __version__
    return __version__


def _write_graph(graph: SinglePassGraph, example: torch.Tensor, folder: Path, config: ExportConfig
                 ) -> str | None:
    """Trace and write model.onnx (+ model.onnx.data over 2 GiB); returns the data file name."""
    import onnx
    dynamic_axes = ({'pixels': {2: 'height', 3: 'width'},
                     'depth': {2: 'depth_height', 3: 'depth_width'}} if config.dynamic else None)
    with tempfile.TemporaryDirectory(dir=folder, prefix='.trace-') as tmp:
        traced = Path(tmp) / GRAPH_FILE
        with torch.no_grad():
            torch.onnx.export(graph, (example,), str(traced), input_names=['pixels'],
                              output_names=['depth'], dynamic_axes=dynamic_axes,
                              opset_version=config.opset, do_constant_folding=True,
                              dynamo=False)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.is_file())
        target = folder / GRAPH_FILE
        if size < PROTOBUF_LIMIT and len(list(Path(tmp).iterdir())) == 1:
            shutil.move(str(traced), target)
            onnx.checker.check_model(str(target))
            return None
        # Over 2 GiB the exporter scatters one file per tensor: gather them into one.
        model = onnx.load(str(traced), load_external_data=True)
        onnx.save_model(model, str(target), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=EXTERNAL_DATA,
                        size_threshold=1024)
        del model
        os.chmod(folder / EXTERNAL_DATA, 0o644)     # written private; other users' nodes read it
        onnx.checker.check_model(str(target))       # by path: external data allowed
        return EXTERNAL_DATA


def export_single_pass(config: ExportConfig) -> ExportInfo:
    """Write the export folder of ``config``; returns its metadata."""
    config.validate()
    out = Path(config.output).expanduser()
    from .runtimes.export_info import METADATA_FILE
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        if not (out / METADATA_FILE).is_file():
            raise ExportError(f'{out} exists and is not an export folder: choose an empty or '
                              'new folder')
    out.mkdir(parents=True, exist_ok=True)
    for stale in (METADATA_FILE, GRAPH_FILE, EXTERNAL_DATA):
        (out / stale).unlink(missing_ok=True)       # never a new graph beside old metadata
    for trace in out.glob('.trace-*'):              # left by an export that was killed
        shutil.rmtree(trace, ignore_errors=True)
    engine = load_for_export(config)
    if config.dynamic:
        height, width = trace_size(engine)
    else:
        height, width = config.height, config.width
        if min(height, width) < engine.min_side:
            raise ExportError(f'static size {height}x{width}: each side must be at least '
                              f'{engine.min_side} (the VAE downsamples by that much)')
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    log.info('tracing %s (%s) at %dx%d', engine.family, 'fp16' if config.fp16 else 'fp32',
             height, width)
    external = _write_graph(SinglePassGraph(engine).eval(), example, out, config)
    info = ExportInfo(
        family=engine.family, output_space=engine.output_space, dynamic=config.dynamic,
        height=None if config.dynamic else height, width=None if config.dynamic else width,
        processing_res=engine.processing_res if config.dynamic else max(height, width),
        precision='fp16' if config.fp16 else 'fp32', decoder_precision='fp32',
        opset=config.opset, min_side=engine.min_side, source_model=config.model,
        source_revision=_source_revision(config.model), package_version=_package_version(),
        torch_version=torch.__version__, runtime=config.runtime, external_data=external,
        autoencoder=engine.autoencoder,
        extra={'model_source': engine.model_source, **config.extra})
    info.write(out)                                 # last: marks the export complete
    return info
