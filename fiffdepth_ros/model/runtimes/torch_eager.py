"""The torch runtime: the engine's own modules, eagerly (or torch.compile'd) -- the reference
every exported graph is compared with."""
from __future__ import annotations

import torch

from .base import Runtime


class TorchRuntime(Runtime):
    name = 'torch'
    uses_torch_modules = True

    def depth(self, engine, pixels: torch.Tensor) -> torch.Tensor:
        return engine.decode(engine.run_unet(engine.encode(pixels)))
