"""Where the single pass runs: torch (the engine's own modules), or an exported graph on ONNX
Runtime or OpenVINO. ``model.families`` says *what* a family computes; a runtime says *where*.
The estimator composes one of each and keeps preprocessing and the output contract shared, so
the node, the bag tools and the CLIs never learn which runtime is in use.

``runtime``: 'auto' (a checkpoint folder: torch; an export folder: the runtime its metadata
names, onnxruntime unless exported otherwise), 'torch', 'onnxruntime' or 'openvino'.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from ..checkpoint import ModelLoadError
from .base import Runtime
from .export_info import ExportInfo, is_export, read_export_info
from .torch_eager import TorchRuntime

RUNTIME_CHOICES = ('auto', 'torch', 'onnxruntime', 'openvino')
GRAPH_RUNTIMES = ('onnxruntime', 'openvino')
# runtime -> (module, pip package)
_PACKAGES = {'onnxruntime': ('onnxruntime', 'onnxruntime'),
             'openvino': ('openvino', 'openvino')}
log = logging.getLogger(__name__)

__all__ = ['RUNTIME_CHOICES', 'ExportInfo', 'Runtime', 'TorchRuntime', 'is_export',
           'load_exported', 'parse_providers', 'read_export_info', 'require']


def require(module: str, runtime: str):
    """Import a runtime's package, or one ModelLoadError naming it and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip = _PACKAGES.get(runtime, (module, module))[1]
        gpu = (' (onnxruntime-gpu for CUDA/TensorRT; on a Jetson, the onnxruntime-gpu wheel '
               'built for its JetPack)') if runtime == 'onnxruntime' else ''
        raise ModelLoadError(f"runtime '{runtime}' needs the Python package '{pip}', which is "
                             f"not installed: pip install {pip}{gpu}, or pip install "
                             f"'fiffdepth_ros[deploy]' ({exc})") from exc


def parse_providers(value) -> list[str] | None:
    """'tensorrt,cuda,cpu' (a parameter string) or a list -> list; '' or None -> None
    (the runtime's default order)."""
    if not value:
        return None
    items = value.split(',') if isinstance(value, str) else list(value)
    items = [str(p).strip() for p in items if str(p).strip()]
    return items or None


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime '{runtime}': expected one of "
                         f"{', '.join(RUNTIME_CHOICES)}")


def runtime_for_checkpoint(runtime: str, model: str) -> None:
    """A checkpoint folder runs on torch: an exported-graph runtime needs an export."""
    check_runtime(runtime)
    if runtime in GRAPH_RUNTIMES:
        raise ModelLoadError(
            f"runtime '{runtime}' runs an exported graph, and '{model}' is a checkpoint (no "
            f'fiffdepth_export.json): export it first (fiffdepth-export --model {model} '
            '--output <folder> --dynamic) and pass that folder as the model, or use runtime '
            "'torch'")


def load_exported(engine_cls, folder, runtime: str = 'auto', device: str = 'auto',
                  precision: str = 'auto', processing_res: int | None = -1,
                  model_family: str = 'auto', providers=None, cache_dir=None):
    """An estimator (``engine_cls``, DepthEstimator) running the graph of an export folder."""
    from ..families import FAMILIES
    check_runtime(runtime)
    info = read_export_info(folder)
    name = info.runtime if runtime == 'auto' else runtime
    if name == 'torch':
        raise ModelLoadError(
            f"'{folder}' is an exported graph (of {info.source_model}); runtime 'torch' runs "
            "the checkpoint folder itself: pass that as the model, or runtime 'onnxruntime' / "
            "'openvino' (or 'auto') for the export")
    if name not in GRAPH_RUNTIMES:
        raise ModelLoadError(f"{folder}: its metadata names runtime '{name}', which this "
                             f"version does not know (known: {', '.join(GRAPH_RUNTIMES)})")
    if info.family not in FAMILIES:
        raise ModelLoadError(f"{folder}: exported family '{info.family}' is unknown to this "
                             'version')
    if model_family not in ('auto', info.family):
        raise ModelLoadError(f"{folder} is an export of a {info.family} model; model_family "
                             f"'{model_family}' does not match (use 'auto')")
    if device not in ('', 'auto', 'cpu') and not device.startswith('cuda'):
        raise ValueError(f"unknown device '{device}' (use 'auto', 'cpu', 'cuda' or 'cuda:N')")
    family = FAMILIES[info.family](None)
    family.output_space = info.output_space          # as exported
    if name == 'onnxruntime':
        from .onnx_runtime import OnnxRuntime as cls
    else:
        from .openvino_runtime import OpenVinoRuntime as cls
    runner = cls(Path(folder), info, device=device or 'auto', precision=precision,
                 providers=parse_providers(providers), cache_dir=cache_dir)
    engine = engine_cls(None, None, None, processing_res=processing_res,
                        model_name=str(folder), family=family, runtime=runner,
                        default_processing_res=info.processing_res)   # -1: its exported size
    engine.model_source = (f'export {Path(folder).expanduser().resolve()} of '
                           f'{info.source_model}')
    return engine
