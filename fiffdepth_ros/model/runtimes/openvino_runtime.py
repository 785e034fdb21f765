"""The OpenVINO runtime: an export folder's ONNX graph read and compiled by OpenVINO.

Device: 'CPU' unless ``providers`` names OpenVINO devices ('GPU', 'NPU', 'CPU'), tried in
order (a missing one: one warning; the only one asked for: an error). In fp32 the CPU plugin's
inference precision is pinned to f32 (it would otherwise pick bf16 on CPUs that have it).

precision 'bf16' (opt-in, CPU only) lets the plugin run the fp32 graph in bfloat16 on CPUs that
have it (AVX512_BF16, AMX): about twice as fast on convolutions, at about 1e-2 of the output
range instead of fp32's 1e-6 (bench/export_runtimes.py measures both); a CPU without bf16 is
one clear error, not a silent fp32 run."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelLoadError
from .base import GraphRuntime
from .export_info import ExportInfo

log = logging.getLogger(__name__)


class OpenVinoRuntime(GraphRuntime):
    name = 'openvino'

    def __init__(self, folder: Path, info: ExportInfo, device: str = 'auto',
                 precision: str = 'auto', providers: list[str] | None = None,
                 threads: int | None = None, cache_dir=None):
        from . import require
        ov = require('openvino', self.name)
        super().__init__(info)
        core = ov.Core()
        available = list(core.available_devices)
        wanted = [p.strip().upper() for p in providers] if providers else ['CPU']
        chosen = [d for d in wanted if d in available or d.split('.')[0] in available]
        if not chosen or (providers and len(wanted) == 1 and chosen != wanted):
            raise ModelLoadError(f"openvino: device {', '.join(wanted)} is not available "
                                 f"(available: {', '.join(available)})")
        if len(chosen) < len(wanted):
            log.warning('openvino: %s not available: running on %s',
                        ', '.join(d for d in wanted if d not in chosen), chosen[0])
        self.ov_device = chosen[0]
        graph = Path(folder) / info.graph
        config = {'PERFORMANCE_HINT': 'LATENCY'}
        if precision == 'bf16':
            if self.ov_device != 'CPU':
                raise ModelLoadError(f"openvino: precision 'bf16' is for the CPU plugin, not "
                                     f'{self.ov_device}')
            if 'BF16' not in core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
                raise ModelLoadError("openvino: precision 'bf16' asked for, and this CPU has "
                                     "no bf16 support (AVX512_BF16 or AMX): use 'fp32'")
            config['INFERENCE_PRECISION_HINT'] = 'bf16'
            self.precision = 'bf16 (OpenVINO CPU)'
        if self.ov_device == 'CPU':
            config['INFERENCE_NUM_THREADS'] = threads or torch.get_num_threads()
            if precision != 'bf16' and (info.precision == 'fp32' or precision == 'fp32'):
                config['INFERENCE_PRECISION_HINT'] = 'f32'
        try:
            compiled = core.compile_model(core.read_model(str(graph)), self.ov_device, config)
        except Exception as exc:
            raise ModelLoadError(f'openvino cannot compile {graph} for {self.ov_device} '
                                 f'({type(exc).__name__}: {exc})') from exc
        self.request = compiled.create_infer_request()

    def depth(self, engine, pixels: torch.Tensor) -> torch.Tensor:
        host = pixels.detach().to('cpu', torch.float32).contiguous().numpy()
        out = []
        for i in range(host.shape[0]):      # the graph has batch 1
            self.request.infer({0: host[i:i + 1]})
            out.append(np.array(self.request.get_output_tensor(0).data, dtype=np.float32))
        return torch.from_numpy(np.concatenate(out) if len(out) > 1 else out[0])

    def describe(self) -> dict:
        return {'runtime': self.name, 'providers': [self.ov_device]}
