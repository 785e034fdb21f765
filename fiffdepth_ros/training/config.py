"""Training configuration: the paper's defaults, YAML files with base configs, dotted overrides.

    fiffdepth-train --config config/train_fiffdepth.yaml train.max_steps=100 data.root=/data

A YAML file may name ``base_config: [a.yaml, ...]`` (merged first, relative to the file), as
Marigold's configs do. Unknown keys are errors (a typo must not silently train with a default).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

# The paper's settings where it gives them (FiffDepth, ICCV 2025), Marigold's / E2E-FT's training
# conventions where it does not (optimiser, schedule, batch size, resolutions, data mixing).
DEFAULTS: dict = {
    'stage': 'fiffdepth',                  # autoencoder | generator | fiffdepth |
                                           # light_autoencoder (training/stages/)
    'output_dir': 'runs/fiffdepth',
    'model': {
        'init': 'stabilityai/stable-diffusion-2',   # any SD2-layout checkpoint (e.g. E2E-FT);
                                                    # not read by stage: autoencoder
        'architecture': {},                # stage autoencoder: {vae, unet, text_encoder} options
                                           # over stages/autoencoder.py's NANO_ARCHITECTURE
        'gradient_checkpointing': True,
        'ema': {'enabled': False, 'decay': 0.9999},
    },
    'method': {
        'gamma': 0.5,                      # b0 = gamma x0 + (1 - gamma) d0*
        'weights': {'mae': 1.0, 'gm': 0.5, 'traj': 0.2},
        'gm_scales': 4,                    # MiDaS multi-scale gradient matching (1 = single)
        'depth_quantile': 0.02,            # 2 % / 98 % quantiles -> [-1, 1]
        'target_space': 'depth',           # depth | disparity: what the model predicts
                                           # (Marigold's prediction_type; recorded in the
                                           # export's model_index.json, honoured at inference)
        'pseudo_label': {'conversion': 'inverse', 'max_depth_ratio': 20.0},
        'timesteps_min': 1,                # trajectory t uniform in [min, num_train_timesteps - 1]
        'real_supervision': 'filter',      # filter: U(U(x0,0),-1) vs pseudo-labels (the method);
                                           # direct: U(x0,0) vs them (ablation, step.py)
        'autoencoder': {                   # stage autoencoder (training/stages/autoencoder.py)
            'kl_weight': 1.0e-6,           # L1 + kl_weight x KL per latent element
            'depth_maps': False,           # also reconstruct the synthetic depth targets
            'crop_hw': None,               # [h, w]: train on one random crop per batch
        },
        'light_autoencoder': {             # stage light_autoencoder: model.init is the depth
                                           # model (folder, hub id or 'nano') distilled
            'parts': ['decoder', 'encoder'],       # which light parts to train
            'decoder': {},                 # model.light.LightDecoder options (TAESD's widths)
            'encoder': {},                 # model.light.LightEncoder options
            'weights': {'depth': 1.0, 'gradient': 0.5, 'latent': 1.0},
            'gm_scales': 3,                # gradient term: MiDaS' multi-scale matching
            'install': True,               # also write the parts into model.init's folder
            'model_family': 'auto',        # the teacher's family (as the engine's option)
            'teacher_precision': 'auto',   # auto (fp16 on CUDA, fp32 on CPU) | fp16 | fp32
        },
    },
    'data': {
        'root': '.',                       # relative dataset dirs are resolved against this
        'split_root': '.',                 # relative split files (Marigold's data_split/) too
        'synthetic': [],                   # list of dataset specs (see data/factory.py)
        'real': None,                      # {'images': ..., 'pseudo_labels': ..., ...}
        'lr_flip_p': 0.5,
        'zoom': None,                      # [p, max]: with probability p a sample is a random
                                           # crop 1/z of its size (z log-uniform in [1, max]),
                                           # resized back: objects seen larger than rendered
        'num_workers': 2,
    },
    'export': {
        'default_processing_resolution': 768,   # model_index.json: the longer side the tools
                                                # run the model at unless told otherwise
    },
    'validation': {
        'datasets': [],                    # held-out synthetic specs, evaluated with GT
        'every': 500,
        'max_images': 64,
        'processing_res': 0,               # 0 = the dataset's resolution
    },
    'train': {
        'seed': 2024,
        'max_steps': 30000,
        'batch_size_synthetic': 2,         # per process and micro-step
        'batch_size_real': 2,              # half synthetic, half real (the paper)
        'gradient_accumulation_steps': 8,  # 1 GPU: 16 + 16 images per update
        'mixed_precision': 'bf16',         # no | fp16 | bf16
        'optimizer': {'name': 'adam', 'lr': 3.0e-5, 'betas': [0.9, 0.999], 'eps': 1.0e-8,
                      'weight_decay': 0.0},
        'lr_schedule': {'name': 'exponential', 'warmup_steps': 100, 'total_steps': 25000,
                        'final_ratio': 0.01},
        'max_grad_norm': 1.0,
        'checkpoint_every': 500,
        'keep_checkpoints': 3,
        'log_every': 10,
        'progress_bar': True,
    },
}

# Keys whose values are free-form dicts or lists (not checked key by key).
_OPEN = {('data', 'synthetic'), ('data', 'real'), ('validation', 'datasets'),
         ('model', 'architecture'), ('method', 'light_autoencoder', 'decoder'),
         ('method', 'light_autoencoder', 'encoder')}


class ConfigError(ValueError):
    """A configuration that cannot train: the message names the key."""


def _merge(base: dict, update: dict, path: tuple = ()) -> dict:
    for key, value in update.items():
        where = path + (key,)
        if key not in base:
            raise ConfigError(f"unknown configuration key '{'.'.join(where)}'")
        if isinstance(base[key], dict) and isinstance(value, dict) and where not in _OPEN:
            _merge(base[key], value, where)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _read_yaml(path: Path, seen: tuple = ()) -> list[dict]:
    """The file and its base configs, bases first."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f'base_config cycle through {path}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f'cannot read training config {path}: {exc}') from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f'training config {path} is not valid YAML: {exc}') from exc
    if not isinstance(data, dict):
        raise ConfigError(f'training config {path} must be a mapping')
    bases = data.pop('base_config', None) or []
    layers = []
    for base in [bases] if isinstance(bases, str) else bases:
        layers += _read_yaml(path.parent / base, seen + (path.resolve(),))
    return layers + [data]


