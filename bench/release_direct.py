"""The released FiffDepth ``DirectPipeline.__call__`` (yunpeng1998/FiffDepth,
fiffdepth/direct_pipeline.py), step by step, for timing against the engine on the same weights.

The release needs torchvision (not installable here) for two calls: ``pil_to_tensor`` and
``resize(..., antialias=True)`` of a uint8 tensor; both are written out with torch below
(HWC array to CHW tensor; to float32, antialiased bilinear, round to uint8). Everything else is
the release's order of work on the checkpoint's plain diffusers modules (NCHW, diffusers'
default attention): the empty-prompt embedding encoded on the first call and kept, the VAE
encoder's mean scaled by 0.18215, the UNet at t = 0, the decoder, the channel mean, clip and
shift to [0, 1], the resize back to the input size with antialiasing, clip, ``.numpy()``.
``color_map=None`` is assumed (the release colourises with matplotlib by default; the engine
does not colourise, so that cost is left out of the comparison). The release hard-codes the
SD VAE's latent scale 0.18215; a checkpoint whose VAE has another ``scaling_factor`` (nano's own
autoencoder) gives other values there than in the engine, at the same cost.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LATENT_SCALE = 0.18215


class ReleaseDirect:
    """DirectPipeline's per-frame work on the modules of ``path`` (a released-layout folder)."""

    def __init__(self, path: str | Path, processing_res: int):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
        path = Path(path)
        self.vae = AutoencoderKL.from_pretrained(path / 'vae').eval()
        self.unet = UNet2DConditionModel.from_pretrained(path / 'unet').eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(path / 'tokenizer')
        self.text_encoder = CLIPTextModel.from_pretrained(path / 'text_encoder').eval()
        self.processing_res = processing_res
        self.empty_text_embed = None

    @staticmethod
    def _resize_uint8(rgb: torch.Tensor, size) -> torch.Tensor:
        x = F.interpolate(rgb.to(torch.float32), size=size, mode='bilinear',
                          align_corners=False, antialias=True)
        return torch.round(x).clamp(0, 255).to(torch.uint8)

    def _encode_empty_text(self) -> None:
        ids = self.tokenizer('', padding='do_not_pad', max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors='pt').input_ids
        self.empty_text_embed = self.text_encoder(ids)[0]

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """DirectPipeline(image, processing_res, color_map=None).depth_np"""
        pil = Image.fromarray(image).convert('RGB')
        rgb = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None]   # pil_to_tensor
        h, w = rgb.shape[-2:]
        if self.processing_res > 0:
            factor = min(self.processing_res / w, self.processing_res / h)
            rgb = self._resize_uint8(rgb, (int(h * factor), int(w * factor)))
        x = rgb / 255.0 * 2.0 - 1.0
        moments = self.vae.quant_conv(self.vae.encoder(x))
        latent = torch.chunk(moments, 2, dim=1)[0] * LATENT_SCALE
        if self.empty_text_embed is None:
            self._encode_empty_text()
        embed = self.empty_text_embed.repeat((latent.shape[0], 1, 1))
        t = torch.zeros(latent.shape[0], dtype=torch.long)
        depth_latent = self.unet(latent, t, encoder_hidden_states=embed).sample
        stacked = self.vae.decoder(self.vae.post_quant_conv(depth_latent / LATENT_SCALE))
        depth = (torch.clip(stacked.mean(dim=1, keepdim=True), -1.0, 1.0) + 1.0) / 2.0
        depth = F.interpolate(depth, size=(h, w), mode='bilinear', align_corners=False,
                              antialias=True)
        return depth.clip(0, 1).squeeze().cpu().numpy()
