"""The ONNX Runtime runtime: an export folder's graph in an InferenceSession.

Execution providers, in order: TensorRT (fp16 unless precision is fp32; engines and timing
caches under $FIFFDEPTH_CACHE/tensorrt, so only the first start on a machine builds them),
CUDA, CPU -- or the list given (``providers``). A provider this onnxruntime build lacks is left
out with one warning; a list of one provider that is missing is an error (the user asked for
that one only)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelLoadError
from .base import GraphRuntime
from .export_info import ExportInfo

log = logging.getLogger(__name__)

TENSORRT, CUDA, CPU = ('TensorrtExecutionProvider', 'CUDAExecutionProvider',
                       'CPUExecutionProvider')
_SHORT = {'tensorrt': TENSORRT, 'trt': TENSORRT, 'cuda': CUDA, 'cpu': CPU}


def provider_name(name: str) -> str:
    """'tensorrt' / 'cuda' / 'cpu' or onnxruntime's full provider names."""
    return _SHORT.get(name.strip().lower(), name.strip())


def default_providers(device: str) -> list[str]:
    return [CPU] if device == 'cpu' else [TENSORRT, CUDA, CPU]


def choose_providers(requested: list[str] | None, available: list[str], device: str
                     ) -> list[str]:
    """The providers to use, in order (ModelLoadError when none of them, or the only one
    asked for, is available)."""
    explicit = bool(requested)
    wanted = [provider_name(p) for p in requested] if explicit else default_providers(device)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing and (not chosen or (explicit and len(wanted) == 1)):
        raise ModelLoadError(
            f"onnxruntime: execution provider {', '.join(missing)} is not available in this "
            f"onnxruntime build (available: {', '.join(available)}). For CUDA/TensorRT install "
            "onnxruntime-gpu (on a Jetson, NVIDIA's onnxruntime-gpu wheel for its JetPack), or "
            "choose from the available ones (runtime_providers)")
    if missing:
        log.warning('onnxruntime: %s not available in this build: running on %s',
                    ', '.join(missing), ', '.join(chosen))
    return chosen


def _cuda_index(device: str) -> int:
    return int(device.split(':', 1)[1]) if device.startswith('cuda:') else 0


class OnnxRuntime(GraphRuntime):
    name = 'onnxruntime'

    def __init__(self, folder: Path, info: ExportInfo, device: str = 'auto',
                 precision: str = 'auto', providers: list[str] | None = None,
                 threads: int | None = None, cache_dir=None):
        from . import require
        ort = require('onnxruntime', self.name)
        if precision == 'bf16':
            raise ModelLoadError("onnxruntime: precision 'bf16' is OpenVINO's (its CPU plugin "
                                 "runs the fp32 graph in bf16): use runtime 'openvino', or "
                                 "precision 'fp32' / 'fp16' here")
        super().__init__(info)
        chosen = choose_providers(providers, ort.get_available_providers(), device)
        graph = Path(folder) / info.graph
        options = {CUDA: {'device_id': _cuda_index(device)}}
        if TENSORRT in chosen:
            from ..prompt_cache import cache_root
            key = hashlib.sha256(f'{graph.resolve()}:{graph.stat().st_mtime_ns}'.encode())
            engines = cache_root(cache_dir) / 'tensorrt' / key.hexdigest()[:16]
            engines.mkdir(parents=True, exist_ok=True)
            options[TENSORRT] = {
                'device_id': _cuda_index(device),
                'trt_fp16_enable': precision != 'fp32',
                'trt_engine_cache_enable': True, 'trt_engine_cache_path': str(engines),
                'trt_timing_cache_enable': True, 'trt_timing_cache_path': str(engines)}
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or torch.get_num_threads()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(graph), sess_options=session_options,
                providers=[(p, options.get(p, {})) for p in chosen])
        except Exception as exc:
            raise ModelLoadError(f'onnxruntime cannot load {graph} ({type(exc).__name__}: '
                                 f'{exc})') from exc
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name
        self.threads = threads

    def depth(self, engine, pixels: torch.Tensor) -> torch.Tensor:
        host = pixels.detach().to('cpu', torch.float32).contiguous().numpy()
        # The graph has batch 1: one run per frame.
        out = [self.session.run(None, {self._input: host[i:i + 1]})[0]
               for i in range(host.shape[0])]
        return torch.from_numpy(np.concatenate(out) if len(out) > 1 else out[0])

    def describe(self) -> dict:
        return {'runtime': self.name, 'providers': list(self.providers)}