def parse_override(text: str) -> dict:
    """'train.max_steps=100' -> {'train': {'max_steps': 100}} (the value parsed as YAML)."""
    if '=' not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, value = text.split('=', 1)
    parsed = yaml.safe_load(value) if value != '' else None
    out: dict = {}
    node = out
    parts = key.strip().split('.')
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parsed
    return out


def load_config(path=None, overrides=()) -> dict:
    """DEFAULTS <- YAML (with its bases) <- overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    for layer in _read_yaml(Path(path)) if path else []:
        _merge(cfg, layer)
    for text in overrides:
        _merge(cfg, parse_override(text))
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    train, method = cfg['train'], cfg['method']
    from .stages import STAGES
    if cfg['stage'] not in STAGES:
        raise ConfigError(f"stage must be one of {sorted(STAGES)}, got '{cfg['stage']}'")
    if train['mixed_precision'] is False:      # YAML 1.1 reads a bare `no` as false
        train['mixed_precision'] = 'no'
    if train['mixed_precision'] not in ('no', 'fp16', 'bf16'):
        raise ConfigError("train.mixed_precision must be 'no', 'fp16' or 'bf16'")
    for key in ('max_steps', 'gradient_accumulation_steps', 'checkpoint_every', 'log_every'):
        if int(train[key]) < 1:
            raise ConfigError(f'train.{key} must be >= 1')
    if int(train['batch_size_synthetic']) < 1 and int(train['batch_size_real']) < 1:
        raise ConfigError('train.batch_size_synthetic and batch_size_real are both 0')
    if train['optimizer']['name'] not in ('adam', 'adamw', 'sgd'):
        raise ConfigError("train.optimizer.name must be 'adam', 'adamw' or 'sgd'")
    if train['lr_schedule']['name'] not in ('exponential', 'constant'):
        raise ConfigError("train.lr_schedule.name must be 'exponential' or 'constant'")
    if not 0.0 <= float(method['gamma']) <= 1.0:
        raise ConfigError('method.gamma must be in [0, 1]')
    if int(method['gm_scales']) < 1:
        raise ConfigError('method.gm_scales must be >= 1')
    from .step import REAL_SUPERVISION
    if method['real_supervision'] not in REAL_SUPERVISION:
        raise ConfigError(f"method.real_supervision must be one of {list(REAL_SUPERVISION)}, "
                          f"got {method['real_supervision']!r}")
    from .targets import PSEUDO_LABEL_CONVERSIONS, TARGET_SPACES
    if method['target_space'] not in TARGET_SPACES:
        raise ConfigError(f"method.target_space must be one of {list(TARGET_SPACES)}, "
                          f"got {method['target_space']!r}")
    zoom = cfg['data']['zoom']
    if zoom is not None and not (isinstance(zoom, (list, tuple)) and len(zoom) == 2
                                 and 0.0 <= float(zoom[0]) <= 1.0 and float(zoom[1]) >= 1.0):
        raise ConfigError(f'data.zoom must be null or [probability in [0, 1], max zoom >= 1], '
                          f'got {zoom!r}')
    if int(cfg['export']['default_processing_resolution']) < 0:
        raise ConfigError('export.default_processing_resolution must be >= 0')
    if method['pseudo_label']['conversion'] not in PSEUDO_LABEL_CONVERSIONS:
        raise ConfigError(f"method.pseudo_label.conversion must be one of "
                          f"{sorted(PSEUDO_LABEL_CONVERSIONS)}")
    if not isinstance(cfg['data']['synthetic'], list):
        raise ConfigError('data.synthetic must be a list of dataset specs')
    if int(train['batch_size_synthetic']) > 0 and not cfg['data']['synthetic']:
        raise ConfigError('data.synthetic is empty but train.batch_size_synthetic > 0')
    if int(train['batch_size_real']) > 0 and not cfg['data']['real']:
        raise ConfigError('data.real is not set but train.batch_size_real > 0')
    light = method['light_autoencoder']
    parts = light['parts'] if isinstance(light['parts'], list) else [light['parts']]
    if not parts or set(parts) - {'decoder', 'encoder'}:
        raise ConfigError("method.light_autoencoder.parts must list 'decoder' and/or 'encoder'")
    if set(light['weights']) - {'depth', 'gradient', 'latent'}:
        raise ConfigError('method.light_autoencoder.weights: keys depth, gradient, latent')
