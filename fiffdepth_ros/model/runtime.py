"""Loading the model from the shared parameters, and CPU threading, for the node and process_bag."""
from __future__ import annotations

import os
from typing import Any


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_cpu_threads(requested: int | None = None) -> int:
    """Torch's CPU threads: one core fewer than available unless ``requested``.

    The node and process_bag run the model beside threads of their own (ROS executor, bag
    reading and writing). If torch's OpenMP threads take every core, each parallel region waits
    for a thread the OS preempted: measured here (2 cores), a tiny model went from 0.24 s to
    4.7 s per frame next to one busy thread, while one torch thread took 0.06-0.14 s.
    """
    import torch
    threads = requested or max(1, cpu_cores() - 1)
    torch.set_num_threads(threads)
    return threads


def load_estimator(p: dict[str, Any]):
    """The model named by validated parameters (fiffdepth_ros.params); raises ModelLoadError,
    ParameterError or ValueError with a message for the user."""
    from ..params import ParameterError
    from .estimator import DepthEstimator
    if not p['model']:
        # Explicitly empty (its default is the built-in 'nano'): a templating slip should not
        # quietly start the demonstration model on a robot.
        raise ParameterError("parameter 'model' is empty: set it to a depth checkpoint "
                             '(FiffDepth, E2E-FT, Lotus-D or Marigold) folder or Hugging Face '
                             "hub id, or to 'nano' (the built-in demonstration model; see the "
                             'README)')
    return DepthEstimator.from_pretrained(
        p['model'], device=p['device'], precision=p['precision'],
        processing_res=p['processing_res'], upcast_vae=p['upcast_vae'], compile=p['compile'],
        model_family=p['model_family'], denoising_steps=p['denoising_steps'],
        ensemble_size=p['ensemble_size'], seed=p['seed'], autoencoder=p['autoencoder'],
        light_path=p['light_path'], runtime=p['runtime'], providers=p['runtime_providers'])


def model_line(info: dict) -> str:
    """'nano (family fiffdepth; built-in, /.../resources/nano) on cpu (fp32, processing_res
    256)' from DepthEstimator.describe(): which model, which family, where from, how it runs."""
    source = info.get('model_source')
    where = f'; {source}' if source else ''
    light = info.get('autoencoder', 'full')
    light = f', autoencoder {light}' if light != 'full' else ''
    runtime = info.get('runtime', 'torch')
    if runtime != 'torch':
        where += f"; {runtime} on {', '.join(info.get('providers', ())) or '?'}"
        if info.get('static_size'):
            where += f", static {info['static_size']}"
    return (f"{info.get('model')} (family {info.get('family')}{where}) on {info.get('device')} "
            f"({info.get('precision')}, processing_res {info.get('processing_res')}{light})")
