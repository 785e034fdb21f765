"""The training loop: Hugging Face accelerate (one or many GPUs and nodes, mixed precision,
gradient accumulation), exact checkpoints, TensorBoard logs, validation, export.

What is trained, its loss, validation and export come from the configuration's ``stage``
(training/stages/: autoencoder, generator, fiffdepth, light_autoencoder); this loop is the same
for all of them.

Run through ``fiffdepth-train`` (or ``accelerate launch -m fiffdepth_ros.cli.train``). Everything
that can be wrong with the data or the initial checkpoint is checked before the models load.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from .config import ConfigError
from .data.factory import build_synthetic, build_training_data
from .data.mixing import BatchPlan, PlannedSamples, PlanSampler, collate
from .stages import get_stage

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = 'step-'


def lr_factor(step: int, schedule: dict) -> float:
    """Marigold / E2E-FT schedule: linear warm-up from 0, then exponential decay reaching
    ``final_ratio`` at ``total_steps``, constant after."""
    if schedule['name'] == 'constant':
        warm = int(schedule.get('warmup_steps', 0))
        return min(1.0, step / warm) if warm > 0 else 1.0
    warm, total = int(schedule['warmup_steps']), int(schedule['total_steps'])
    final = float(schedule['final_ratio'])
    if step < warm:
        return step / warm
    if step >= total:
        return final
    return float(math.exp((step - warm) / max(1, total - warm) * math.log(final)))


def make_optimizer(params, opt: dict):
    kwargs = dict(lr=float(opt['lr']), weight_decay=float(opt.get('weight_decay', 0.0)))
    if opt['name'] == 'sgd':
        return torch.optim.SGD(params, **kwargs)
    cls = torch.optim.Adam if opt['name'] == 'adam' else torch.optim.AdamW
    return cls(params, betas=tuple(opt.get('betas', (0.9, 0.999))),
               eps=float(opt.get('eps', 1e-8)), **kwargs)


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    if resume != 'latest':
        path = Path(resume)
        if not (path / 'trainer_state.json').is_file():
            raise ConfigError(f'--resume {resume}: not a training checkpoint folder')
        return path
    found = sorted((output_dir / 'checkpoints').glob(CHECKPOINT_PREFIX + '*'),
                   key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    found = [p for p in found if (p / 'trainer_state.json').is_file()]
    if not found:
        raise ConfigError(f'--resume latest: no checkpoint in {output_dir / "checkpoints"}')
    return found[-1]


class Trainer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.output_dir = Path(cfg['output_dir'])
        tcfg = cfg['train']
        self.stage = get_stage(cfg['stage'])
        # 1. Data and the initial checkpoint: checked before anything heavy happens.
        self.synthetic, self.probs, self.real = build_training_data(
            cfg['data'], need_synthetic=int(tcfg['batch_size_synthetic']) > 0,
            need_real=int(tcfg['batch_size_real']) > 0, need_labels=self.stage.needs_labels)
        self.validation_sets = []
        for spec in cfg['validation']['datasets']:
            dataset = build_synthetic(spec, cfg['data']['root'], cfg['data']['split_root'])
            dataset.check_files()
            self.validation_sets.append((spec.get('name') or spec['kind'], dataset))
        self.init_root = self.stage.init_root(cfg)
        # 2. accelerate.
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed
        self.accelerator = Accelerator(
            gradient_accumulation_steps=int(tcfg['gradient_accumulation_steps']),
            mixed_precision=tcfg['mixed_precision'], log_with='tensorboard',
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / 'logs')))
        set_seed(int(tcfg['seed']))
        self.history: list[dict] = []      # every logged record, also kept in memory
        self._load_models()

    # ------------------------------------------------------------------ setup
    def _load_models(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        self.weight_dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(
            acc.mixed_precision, torch.float32)
        module = self.stage.build(self)          # the stage's frozen parts land on self too
        tcfg = cfg['train']
        optimizer = make_optimizer(module.parameters(), tcfg['optimizer'])
        # Stepped once per update by the loop itself (accelerate would step a prepared
        # scheduler once per process), checkpointed through register_for_checkpointing.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, tcfg['lr_schedule']))
        self.model, self.optimizer = acc.prepare(module, optimizer)
        setattr(self, self.stage.trains, self.model)     # trainer.unet, trainer.autoencoder
        acc.register_for_checkpointing(self.lr_scheduler)
        self.ema = None
        if cfg['model']['ema']['enabled']:
            from diffusers.training_utils import EMAModel
            self.ema = EMAModel(acc.unwrap_model(self.model).parameters(),
                                decay=float(cfg['model']['ema']['decay']))
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)

    def _loader(self, start_step: int):
        tcfg, acc = self.cfg['train'], self.accelerator
        accum = int(tcfg['gradient_accumulation_steps'])
        plan = BatchPlan([len(d) for d in self.synthetic], self.probs,
                         len(self.real) if self.real else 0, tcfg['batch_size_synthetic'],
                         tcfg['batch_size_real'], tcfg['seed'], acc.num_processes,
                         acc.process_index, self.cfg['data']['lr_flip_p'])
        sampler = PlanSampler(plan, start_step * accum, int(tcfg['max_steps']) * accum)
        workers = int(self.cfg['data']['num_workers'])
        return torch.utils.data.DataLoader(
            PlannedSamples(self.synthetic, self.real, self.cfg['data']['zoom']),
            batch_sampler=sampler,
            collate_fn=collate, num_workers=workers, pin_memory=acc.device.type == 'cuda',
            persistent_workers=False, prefetch_factor=4 if workers else None)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Path:
        acc = self.accelerator
        path = self.output_dir / 'checkpoints' / f'{CHECKPOINT_PREFIX}{step:07d}'
        acc.save_state(str(path))
        if acc.is_main_process:
            (path / 'trainer_state.json').write_text(json.dumps(
                {'step': step, 'num_processes': acc.num_processes,
                 'config': self.cfg}, indent=1, default=str))
            keep = int(self.cfg['train']['keep_checkpoints'])
            found = sorted((self.output_dir / 'checkpoints').glob(CHECKPOINT_PREFIX + '*'))
            for old in found[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, resume: str) -> int:
        path = find_checkpoint(self.output_dir, resume)
        state = json.loads((path / 'trainer_state.json').read_text())
        if state.get('num_processes') != self.accelerator.num_processes:
            log.warning('resuming a %s-process run with %s processes: the batch plan follows '
                        'the new process count', state.get('num_processes'),
                        self.accelerator.num_processes)
        self.accelerator.load_state(str(path))
        return int(state['step'])

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict:
        """The stage's validation metrics, with the EMA weights when EMA is enabled."""
        if not self.validation_sets:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        try:
            return self.stage.validate(self, model)
        finally:
            if self.ema is not None:
                self.ema.restore(model.parameters())
            model.train(was_training)

    # ------------------------------------------------------------------ training
    def _micro_step(self, batch) -> dict:
        acc = self.accelerator
        with acc.accumulate(self.model):
            terms = self.stage.loss(self, batch)     # the stage autocasts its model passes
            acc.backward(terms['loss'])
            if acc.sync_gradients and float(self.cfg['train']['max_grad_norm']) > 0:
                acc.clip_grad_norm_(self.model.parameters(),
                                    float(self.cfg['train']['max_grad_norm']))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach().float() for k, v in terms.items()}

    def train(self, resume: str | None = None) -> Path:
        from tqdm.auto import tqdm
        acc, tcfg = self.accelerator, self.cfg['train']
        step = self.load_checkpoint(resume) if resume else 0
        max_steps, accum = int(tcfg['max_steps']), int(tcfg['gradient_accumulation_steps'])
        if acc.is_main_process:
            acc.init_trackers('fiffdepth', config=_flat_hparams(self.cfg))
        images_per_step = (int(tcfg['batch_size_synthetic']) * bool(self.synthetic)
                           + int(tcfg['batch_size_real']) * bool(self.real)) \
            * acc.num_processes * accum
        bar = tqdm(total=max_steps, initial=step, desc=f'fiffdepth-train {self.stage.name}', unit='step',
                   disable=not (acc.is_local_main_process and tcfg['progress_bar']))
        sums: dict[str, torch.Tensor] = {}
        n_logged, t_last = 0, time.perf_counter()
        batches = iter(self._loader(step))
        while step < max_steps:
            for _ in range(accum):
                for key, value in self._micro_step(next(batches)).items():
                    sums[key] = sums.get(key, 0.0) + value / accum
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(acc.unwrap_model(self.model).parameters())
            step += 1
            n_logged += 1
            bar.update(1)
            if step % int(tcfg['log_every']) == 0 or step == max_steps:
                now = time.perf_counter()
                logs = {f'loss/{k}': float(acc.reduce(v, 'mean')) / n_logged
                        for k, v in sorted(sums.items())}
                logs['lr'] = self.lr_scheduler.get_last_lr()[0]
                logs['throughput/images_per_s'] = images_per_step * n_logged / (now - t_last)
                if acc.device.type == 'cuda':
                    logs['memory/max_allocated_gib'] = torch.cuda.max_memory_allocated() / 2**30
                acc.log(logs, step=step)
                self.history.append({'step': step, **logs})
                bar.set_postfix(loss=f"{logs['loss/loss']:.4f}", lr=f"{logs['lr']:.2e}")
                if bar.disable and acc.is_local_main_process:
                    # No bar (progress_bar: false, e.g. a log file): the same progress as lines.
                    log.info('%s step %d/%d: loss %.4f, lr %.2e, %.1f images/s',
                             self.stage.name, step, max_steps, logs['loss/loss'], logs['lr'],
                             logs['throughput/images_per_s'])
                sums, n_logged, t_last = {}, 0, now
            if step % int(self.cfg['validation']['every']) == 0 or step == max_steps:
                if acc.is_main_process:
                    results = self.validate()
                    if results:
                        acc.log(results, step=step)
                        self.history.append({'step': step, **results})
                        log.info('step %d validation: %s', step, results)
                acc.wait_for_everyone()
            if step % int(tcfg['checkpoint_every']) == 0 or step == max_steps:
                self.save_checkpoint(step)
        bar.close()
        out = self.output_dir / 'model'
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            if self.ema is not None:
                self.ema.store(model.parameters())
                self.ema.copy_to(model.parameters())
            self.stage.export(self, model, out)
            if self.ema is not None:
                self.ema.restore(model.parameters())
        acc.wait_for_everyone()
        acc.end_training()
        return out


def _flat_hparams(cfg: dict, prefix: str = '') -> dict:
    """TensorBoard's hparams take scalars only."""
    out = {}
    for key, value in cfg.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flat_hparams(value, name + '.'))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def train(cfg: dict, resume: str | None = None) -> Path:
    return Trainer(cfg).train(resume)
