#!/usr/bin/env python3
"""GPU check kit: what a CUDA machine (desktop GPU or Jetson) should confirm before a robot
relies on this package, in one run that writes report.json and report.md.

Sections, each independent (a row that cannot run says 'skipped: <reason>' and the rest goes
on) and each with a time budget, its share of --time-limit, so the whole run stays inside it:

  precision  fp16 and bf16 against fp32 on the same device, per family (fiffdepth, e2e_ft,
             lotus_d, lotus_d_disparity, marigold at 1 step), on tiny random weights and on
             SD2-size random weights (CUDA only): max and mean |difference| / fp32 range,
             NaN/inf in the image latent, the depth latent and the output, and whether the
             fp16 VAE decode overflowed (the engine then decodes again in fp32)
  timings    the single pass (VAE encode, UNet, VAE decode) of SD2-size FiffDepth at 480x640 in
             fp16: eager channels_last (the engine's layout; also the whole frame with host
             pre/post-processing), eager contiguous, a CUDA graph of the eager pass
             (torch.cuda.graph), torch.compile (inductor) and torch.compile
             mode='reduce-overhead' (CUDA graphs through inductor): median ms, peak memory
  finish     DepthPipeline.finish on the numpy path against the torch path on the model's device
             (fiffdepth_ros.finish), synthetic room 640x480 with a 32-line LiDAR: bytes equal
             or how far apart, median ms of each
  overlap    bench/overlap.py with the model on the device (subprocess)
  train      bench/train_step.py: one training step at 480x640, bf16 autocast, gradient
             checkpointing (subprocess): time and peak memory
  light      one distillation step of the light autoencoder (bench/light_autoencoder.py's, the
             stage's own loss): SD2-size teacher, 8 images at 480x640, bf16 autocast: step time
             and peak memory, for the README's GPU sizing of that stage
  scale      fit + local correction of a 640x480 frame as the node runs them (ScaleRecovery, guide
             'both' with the frame's RGB), a 20k-point LiDAR sweep and 100 random anchors: the
             host path (compiled where numba is installed) against the torch finishing path on
             the device (DeviceFinisher.recover): median ms of each, interleaved, and how far
             apart their metric depths are (the 5 ms target of the scale-recovery bench)
  runtimes   the exported graph (fiffdepth-export) of --model on the runtimes present: torch
             CPU / CUDA, ONNX Runtime TensorRT / CUDA / CPU, OpenVINO; load s, first frame s,
             median ms, max difference / range against torch fp32 on the CPU

Without CUDA the CUDA rows say 'skipped: CUDA is not available' and the CPU rows run (the CPU
smoke test, --smoke: tiny sizes, 2 repeats, SD2 sizes skipped). The JSON and Markdown are
rewritten after every section, so a run stopped from outside still leaves what it measured;
at --time-limit the kit itself stops, marks the rest as not run and exits 0.

    python bench/gpu_check.py [--out gpu_check] [--smoke] [--time-limit 420]
                              [--sections precision,timings,finish,scale,overlap,train,
                                          light,runtimes]
                              [--model nano] [--height 192 --width 256] [--repeats 10]
    scripts/gpu_check.sh OUT [--wheels DIR] [-- arguments of this script]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))                 # bench/timing.py, gpu_models.py

import gpu_models  # noqa: E402
from timing import interleaved_ms  # noqa: E402

FAMILIES = ('fiffdepth', 'e2e_ft', 'lotus_d', 'lotus_d_disparity', 'marigold')
NO_CUDA = 'skipped: CUDA is not available'
# Section: (share of the time limit, in seconds of a 430 s run; title). The budgets are these
# shares scaled to --time-limit over the sections that run.
SECTIONS = {
    'precision': (110, 'a. fp16 and bf16 against fp32'),
    'timings': (130, 'b. SD2-size single pass at 480x640, fp16'),
    'finish': (25, 'c. finishing: torch on the device against numpy'),
    'overlap': (45, 'd. bench/overlap.py with the model on the device'),
    'train': (75, 'e. one training step, bf16, gradient checkpointing'),
    'runtimes': (45, 'f. the exported graph on the runtimes present'),
    'light': (40, 'g. light autoencoder: one distillation step (fiffdepth-train stage '
                  'light_autoencoder), bf16'),
    'scale': (20, 'h. metric scale: fit + local correction at 640x480, host against torch on '
                  'the device'),
}
# Run in this order (the report keeps a-h): the timings last, where its torch.compile rows
# (a minute or more each for an SD2 UNet + VAE) can take whatever time the others left.
ORDER = ('precision', 'finish', 'scale', 'overlap', 'train', 'light', 'runtimes', 'timings')


def environment() -> dict:
    env = {'python': platform.python_version(), 'machine': platform.machine(),
           'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
           'load_average': os.getloadavg(), 'cpus': os.cpu_count()}
    if env['cuda']:
        env['gpu'] = torch.cuda.get_device_name(0)
        env['cuda_version'] = torch.version.cuda
        env['gpu_memory_gib'] = round(torch.cuda.get_device_properties(0).total_memory / 2**30,
                                      1)
    from importlib import metadata
    # Versions from the installed metadata (importing them all would cost seconds).
    for module, dists in (('diffusers', ('diffusers',)), ('transformers', ('transformers',)),
                          ('cv2', ('opencv-python-headless', 'opencv-python',
                                   'opencv-contrib-python')),
                          ('onnx', ('onnx',)),
                          ('onnxruntime', ('onnxruntime-gpu', 'onnxruntime')),
                          ('openvino', ('openvino',)), ('rclpy', ())):
        if importlib.util.find_spec(module) is None:
            env[module] = 'missing'
            continue
        env[module] = 'present'
        for dist in dists:
            try:
                env[module] = metadata.version(dist) + ('' if dist == module else f' ({dist})')
                break
            except metadata.PackageNotFoundError:
                pass
    if env['onnxruntime'] != 'missing':
        try:
            import onnxruntime
            env['onnxruntime_providers'] = onnxruntime.get_available_providers()
        except Exception as exc:                        # a broken install: say so
            env['onnxruntime'] += f' (import failed: {type(exc).__name__})'
    return env


def frame(h: int, w: int) -> np.ndarray:
    """A smooth pattern with noise: a fixed, realistic-ish uint8 RGB input."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
                   + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'skipped: {type(exc).__name__}: {text[0][:300] if text else ""}'.rstrip(': ')


