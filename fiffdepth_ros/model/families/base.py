"""What a family strategy is: the few steps in which single-step diffusion depth models differ.

The engine (model.estimator.DepthEstimator) runs the shared stages -- preprocess, encode, the
family's UNet step, decode, postprocess -- and asks the family only for what differs:

  input_order   'resize_then_normalise': resize the 0..255 image, round it back to uint8, then
                /255*2-1 (FiffDepth, E2E-FT: torchvision resizes their uint8 tensor);
                'normalise_then_resize': x/127.5-1, then resize in float (Lotus).
  depth_latent  image latent -> depth latent (one UNet pass, or a scheduler step around it)
  to_depth      decoded VAE output -> (B, 1, h, w) in [0, 1]
  normalise     per-prediction normalisation at processing size (E2E-FT's min-max)
  resize_back   'bilinear' (antialiased) or 'nearest-exact' (Lotus)

A family that runs a whole released pipeline instead (Marigold, through diffusers) sets
``own_pipeline`` and implements ``predict``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import stages


DEFAULT_PROCESSING_RES = 768      # the releases' default longer side


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself: read from its files, no weights loaded."""

    root: Path
    name: str                         # hub id or folder name (naming hints, e.g. 'disparity')
    unet_config: dict[str, Any]
    model_index: dict[str, Any] = field(default_factory=dict)
    scheduler_config: dict[str, Any] | None = None

    @property
    def in_channels(self) -> int:
        return int(self.unet_config.get('in_channels', 4))

    @property
    def class_embed_type(self) -> str | None:
        return self.unet_config.get('class_embed_type')

    @property
    def pipeline_class(self) -> str:
        return str(self.model_index.get('_class_name', ''))

    @property
    def default_processing_res(self) -> int:
        """model_index.json's default_processing_resolution (Marigold's and the released
        DirectPipeline's key), else DEFAULT_PROCESSING_RES."""
        value = self.model_index.get('default_processing_resolution')
        try:
            return int(value) if value is not None and int(value) >= 0 \
                else DEFAULT_PROCESSING_RES
        except (TypeError, ValueError):
            return DEFAULT_PROCESSING_RES

    @property
    def prediction_type(self) -> str:
        """model_index.json's prediction_type (Marigold's key: 'depth' or 'disparity'), else
        'depth'."""
        return str(self.model_index.get('prediction_type') or 'depth')

    @property
    def scheduler_class(self) -> str:
        return str((self.scheduler_config or {}).get('_class_name', ''))

    def summary(self) -> str:
        """The facts detection used, for error messages."""
        embed = self.class_embed_type
        if embed == 'projection':
            embed += f"({self.unet_config.get('projection_class_embeddings_input_dim')})"
        return (f"UNet in_channels={self.in_channels}, class embedding={embed or 'none'}, "
                f"model_index _class_name={self.pipeline_class or 'none'!r}, scheduler="
                f"{self.scheduler_class or ('none' if self.scheduler_config is None else '?')}")


class Family:
    """A single-step family; subclasses set the class attributes and override what differs."""

    name = ''
    output_space = 'depth'            # 'depth' (larger = farther) or 'disparity'
    unet_in_channels = 4
    class_embedding = False           # the UNet takes class_labels
    needs_scheduler = False
    input_order = 'resize_then_normalise'
    resize_back = 'bilinear'
    own_pipeline = False
    release = ''                      # where the procedure is defined (for describe / docs)

    def __init__(self, info: CheckpointInfo | None = None, **options):
        self.info = info
        self.options = options

    def prepare(self, engine) -> None:
        """Called once the engine's modules are on their device and dtype."""

    def depth_latent(self, engine, image_latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_depth(self, decoded: torch.Tensor) -> torch.Tensor:
        return stages.depth_from_decoded(decoded.float())

    def normalise(self, depth: torch.Tensor) -> torch.Tensor:
        return depth

    def predict(self, engine, images) -> list:     # only for own_pipeline families
        raise NotImplementedError

    def describe(self) -> dict:
        return {'family': self.name, 'output_space': self.output_space}
