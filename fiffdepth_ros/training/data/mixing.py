"""The batch plan: which samples every process reads at every micro-step, as a pure function of
(seed, micro-step, rank).

Nothing depends on how many batches were read before, so a resumed run continues exactly where it
stopped (the data position is the step counter), and N processes read exactly the slices of the
global batch that one process with N times the batch would read. Each micro-step draws one
synthetic dataset (by its probability: sets of different resolutions are never mixed in a batch,
as in Marigold) and, separately, real images; within a dataset the order is a fresh permutation
per epoch. Every sample carries its own seed (flip, crop, trajectory timestep and noise).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

_SYN, _REAL = 1, 2


@lru_cache(maxsize=8)
def _permutation(seed: int, kind: int, dataset: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, kind, dataset, epoch]).permutation(size)


class BatchPlan:
    def __init__(self, synthetic_sizes, synthetic_probs, real_size, batch_synthetic,
                 batch_real, seed, world_size=1, rank=0, flip_p=0.5):
        self.sizes = [int(s) for s in synthetic_sizes]
        self.probs = np.asarray(synthetic_probs, dtype=np.float64)
        self.real_size = int(real_size)
        self.bs = int(batch_synthetic) if self.sizes else 0
        self.br = int(batch_real) if self.real_size else 0
        self.seed, self.world, self.rank = int(seed), int(world_size), int(rank)
        self.flip_p = float(flip_p)

    def _stream(self, kind, dataset, size, position) -> int:
        epoch, offset = divmod(position, size)
        return int(_permutation(self.seed, kind, dataset, epoch, size)[offset])

    def micro_batch(self, u: int) -> list[tuple]:
        """Descriptors of this process's samples at global micro-step ``u``:
        ('syn', dataset, index, flip, seed) and ('real', index, flip, crop_u, crop_v, seed)."""
        out = []
        if self.bs:
            dataset = int(np.random.default_rng([self.seed, u, 0]).choice(
                len(self.sizes), p=self.probs))
            g = self.bs * self.world
            for i in range(self.rank * self.bs, (self.rank + 1) * self.bs):
                rng = np.random.default_rng([self.seed, u, _SYN, i])
                index = self._stream(_SYN, dataset, self.sizes[dataset], u * g + i)
                out.append(('syn', dataset, index, bool(rng.random() < self.flip_p),
                            int(rng.integers(2 ** 62))))
        if self.br:
            g = self.br * self.world
            for i in range(self.rank * self.br, (self.rank + 1) * self.br):
                rng = np.random.default_rng([self.seed, u, _REAL, i])
                index = self._stream(_REAL, 0, self.real_size, u * g + i)
                flip, cu, cv = bool(rng.random() < self.flip_p), rng.random(), rng.random()
                out.append(('real', index, flip, float(cu), float(cv),
                            int(rng.integers(2 ** 62))))
        return out


class PlanSampler:
    """Batch sampler for DataLoader: the plan's micro-batches from ``start`` (a micro-step)."""

    def __init__(self, plan: BatchPlan, start: int, stop: int):
        self.plan, self.start, self.stop = plan, int(start), int(stop)

    def __iter__(self):
        for u in range(self.start, self.stop):
            yield self.plan.micro_batch(u)

    def __len__(self) -> int:
        return self.stop - self.start


def zoom_draw(seed: int, zoom) -> tuple[float, float, float] | None:
    """``zoom`` = [p, max] (``data.zoom``): with probability p, (z, u, v): a crop 1/z of the
    sample's size (z log-uniform in [1, max]) at relative place (u, v); else None. Drawn from
    the sample's own seed, so a resumed or multi-process run reads the same crops."""
    if not zoom or float(zoom[0]) <= 0.0 or float(zoom[1]) <= 1.0:
        return None
    rng = np.random.default_rng([int(seed), 0x200])
    if rng.random() >= float(zoom[0]):
        return None
    z = float(np.exp(rng.uniform(0.0, np.log(float(zoom[1])))))
    return z, float(rng.random()), float(rng.random())


class PlannedSamples(torch.utils.data.Dataset):
    """Indexed by descriptors from the plan (a map-style dataset with tuple keys); ``zoom``:
    the data.zoom augmentation (see zoom_draw)."""

    def __init__(self, synthetic, real, zoom=None):
        self.synthetic, self.real = list(synthetic), real
        self.zoom = zoom

    def __len__(self) -> int:
        return sum(len(d) for d in self.synthetic) + (len(self.real) if self.real else 0)

    def __getitem__(self, descriptor):
        if descriptor[0] == 'syn':
            _, dataset, index, flip, seed = descriptor
            sample = self.synthetic[dataset].load(index, flip=flip,
                                                  zoom=zoom_draw(seed, self.zoom))
        else:
            _, index, flip, cu, cv, seed = descriptor
            zoom = zoom_draw(seed, self.zoom)
            sample = self.real.load(index, flip=flip, crop_u=cu, crop_v=cv,
                                    zoom=1.0 if zoom is None else zoom[0])
        sample['kind'] = descriptor[0]
        sample['seed'] = seed
        return sample


def collate(samples: list[dict]) -> dict:
    """-> {'syn': {'rgb', 'depth', 'valid', 'seed'}, 'real': {'rgb', 'label', 'seed'}} (a part
    is absent when the micro-batch has none of that kind)."""
    out = {}
    for kind in ('syn', 'real'):
        group = [s for s in samples if s['kind'] == kind]
        if not group:
            continue
        keys = [k for k in group[0] if k not in ('kind', 'seed')]
        part = {k: torch.stack([s[k] for s in group]) for k in keys}
        part['seed'] = torch.tensor([s['seed'] for s in group], dtype=torch.int64)
        out[kind] = part
    return out
