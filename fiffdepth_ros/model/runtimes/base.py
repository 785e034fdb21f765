"""What a runtime is: where the single pass (pixels -> depth at processing size) runs.

The engine (model.estimator.DepthEstimator) keeps everything around the pass shared --
preprocess (resize, uint8 rounding, normalisation, padding) and postprocess (crop, the family's
per-prediction normalisation, resize back, the output contract) -- and asks its runtime for

  depth(engine, pixels)  (B, 3, h, w) in [-1, 1] -> (B, 1, h', w') float32 relative depth in
                         [0, 1], before the family's normalisation (what ``engine.decode``
                         returns in the torch engine)

A runtime that owns the network (an exported graph) also tells the engine the few facts it
would otherwise read from the torch modules: the device its inputs are prepared on, the VAE's
smallest side, and a fixed input size for static exports.
"""
from __future__ import annotations

import torch


class Runtime:
    name = ''
    uses_torch_modules = False     # the engine's own UNet/VAE run the pass (torch only)
    device = torch.device('cpu')   # where preprocess puts the pixels
    fixed_size: tuple[int, int] | None = None    # (h, w) of a static export
    min_side = 8                   # smallest side the graph's VAE encoder takes
    precision = 'fp32'

    def depth(self, engine, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {'runtime': self.name}


class GraphRuntime(Runtime):
    """A runtime of an exported graph: the facts the engine asks for come from its metadata
    (runtimes.export_info.ExportInfo)."""

    def __init__(self, info):
        self.info = info
        self.fixed_size = info.fixed_size
        self.min_side = info.min_side
        self.precision = info.precision