def sync(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Report:
    """Rows by section; saved after every section (and by the watchdog at the time limit)."""

    def __init__(self, args, env: dict):
        self.args, self.lock = args, threading.RLock()
        self.data = {'environment': env, 'smoke': args.smoke, 'time_limit_s': args.time_limit,
                     'sections': {name: {'title': SECTIONS[name][1], 'rows': []}
                                  for name in args.sections}}
        self.current = ''

    def add(self, section: str, row: dict) -> dict:
        with self.lock:
            self.data['sections'][section]['rows'].append(row)
        return row

    def note(self, section: str, **fields) -> None:
        with self.lock:
            self.data['sections'][section].update(fields)

    def save(self) -> str:
        with self.lock:
            self.data['environment']['load_average_now'] = os.getloadavg()
            text = json.dumps(self.data, indent=2, default=str)
            md = markdown(self.data)
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / 'report.json').write_text(text + '\n')
        (self.args.out / 'report.md').write_text(md)
        return md


class Budget:
    """A section's deadline: its own budget, and never eating the budgets of the sections
    after it."""

    def __init__(self, seconds: float, end: float):
        self.end = min(time.monotonic() + seconds, end)

    def left(self) -> float:
        return self.end - time.monotonic()

    def spent(self, need: float = 0.0) -> bool:
        return self.left() < need


# ---------------------------------------------------------------------------- a. precision
def staged_predict(engine, image) -> tuple[np.ndarray, dict]:
    """engine.predict through its stages (the torch runtime's order), noting non-finite values
    after each one; families with their own pipeline (Marigold) run predict."""
    notes = {}
    if engine.strategy.own_pipeline:
        return engine.predict(image), notes
    batch = engine.preprocess([image])
    latent = engine.encode(batch.pixels)
    depth_latent = engine.run_unet(latent)
    for name, tensor in (('image latent', latent), ('depth latent', depth_latent)):
        if not bool(torch.isfinite(tensor).all()):
            notes.setdefault('non_finite', []).append(name)
    depth = engine.decode(depth_latent)
    if engine._warned_overflow:
        notes['decode'] = 'fp16/bf16 decode non-finite: decoded again in fp32'
    return engine.postprocess(depth, batch)[0], notes


def compare(out: np.ndarray, ref: np.ndarray) -> dict:
    span = float(np.nanmax(ref) - np.nanmin(ref))
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out.astype(np.float64) - ref)
    row = {'finite': finite, 'fp32_range': span}
    if finite and span > 0:
        row['max_diff_of_range'] = float(diff.max()) / span
        row['mean_diff_of_range'] = float(diff.mean()) / span
    return row


def section_precision(report: Report, budget: Budget, ctx: dict) -> None:
    # fp32 means fp32: cuDNN's default TF32 convolutions would round the reference itself.
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report.note('precision', reference='fp32 on the same device, TF32 off')
    try:
        _precision_rows(report, budget, ctx)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    # The timings need SD2 FiffDepth only; the training step (a subprocess) needs the memory.
    ctx['drop_modules'](keep=(('sd2', 'fiffdepth'),))


def _precision_rows(report: Report, budget: Budget, ctx: dict) -> None:
    args, device = ctx['args'], ctx['device']
    sizes = [('tiny', ctx['tiny_hw'], max(ctx['tiny_hw']))]
    sd2_hw = (480, 640)
    sizes.append(('sd2', sd2_hw, max(sd2_hw)))
    for size, (h, w), res in sizes:
        image = frame(h, w)
        for family in args.families:
            rows = [report.add('precision', {'row': f'{size} {family} {p}', 'size': size,
                                             'family': family, 'precision': p,
                                             'input': f'{h}x{w}', 'device': str(device)})
                    for p in ('fp16', 'bf16')]
            if size == 'sd2' and device.type != 'cuda':
                for row in rows:
                    row['status'] = NO_CUDA + ' (SD2 size runs on CUDA only)'
                continue
            if budget.spent(20 if size == 'sd2' else 1):
                for row in rows:
                    row['status'] = 'skipped: section time budget spent'
                continue
            try:
                mods = ctx['modules'](size, family)
                ref_engine, _ = gpu_models.make_engine(mods, family, str(device), 'fp32', res)
                ref, _ = staged_predict(ref_engine, image)
                del ref_engine
                free_memory()
            except Exception as exc:
                for row in rows:
                    row['status'] = reason(exc)
                continue
            for row in rows:
                try:
                    t0 = time.perf_counter()
                    engine, how = gpu_models.make_engine(mods, family, str(device),
                                                         row['precision'], res)
                    out, notes = staged_predict(engine, image)
                    row.update(compare(out, ref), how=how, seconds=round(
                        time.perf_counter() - t0, 2), **notes)
                    row['status'] = 'ok' if row['finite'] and not notes.get('non_finite') \
                        else 'non-finite values'
                    del engine
                    free_memory()
                except Exception as exc:
                    row['status'] = reason(exc)


# ---------------------------------------------------------------------------- b. timings
def peak_reset(device) -> None:
    if device.type == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device, base: int = 0):
    if device.type != 'cuda':
        return None
    sync(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20)


def timed(fn, device, repeats: int, warmup: int = 2, base: int = 0) -> dict:
    """Median / p10 / p90 ms of ``fn`` (synchronised) and the allocator peak across the
    timed calls, less ``base`` bytes (what was allocated before the engine was built)."""
    for _ in range(warmup):
        fn()
    sync(device)
    peak_reset(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {**ms_summary(times), 'peak_mb': peak_mb(device, base), 'runs': repeats}


def ms_summary(times) -> dict:
    """Median, p10 and p90 of ``times`` (ms), rounded to 0.01 ms, as the rows give them."""
    p50, p10, p90 = np.percentile(times, [50, 10, 90])
    return {'median_ms': round(float(p50), 2), 'p10_ms': round(float(p10), 2),
            'p90_ms': round(float(p90), 2)}


def depth_difference(ref, got) -> tuple[float, bool]:
    """(largest |got - ref| / |ref| where both are finite, 0 where none is; whether their
    NaN pixels are the same): how far two paths' depth images are apart."""
    a, b = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    worst = float((np.abs(a[ok] - b[ok]) / np.maximum(np.abs(a[ok]), 1e-9)).max()) \
        if ok.any() else 0.0
    return worst, bool(np.array_equal(np.isnan(a), np.isnan(b)))


def single_pass(engine):
    """The engine's single pass on a prepared input, without the fp16-overflow check (a host
    sync that a CUDA graph cannot hold): VAE encode, UNet, VAE decode, channel mean."""
    from fiffdepth_ros.model import stages

    @torch.inference_mode()
    def run(pixels):
        latent = engine.run_unet(engine.encode(pixels))
        return engine.strategy.to_depth(stages.decode_latent(engine.vae, latent,
                                                             engine.scaling_factor))
    return run


def compile_engine(engine, **options) -> None:
    """What DepthEstimator(compile=True) does, with torch.compile options."""
    engine.unet = torch.compile(engine.unet, **options)
    engine.vae.encoder = torch.compile(engine.vae.encoder, **options)
    engine.vae.decoder = torch.compile(engine.vae.decoder, **options)


def section_timings(report: Report, budget: Budget, ctx: dict) -> None:
    args, device = ctx['args'], ctx['device']
    cuda = device.type == 'cuda'
    size, (h, w) = ('sd2', (480, 640)) if cuda else ('tiny', ctx['tiny_hw'])
    precision = 'fp16' if cuda else 'fp32'
    report.note('timings', model=f'{size} fiffdepth, random weights', input=f'{h}x{w}',
                precision=precision, device=str(device))
    names = ['eager, channels_last (the engine)', 'whole frame: predict() (host pre/post)',
             'eager, contiguous', 'CUDA graph of the eager pass', 'torch.compile (inductor)',
             "torch.compile mode='reduce-overhead'"]
    rows = {n: report.add('timings', {'row': n}) for n in names}
    try:
        mods = ctx['modules'](size, 'fiffdepth')
        ctx['drop_modules'](keep=((size, 'fiffdepth'),))
        # Peak memory counts from here: the engine's weights, activations and workspace (the
        # fp32 modules it is copied from stay allocated beside it and are not counted).
        base = torch.cuda.memory_allocated(device) if cuda else 0
        engine, how = gpu_models.make_engine(mods, 'fiffdepth', str(device), precision, max(h, w))
        image = frame(h, w)
        pixels = engine.preprocess([image]).pixels
        run = single_pass(engine)
        reference = run(pixels).float()
    except Exception as exc:
        for row in rows.values():
            row['status'] = reason(exc)
        return
    report.note('timings', how=how, peak_memory='CUDA allocator peak above what was allocated '
                'before the engine was built (its weights, activations and workspace)')
    repeats = args.repeats

    def measure(name, fn, need=5.0):
        row = rows[name]
        if budget.spent(need):
            row['status'] = 'skipped: section time budget spent'
            return
        try:
            t0 = time.perf_counter()
            out = fn()
            got = out()                        # a compile or a graph capture happens here
            sync(device)
            row['first_call_s'] = round(time.perf_counter() - t0, 2)
            row.update(timed(out, device, repeats, warmup=1, base=base))
            if torch.is_tensor(got):
                row['max_diff_vs_eager'] = float((got.float() - reference).abs().max())
            row['status'] = 'ok'
        except Exception as exc:
            row['status'] = reason(exc)

    measure(names[0], lambda: (lambda: run(pixels)))
    measure(names[1], lambda: (lambda: engine.predict(image)))

    def contiguous():
        for module in (engine.unet, engine.vae):
            module.to(memory_format=torch.contiguous_format)
        x = pixels.contiguous()
        return lambda: run(x)
    measure(names[2], contiguous)
    for module in (engine.unet, engine.vae):
        module.to(memory_format=torch.channels_last)

    if not cuda:
        rows[names[3]]['status'] = NO_CUDA
    else:
        def graph():
            static = pixels.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    run(static)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = run(static)

            def replay():
                g.replay()
                return out
            return replay
        measure(names[3], graph)
    if not cuda:
        for name in names[4:]:
            rows[name]['status'] = NO_CUDA + ' (compile rows measure the GPU)'
        return
    del engine, run                            # the compiled rows' memory is their own
    free_memory()
    from torch import _dynamo
    for name, options in ((names[4], {}), (names[5], {'mode': 'reduce-overhead'})):
        # Inductor's first compile of an SD2 UNet + VAE takes about a minute: only with room.
        if budget.spent(75):
            rows[name]['status'] = 'skipped: section time budget spent (a compile needs ~75 s)'
            continue
        _dynamo.reset()
        fresh, _ = gpu_models.make_engine(mods, 'fiffdepth', str(device), precision, max(h, w))
        compile_engine(fresh, **options)
        fresh_run = single_pass(fresh)
        measure(name, lambda: (lambda: fresh_run(pixels).clone()))
        del fresh, fresh_run
        free_memory()


# ---------------------------------------------------------------------------- c. finish
def cv2_missing() -> str | None:
    if importlib.util.find_spec('cv2') is None:
        return ('skipped: OpenCV (cv2) is not installed: the finishing path imports it '
                '(pip install opencv-python-headless; on a machine without internet carry '
                'scripts/gpu_wheels.sh DIR --opencv and install it first with '
                'scripts/gpu_check.sh OUT --wheels DIR --install-only)')
    return None


def section_finish(report: Report, budget: Budget, ctx: dict) -> None:
    args, device = ctx['args'], ctx['device']
    names = ('numpy (host)', f'torch on {device.type}')
    rows = [report.add('finish', {'row': n}) for n in names]
    missing = cv2_missing()
    if missing:
        for row in rows:
            row['status'] = missing
        return
    try:
        from fiffdepth_ros import params as P
        from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
        from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud
        from fiffdepth_ros.demo.scene import SyntheticRoom
        from fiffdepth_ros.pipeline import OUTPUTS, DepthPipeline, PipelineConfig
        from fiffdepth_ros.sync import FrameInputs
        from gpu_messages import backend as make_backend
        backend, _ = make_backend('auto')
        h, w = (480, 640)
        room = SyntheticRoom(w, h, lidar_lines=32)
        params = P.validate(dict(room.static_lidar_params('cam'), publish_relative=True))
        config = PipelineConfig.from_params(params)
        engine, _ = gpu_models.make_engine(ctx['modules']('tiny', 'fiffdepth'), 'fiffdepth',
                                           str(device), 'fp32', 256)
        pipes = {names[0]: DepthPipeline(engine, config, backend, finish_device=None),
                 names[1]: DepthPipeline(engine, config, backend, finish_device=str(device))}
        stamp = 1_700_000_000 * 10**9
        frames = []
        for i in range(max(args.repeats, 2)):
            f = room.render(t=0.1 * i)
            header = backend.header(stamp + i * 10**8, 'cam')
            inputs = FrameInputs(
                image=rgb_to_image_msg(f.rgb, header, backend),
                camera_info=backend.camera_info(header, **room.camera_info_fields()),
                lidar=xyz_to_pointcloud(f.lidar_points, backend.header(stamp + i * 10**8,
                                                                       'lidar'), backend))
            prepared = {n: p.prepare(inputs) for n, p in pipes.items()}
            relative = {n: p.predict([prepared[n]])[0] for n, p in pipes.items()}
            frames.append((prepared, relative))
    except Exception as exc:
        for row in rows:
            row['status'] = reason(exc)
        return
    report.note('finish', input=f'{h}x{w}, LiDAR 32 lines', backend=backend.name,
                local_correction=params['local_correction'], outputs=list(OUTPUTS))
    times = {n: [] for n in names}
    results = {n: [] for n in names}
    try:
        for prepared, relative in frames:            # interleaved, frame by frame
            if budget.spent():
                break
            for n, pipe in pipes.items():
                t0 = time.perf_counter()
                result = pipe.finish(prepared[n], relative[n], OUTPUTS)
                sync(device)
                times[n].append((time.perf_counter() - t0) * 1e3)
                results[n].append(result)
    except Exception as exc:
        for row in rows:
            row.setdefault('status', reason(exc))
        return
    equal, total, worst_rel, nan_same, differ = 0, 0, 0.0, True, set()
    for ref, got in zip(results[names[0]], results[names[1]]):
        for key, msg in ref.messages.items():
            data = getattr(msg, 'data', None)
            if data is None or key not in got.messages:
                continue
            total += 1
            same = bytes(np.asarray(data)) == bytes(np.asarray(got.messages[key].data))
            equal += same
            if not same:
                differ.add(key)
        rel, same_nan = depth_difference(ref.depth, got.depth)
        worst_rel, nan_same = max(worst_rel, rel), nan_same and same_nan
    for n, row in zip(names, rows):
        if not times[n]:
            row['status'] = 'skipped: section time budget spent'
            continue
        row.update(status='ok', **ms_summary(times[n]), frames=len(times[n]),
                   metric=[bool(r.metric) for r in results[n]].count(True))
    rows[1].update(messages_byte_equal=f'{equal}/{total}', messages_differing=sorted(differ),
                   depth_max_rel_diff=worst_rel, depth_nan_pattern_equal=nan_same)


# ---------------------------------------------------------------------------- d, e: scripts
def run_script(report: Report, section: str, row: dict, command: list, budget: Budget,
               ctx: dict) -> dict | None:
    """A bench script in a subprocess that writes --json; its result, or None (row says why)."""
    if budget.spent(5):
        row['status'] = 'skipped: section time budget spent'
        return None
    out = ctx['work'] / f'{section}.json'
    out.unlink(missing_ok=True)
    row['command'] = ' '.join(['python'] + [str(c) for c in command[1:]])
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(command + ['--json', str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        ctx['child'] = proc
        text, _ = proc.communicate(timeout=max(budget.left(), 5))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        row['status'] = f'skipped: did not finish within the section budget ({budget.left():.0f}' \
                        f' s left)'
        return None
    finally:
        ctx['child'] = None
    row['seconds'] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0 or not out.is_file():
        tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or ['']
        row['status'] = f'skipped: exit {proc.returncode}: {tail[0][:300]}'
        return None
    row['status'] = 'ok'
    return json.loads(out.read_text())


def section_overlap(report: Report, budget: Budget, ctx: dict) -> None:
    args, device = ctx['args'], ctx['device']
    missing = cv2_missing()
    row = report.add('overlap', {'row': f'tiny model on {device.type}'})
    if missing:
        row['status'] = missing
        return
    frames, rounds = (6, 1) if args.smoke else (40, 2)
    result = run_script(report, 'overlap', row, [
        sys.executable, str(BENCH / 'overlap.py'), '--device', device.type, '--backend', 'auto',
        '--in-memory', '--frames', str(frames), '--rounds', str(rounds)], budget, ctx)
    if result is None:
        return
    report.note('overlap', settings=result.get('settings'))
    row['status'] = 'ok (first row; the others follow)'
    for i, item in enumerate(result['rows']):
        target = row if i == 0 else report.add('overlap', {})
        target.update({k: (round(v, 2) if isinstance(v, float) else v)
                       for k, v in item.items()})
        target['row'] = f"{item['model']}, {item['layout']}"
        target['status'] = 'ok'


def section_train(report: Report, budget: Budget, ctx: dict) -> None:
    args, device = ctx['args'], ctx['device']
    cuda = device.type == 'cuda'
    size, res = ('sd2', '480x640') if cuda else ('tiny', '64x80')
    row = report.add('train', {'row': f'{size} UNet + VAE, {res}, bf16 autocast, gradient '
                                      f'checkpointing, {"adam" if cuda else "sgd"}',
                               'device': str(device)})
    if not cuda and not args.smoke:
        row['status'] = NO_CUDA + ' (--smoke runs a tiny model on the CPU)'
        return
    result = run_script(report, 'train', row, [
        sys.executable, str(BENCH / 'train_step.py'), '--device', device.type, '--size', size,
        '--res', res, '--bf16', '--checkpointing', '--steps', '1',
        '--optimizer', 'adam' if cuda else 'sgd'], budget, ctx)
    if result is not None:
        row.update(step_s=result['whole_step_s'], peak_mb=result['peak_mb'],
                   phases=result['phases'], parameters=result['parameters'],
                   memory=result['memory'])


# ---------------------------------------------------------------------------- g. light
LIGHT_IMAGES = 8            # config/light_autoencoder.yaml's images per step


def section_light(report: Report, budget: Budget, ctx: dict) -> None:
    """The stage's own step (bench/light_autoencoder.distil_step): the SD2-size teacher (UNet +
    full VAE, fp32 weights) forward and the TAESD-width light parts forward and backward under
    bf16 autocast, 8 images at 480x640 on CUDA: the step time and peak memory the README's
    GPU sizing of a light-autoencoder distillation needs. The CPU smoke: a tiny teacher, 1
    image at the tiny size."""
    import types
    from light_autoencoder import distil_step
    from fiffdepth_ros.model.light import LightDecoder, LightEncoder
    args, device = ctx['args'], ctx['device']
    cuda = device.type == 'cuda'
    size, hw, images = ('sd2', (480, 640), LIGHT_IMAGES) if cuda else ('tiny', ctx['tiny_hw'], 1)
    row = report.add('light', {'row': f'{size} teacher, {images} x {hw[0]}x{hw[1]}, light parts '
                                      'of TAESD width, bf16 autocast', 'device': str(device)})
    if not cuda and not args.smoke:
        row['status'] = NO_CUDA + ' (--smoke runs a tiny teacher on the CPU)'
        return
    if budget.spent(10):
        row['status'] = 'skipped: section time budget spent'
        return
    teacher, _ = gpu_models.make_engine(ctx['modules'](size, 'fiffdepth'), 'fiffdepth',
                                        str(device), 'fp32', max(hw))
    torch.manual_seed(0)
    step_args = types.SimpleNamespace(step_res=max(hw), step_hw=hw, threads=torch.get_num_threads(),
                                      step_repeats=2 if cuda else 1)
    result = distil_step(step_args, teacher, LightEncoder().to(device), LightDecoder().to(device),
                         device=str(device), bf16=True, images=images)
    row.update(status='ok', step_s=round(result['seconds'], 3), tflops=round(result['tflops'], 3),
               light_activations_mib=round(result['saved_mib']),
               peak_mb=None if result['peak_mib'] is None else round(result['peak_mib']))
    del teacher


# ---------------------------------------------------------------------------- h. scale
SCALE_SIZE = (480, 640)


def section_scale(report: Report, budget: Budget, ctx: dict) -> None:
    """Fit + local correction of one 640x480 frame, as the node runs them on each path: the
    host's ScaleRecovery.process (its compiled kernels where numba is installed, else numpy
    and OpenCV) and the torch finishing path's DeviceFinisher.recover (the grid built on the
    host from the anchors, every per-pixel step on the device), the same ScaleRecoveryConfig
    (guide 'both', the frame's RGB given) and the same stamps, interleaved call by call. The
    frame: the synthetic room's depth as ground truth and bench/scale_recovery.py's simulated
    network error as the relative depth; anchors: that bench's 20k-point LiDAR sweep (all in
    view) and 100 random pixels. Each row: median ms; the device row also how far its metric
    depth is from the host's."""
    args, device = ctx['args'], ctx['device']
    sets = ('20k-point LiDAR sweep', '100 random anchors')
    names = [(s, path) for s in sets for path in ('host', 'device')]
    rows = {}
    for s, path in names:
        rows[s, path] = report.add('scale', {'row': f'{s}: ' + (
            'host' if path == 'host' else f'torch on {device.type}')})
    missing = cv2_missing()
    if missing:
        for row in rows.values():
            row['status'] = missing
        return
    try:
        import scale_recovery as bench
        from fiffdepth_ros.demo.scene import SyntheticRoom
        from fiffdepth_ros.finish.device import DeviceFinisher
        from fiffdepth_ros.geometry.camera_model import CameraModel
        from fiffdepth_ros.scale import _compiled
        from fiffdepth_ros.scale.anchors import lidar_anchors
        from fiffdepth_ros.scale.local_correction import warm_up
        from fiffdepth_ros.scale.recovery import ScaleRecovery, ScaleRecoveryConfig
        h, w = SCALE_SIZE
        room = SyntheticRoom(w, h)
        shot = room.render(0.0)
        gt, rgb = shot.depth, shot.rgb
        relative = bench.simulate_prediction(gt, 0)
        points, camera_from_lidar = bench.lidar_sweep(gt)
        camera = CameraModel.pinhole(w, h, *bench.NYU)
        rc = bench.random_pattern(gt > 0, 100, 0)
        anchor_sets = {sets[0]: lidar_anchors(points, camera_from_lidar, camera, max_depth=10.0),
                       sets[1]: bench.anchors_from(*rc, gt[rc].astype(np.float64), gt.shape)}
        config = ScaleRecoveryConfig(max_depth=10.0, local_guide='both')
        host_kind = 'compiled (numba)' if _compiled.ENABLED else 'numpy only (numba missing)'
        t0 = time.perf_counter()
        warm_up(log=lambda _: None)
        first_call = time.perf_counter() - t0
        finisher = DeviceFinisher(device)
        rel_t = finisher.relative_on_device(relative)
    except Exception as exc:
        for row in rows.values():
            row['status'] = reason(exc)
        return
    report.note('scale', input=f'{h}x{w}', guide='both', host=host_kind,
                warm_up_s=round(first_call, 2))
    repeats = max(args.repeats, 2) * (2 if args.smoke else 10)
    for s, anchors in anchor_sets.items():
        recoveries = {'host': ScaleRecovery(config), 'device': ScaleRecovery(config)}
        calls = {'host': lambda t, r=recoveries['host'], a=anchors:
                 r.process(relative, a, t, rgb)[0],
                 'device': lambda t, r=recoveries['device'], a=anchors:
                 finisher.recover(r, rel_t, a, t, rgb)[0]}
        times = {p: [] for p in calls}
        worst, nan_same = 0.0, True
        try:
            for i in range(repeats + 1):                 # the first round is not timed
                if budget.spent(2):
                    break
                out = {}
                for p, call in calls.items():
                    t0 = time.perf_counter()
                    out[p] = call(0.1 * i)
                    sync(device)
                    if i:
                        times[p].append((time.perf_counter() - t0) * 1e3)
                rel, same_nan = depth_difference(out['host'],
                                                 out['device'].float().cpu().numpy())
                worst, nan_same = max(worst, rel), nan_same and same_nan
        except Exception as exc:
            for p in calls:
                rows[s, p].setdefault('status', reason(exc))
            continue
        for p in calls:
            row = rows[s, p]
            row['anchors'] = int(len(anchors.depth))
            if not times[p]:
                row['status'] = 'skipped: section time budget spent'
                continue
            row.update(status='ok', **ms_summary(times[p]), frames=len(times[p]))
        rows[s, 'device'].update(depth_max_rel_diff=worst, depth_nan_pattern_equal=nan_same)


# ---------------------------------------------------------------------------- f. runtimes
def section_runtimes(report: Report, budget: Budget, ctx: dict) -> None:
    args, cuda = ctx['args'], ctx['device'].type == 'cuda'
    from fiffdepth_ros.model.estimator import DepthEstimator
    res = max(args.height, args.width)
    report.note('runtimes', model=args.model, input=f'{args.height}x{args.width}')
    exports, export_errors = {}, {}
    for precision in ('fp32', 'fp16'):
        if precision == 'fp16' and not cuda:
            continue
        if budget.spent(10):
            export_errors[precision] = 'skipped: section time budget spent'
            continue
        try:
            from fiffdepth_ros.model.export import ExportConfig, export_single_pass
            out = ctx['work'] / f'export-{precision}-{args.height}x{args.width}'
            t0 = time.perf_counter()
            export_single_pass(ExportConfig(model=args.model, output=out, height=args.height,
                                            width=args.width, fp16=precision == 'fp16',
                                            overwrite=True))
            report.note('runtimes', **{f'export_{precision}_s': round(time.perf_counter() - t0,
                                                                      1)})
            exports[precision] = out
        except Exception as exc:
            export_errors[precision] = reason(exc).replace('skipped: ', 'skipped: export: ', 1)

    def torch_row(device, precision):
        return lambda: DepthEstimator.from_pretrained(args.model, device=device,
                                                      precision=precision,
                                                      processing_res=res, runtime='torch')

    def graph_row(precision_of_export, runtime, providers, precision='fp32'):
        if precision_of_export not in exports:
            return export_errors.get(precision_of_export, 'skipped: no export')
        return lambda: DepthEstimator.from_pretrained(
            str(exports[precision_of_export]),
            device='cuda' if providers not in ('cpu', 'CPU') and cuda else 'cpu',
            precision=precision, processing_res=res, runtime=runtime, providers=providers)
    plan = [('torch fp32 cpu', torch_row('cpu', 'fp32')),
            ('torch fp32 cuda', torch_row('cuda', 'fp32') if cuda else NO_CUDA),
            ('torch fp16 cuda', torch_row('cuda', 'fp16') if cuda else NO_CUDA),
            ('onnxruntime tensorrt (fp16)', graph_row('fp32', 'onnxruntime', 'tensorrt',
                                                      'fp16')),
            ('onnxruntime cuda', graph_row('fp32', 'onnxruntime', 'cuda')),
            ('onnxruntime cpu', graph_row('fp32', 'onnxruntime', 'cpu')),
            ('openvino cpu', graph_row('fp32', 'openvino', 'CPU')),
            ('onnxruntime cuda, fp16 export', graph_row('fp16', 'onnxruntime', 'cuda', 'fp16')
             if cuda else NO_CUDA),
            ('onnxruntime tensorrt, fp16 export', graph_row('fp16', 'onnxruntime', 'tensorrt',
                                                            'fp16') if cuda else NO_CUDA)]
    image = frame(args.height, args.width)
    rows, engines, depths = [], {}, {}
    for name, loader in plan:
        row = report.add('runtimes', {'row': name})
        rows.append(row)
        if isinstance(loader, str):
            row['status'] = loader
            continue
        if budget.spent(3):
            row['status'] = 'skipped: section time budget spent'
            continue
        try:
            t0 = time.perf_counter()
            engine = loader()
            row['load_s'] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            depths[name] = engine.predict(image)
            row['first_frame_s'] = round(time.perf_counter() - t0, 3)
        except Exception as exc:        # a report row, not a crash: say why
            row['status'] = reason(exc)
            continue
        row['status'] = 'ok'
        row['describe'] = {k: str(v) for k, v in engine.describe().items()}
        engines[name] = engine
    reference = depths.get('torch fp32 cpu')
    span = float(reference.max() - reference.min()) if reference is not None else 0.0
    for row in rows:
        if row['row'] in depths and span > 0:
            row['max_diff_of_range'] = float(np.abs(depths[row['row']] - reference).max()) / span
    if engines and not budget.spent(2):
        times = interleaved_ms({n: (lambda e=e: e.predict(image)) for n, e in engines.items()},
                               repeats=args.repeats, warmup=1)
        for row in rows:
            if row['row'] in times:
                row['median_ms'], row['p10_ms'], row['p90_ms'] = (round(v, 2)
                                                                  for v in times[row['row']])


# ---------------------------------------------------------------------------- report
def _fmt(value, spec: str = '') -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return format(value, spec or '.3g')
    if isinstance(value, list):
        return ', '.join(map(str, value))
    return str(value)


COLUMNS = {
    'precision': [('row', 'row', ''), ('status', 'status', ''),
                  ('max diff / range', 'max_diff_of_range', '.1e'),
                  ('mean diff / range', 'mean_diff_of_range', '.1e'),
                  ('finite', 'finite', ''), ('non-finite in', 'non_finite', ''),
                  ('decode', 'decode', ''), ('how', 'how', ''), ('s', 'seconds', '')],
    'timings': [('row', 'row', ''), ('status', 'status', ''), ('median ms', 'median_ms', ''),
                ('p10-p90 ms', None, ''), ('peak MB', 'peak_mb', ''),
                ('first call s', 'first_call_s', ''),
                ('max diff vs eager', 'max_diff_vs_eager', '.1e')],
    'finish': [('row', 'row', ''), ('status', 'status', ''), ('median ms', 'median_ms', ''),
               ('p10-p90 ms', None, ''), ('frames', 'frames', ''),
               ('messages byte-equal', 'messages_byte_equal', ''),
               ('differing', 'messages_differing', ''),
               ('depth max rel diff', 'depth_max_rel_diff', '.1e'),
               ('NaN pattern equal', 'depth_nan_pattern_equal', '')],
    'overlap': [('row', 'row', ''), ('status', 'status', ''), ('frames/s', 'fps', ''),
                ('model ms', 'model_ms', ''), ('finish ms', 'finish_ms', ''),
                ('critical ms', 'critical_ms', ''), ('cores used', 'cores', '')],
    'train': [('row', 'row', ''), ('status', 'status', ''), ('step s', 'step_s', '.3g'),
              ('peak MB', 'peak_mb', '.0f'), ('memory', 'memory', '')],
    'light': [('row', 'row', ''), ('status', 'status', ''), ('step s', 'step_s', '.3g'),
              ('TFLOPs', 'tflops', '.3g'), ('light-part activations MiB', 'light_activations_mib',
                                            ''), ('peak MB', 'peak_mb', '')],
    'scale': [('row', 'row', ''), ('status', 'status', ''), ('median ms', 'median_ms', ''),
              ('p10-p90 ms', None, ''), ('frames', 'frames', ''), ('anchors', 'anchors', ''),
              ('depth max rel diff', 'depth_max_rel_diff', '.1e'),
              ('NaN pattern equal', 'depth_nan_pattern_equal', '')],
    'runtimes': [('row', 'row', ''), ('status', 'status', ''), ('load s', 'load_s', ''),
                 ('first frame s', 'first_frame_s', ''), ('median ms', 'median_ms', ''),
                 ('p10-p90 ms', None, ''), ('max diff / range', 'max_diff_of_range', '.1e')],
}


def markdown(data: dict) -> str:
    env = data['environment']
    gpu = (f"CUDA {env.get('cuda_version')}, {env.get('gpu')} ({env.get('gpu_memory_gib')} GiB)"
           if env['cuda'] else 'no CUDA')
    lines = [f"# fiffdepth_ros GPU check{' (--smoke)' if data['smoke'] else ''}", '',
             f"- Python {env['python']}, torch {env['torch']}, {gpu}; {env['cpus']} CPUs, "
             f"load average {env['load_average'][0]:.2f} at the start, "
             f"{env.get('load_average_now', [0])[0]:.2f} at the last save",
             '- ' + ', '.join(f'{m} {env.get(m)}' for m in (
                 'diffusers', 'transformers', 'cv2', 'onnx', 'onnxruntime', 'openvino',
                 'rclpy'))]
    if 'stopped' in data:
        lines.append(f"- **stopped**: {data['stopped']}")
    if 'total_s' in data:
        lines.append(f"- whole run {data['total_s']} s (limit {data['time_limit_s']} s)")
    for name, section in data['sections'].items():
        lines += ['', f"## {section['title']}", '']
        extra = {k: v for k, v in section.items() if k not in ('title', 'rows')}
        if extra:
            lines += [', '.join(f'{k}: {_fmt(v)}' for k, v in extra.items()), '']
        columns = COLUMNS[name]
        lines.append('| ' + ' | '.join(c[0] for c in columns) + ' |')
        lines.append('|' + ' --- |' * len(columns))
        for row in section['rows']:
            cells = []
            for _, key, spec in columns:
                if key is None:
                    cells.append(f"{row['p10_ms']:.1f}-{row['p90_ms']:.1f}"
                                 if 'p10_ms' in row else '')
                else:
                    cells.append(_fmt(row.get(key), spec))
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description='GPU check kit (see the module docstring).')
    ap.add_argument('--out', type=Path, default=Path('gpu_check'))
    ap.add_argument('--work', type=Path, default=Path('/tmp/fiffdepth_gpu_check'))
    ap.add_argument('--smoke', action='store_true',
                    help='tiny sizes and 2 repeats: the CPU smoke test')
    ap.add_argument('--sections', default=','.join(SECTIONS),
                    help='comma-separated subset of ' + ','.join(SECTIONS))
    ap.add_argument('--families', default=','.join(FAMILIES))
    ap.add_argument('--time-limit', type=float, default=420.0,
                    help='seconds for the whole run; at the limit the report is written with '
                         'what ran and the kit exits')
    ap.add_argument('--model', default='nano', help='runtimes section: the model to export')
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=10)
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(',') if s]
    args.families = [f for f in args.families.split(',') if f]
    bad = (set(args.sections) - set(SECTIONS)) | (set(args.families) - set(FAMILIES))
    if bad:
        ap.error(f'unknown sections or families: {sorted(bad)}')
    if args.smoke:
        args.repeats = min(args.repeats, 2)
    start = time.monotonic()
    end = start + args.time_limit
    args.work.mkdir(parents=True, exist_ok=True)
    report = Report(args, environment())
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cache = {}

    def modules(size, family):
        """Random fp32 modules per UNet layout, built once (an SD2 build takes seconds). SD2
        sets are kept on the GPU (3.8 GB each): every engine then copies them there instead
        of copying and uploading 3.8 GB from the host."""
        key = (size, gpu_models.UNET_LAYOUT[family])
        if key not in cache:
            unet, vae, embedding = gpu_models.modules(size, family)
            if size == 'sd2' and device.type == 'cuda':
                unet, vae, embedding = unet.to(device), vae.to(device), embedding.to(device)
            cache[key] = (unet, vae, embedding)
        return cache[key]

    def drop_modules(keep=()):
        for key in [k for k in cache if k not in keep]:
            del cache[key]
        free_memory()
    ctx = {'args': args, 'device': device, 'work': args.work, 'modules': modules,
           'drop_modules': drop_modules,
           'tiny_hw': (48, 64) if args.smoke else (96, 128), 'child': None}
    functions = {'precision': section_precision, 'timings': section_timings,
                 'finish': section_finish, 'overlap': section_overlap,
                 'train': section_train, 'runtimes': section_runtimes,
                 'light': section_light, 'scale': section_scale}

    def at_the_limit():
        with report.lock:
            report.data['stopped'] = (f'time limit of {args.time_limit:.0f} s reached during '
                                      f'{report.current}; later sections did not run')
            child = ctx.get('child')
            if child is not None:
                child.kill()
            print(report.save(), flush=True)
        os._exit(0)
    watchdog = threading.Timer(args.time_limit, at_the_limit)
    watchdog.daemon = True
    watchdog.start()
    names = [n for n in ORDER if n in args.sections]
    scale = args.time_limit / sum(SECTIONS[n][0] for n in names)
    report.data['budgets_s'] = {n: round(SECTIONS[n][0] * scale, 1) for n in names}
    for i, name in enumerate(names):
        later = scale * sum(SECTIONS[n][0] for n in names[i + 1:])
        # The last section may use all that is left; the others their own budget.
        budget = Budget(SECTIONS[name][0] * scale if later else args.time_limit, end - later)
        report.current = f'section {name}'
        t0 = time.perf_counter()
        try:
            functions[name](report, budget, ctx)
        except Exception as exc:               # a section's own bug: a row, not a crash
            report.add(name, {'row': 'section', 'status': reason(exc)})
        report.note(name, seconds=round(time.perf_counter() - t0, 1))
        free_memory()
        report.save()
    watchdog.cancel()
    report.data['total_s'] = round(time.monotonic() - start, 1)
    print(report.save())
    return 0


if __name__ == '__main__':
    sys.exit(main())
