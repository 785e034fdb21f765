"""Many recordings on Ray: model-holding actors run the same per-bag job as ``process_bags``.

    driver (run_fleet)                       Ray cluster (or a local instance)
      jobs, skips complete outputs    ->     ModelActor x N  (the model loaded once each; one per
      <= N whole bags in flight               GPU with num_gpus per actor, CPU actors without
      polls Progress -> one bar               GPUs): run_job(bag) / predict_chunk(window)
      per-bag table                          finish_chunked task per long bag: the sequential
                                              run replaying its chunks' model outputs, keeping
                                              <= 2 N chunks in flight
                                             Progress actor: frames per bag, the stop flag

Reading and writing run inside the actor (or the chunked bag's task) that processes the bag,
on the node where it runs: inputs and the output root must be on a filesystem every node sees
(see the README). Fault tolerance is Ray's: a worker process that dies restarts its actor
(which reloads the model) and retries the call (``retries``); the retried job deletes the dead
attempt's ``.partial`` output and starts again. A bag failing for its own reasons comes back as
a failed outcome; the others go on. Stop (Ctrl-C at the driver) raises the Progress actor's
flag: every running bag stops within a frame, closes its bag and leaves it partial; finished
outputs are complete under their final names.

Ray is optional: without it, :func:`require_ray` raises FleetUnavailable saying how to get it.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .inputs import BagJob
from .jobs import (COMPLETE, FAILED, INTERRUPTED, NOT_STARTED, BagOutcome, output_complete,
                   run_job)

INSTALL_HINT = ("pip install 'fiffdepth_ros[fleet]' (or pip install -r requirements-fleet.txt, "
                'or pip install ray)')


class FleetUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise FleetUnavailable(f'--ray needs Ray, an optional dependency: {INSTALL_HINT}') \
            from None
    return ray


@dataclass
class FleetOptions:
    address: str = 'local'        # 'local' (start one here), 'auto' or a cluster address
    workers: int | None = None    # model actors; default: GPUs / gpus_per_actor, else CPUs / ...
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0   # used when the cluster has GPUs
    chunk_s: float = 0.0          # > 0: bags of at least two chunks are split in time
    retries: int = 3              # actor restarts and call retries after a worker died
    local_cpus: int | None = None     # CPUs of a local instance (default: all)
    dashboard: bool | None = None     # local instance: start Ray's dashboard (needs ray[default])


@dataclass
class FleetResult:
    outcomes: list[BagOutcome]
    wall_s: float = 0.0
    actors: int = 0
    actor_memory: list[dict] = field(default_factory=list)   # per actor: pid, rss/peak MiB


def connect(ray, options: FleetOptions, log) -> bool:
    """Join or start Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if options.address in ('', 'local'):
        kwargs = dict(address='local', num_cpus=options.local_cpus,
                      include_dashboard=options.dashboard)
    else:
        kwargs = dict(address=options.address)
    try:
        ray.init(**kwargs, log_to_driver=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise FleetUnavailable(f"cannot connect to Ray at '{options.address}': {exc}") from None
    log(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs"
        + ('' if options.address in ('', 'local') else f' at {options.address}'))
    return True


# ---------------------------------------------------------------------- worker side
def _memory_mib() -> dict:
    status = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                status[key] = int(value.split()[0]) / 1024.0
    return {'pid': os.getpid(), 'rss_mib': status.get('VmRSS'), 'peak_mib': status.get('VmHWM')}


class _StopWatch:
    """A thread that sets ``stop`` once the driver raised the Progress actor's stop flag."""

    def __init__(self, ray, progress, period_s: float = 0.5):
        self.stop = threading.Event()
        self._done = threading.Event()

        def watch():
            while not self._done.wait(period_s):
                try:
                    if ray.get(progress.stopping.remote()):
                        self.stop.set()
                        return
                except Exception:        # the driver is gone: stop too
                    self.stop.set()
                    return
        threading.Thread(target=watch, name='fleet-stop-watch', daemon=True).start()

    def close(self) -> None:
        self._done.set()


class _RemoteProgress:
    """BagProcessor's progress (update per frame), sent to the Progress actor a few times a
    second rather than per frame."""

    def __init__(self, ray, progress, name: str, period_s: float = 0.3):
        self.ray, self.progress, self.name, self.period_s = ray, progress, name, period_s
        self.pending = 0
        self.sent_at = 0.0

    def begin(self, expected: int | None) -> None:
        self.ray.get(self.progress.begin.remote(self.name, expected, os.getpid()))

    def update(self, n: int = 1) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.sent_at >= self.period_s:
            self.flush()
            self.sent_at = now

    def flush(self) -> None:
        if self.pending:
            self.progress.add.remote(self.name, self.pending)
            self.pending = 0


def _set_threads(estimator, threads: int) -> None:
    if getattr(getattr(estimator, 'device', None), 'type', 'cpu') != 'cuda':
        from ..model.runtime import set_cpu_threads
        set_cpu_threads(threads)


class ModelActorImpl:
    """Holds one loaded model; runs whole bags and chunks' model work."""

    def __init__(self, params: dict, threads: int, progress_name: str):
        import ray
        from ..model.runtime import load_estimator
        self.ray = ray
        self.params = params
        # Found by name: a handle among the constructor's arguments would pin them in the
        # object store for restarts.
        self.progress = ray.get_actor(progress_name)
        self.estimator, self.error = None, ''
        try:
            self.estimator = load_estimator(params)
        except Exception as exc:       # reported once by Fleet.wait_ready, not retried
            self.error = f'{type(exc).__name__}: {exc}'.split('\n')[0][:300]
            return
        _set_threads(self.estimator, threads)

    def ready(self) -> str:
        """'' once the model is loaded, else why it could not be."""
        return self.error

    def run_bag(self, job: BagJob, args) -> BagOutcome:
        if self.error:
            return BagOutcome(job.name, str(job.input), str(job.output), FAILED,
                              error=f'model not loaded: {self.error}')
        watch = _StopWatch(self.ray, self.progress)
        report = _RemoteProgress(self.ray, self.progress, job.name)
        try:
            return run_job(job, args, self.params, self.estimator, stop=watch.stop,
                           progress=report)
        finally:
            report.flush()
            watch.close()

    def predict_chunk(self, path: str, image_topic: str, window, batch_size: int):
        from ..conversions.backends import RosbagsBackend
        from .chunks import predict_chunk
        from .reader import BagReader
        watch = _StopWatch(self.ray, self.progress)
        try:
            with BagReader(path) as reader:
                return predict_chunk(self.estimator, reader, image_topic,
                                     RosbagsBackend().typestore, window, batch_size,
                                     stop=watch.stop)
        finally:
            watch.close()

    def memory(self) -> dict:
        return _memory_mib()


class ProgressImpl:
    """Frames done per bag (reset when a retried attempt begins again) and the stop flag."""

    def __init__(self):
        self.bags: dict[str, dict] = {}
        self.stop = False

    def begin(self, name: str, expected: int | None, pid: int) -> None:
        self.bags[name] = {'frames': 0, 'expected': expected, 'pid': pid}

    def add(self, name: str, frames: int) -> None:
        if name in self.bags:
            self.bags[name]['frames'] += frames

    def snapshot(self) -> dict:
        return {'bags': {k: dict(v) for k, v in self.bags.items()}, 'stopping': self.stop}

    def request_stop(self) -> None:
        self.stop = True

    def reset(self) -> None:
        self.bags.clear()
        self.stop = False

    def stopping(self) -> bool:
        return self.stop


def finish_chunked_impl(job: BagJob, args, params: dict, actors: list, progress,
                        chunk_s: float, in_flight: int) -> BagOutcome:
    """A long bag: its chunks' model work on the actors, the sequential run here."""
    import ray

    from .chunks import ReplayEstimator, chunk_windows
    watch = _StopWatch(ray, progress)
    report = _RemoteProgress(ray, progress, job.name)
    count = [0]

    def make_estimator(plan, reader, stop):
        windows = chunk_windows(reader, plan.window, chunk_s)
        count[0] = len(windows)
        batch = args.batch_size or 1

        def outputs():
            refs: deque = deque()
            queue = deque(enumerate(windows))
            while queue or refs:
                while queue and len(refs) < in_flight:     # bounded: memory stays flat
                    i, window = queue.popleft()
                    actor = actors[i % len(actors)]
                    refs.append(actor.predict_chunk.remote(str(job.input), plan.topics.image,
                                                           window, batch))
                ref = refs.popleft()
                chunk = ray.get(ref)
                del ref
                yield chunk
        return ReplayEstimator(outputs(), stop)
    try:
        outcome = run_job(job, args, params, make_estimator=make_estimator, stop=watch.stop,
                          progress=report)
    finally:
        report.flush()
        watch.close()
    outcome.chunks = count[0]
    return outcome


_REMOTES: dict = {}


def _remotes(ray):
    if not _REMOTES:
        _REMOTES['actor'] = ray.remote(ModelActorImpl)
        _REMOTES['progress'] = ray.remote(num_cpus=0)(ProgressImpl)
        # num_cpus=0: the model actors hold the CPUs; this task's work (matching, scale fit,
        # messages, writing) is small next to the model's, which the actors do.
        _REMOTES['finish'] = ray.remote(num_cpus=0)(finish_chunked_impl)
    return _REMOTES


# ---------------------------------------------------------------------- driver side
def _actor_shape(ray, options: FleetOptions) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each)."""
    resources = ray.cluster_resources()
    gpus, cpus = resources.get('GPU', 0.0), resources.get('CPU', 1.0)
    per_gpu = options.gpus_per_actor if gpus > 0 else 0.0
    if options.workers:
        return options.workers, options.cpus_per_actor, per_gpu
    if per_gpu > 0:
        return max(1, int(gpus // per_gpu)), options.cpus_per_actor, per_gpu
    return max(1, int(cpus // max(options.cpus_per_actor, 1e-3))), options.cpus_per_actor, 0.0


def _is_chunked(job: BagJob, args, chunk_s: float) -> bool:
    if chunk_s <= 0 or args.stride != 1:
        return False
    from .reader import BagReader
    try:
        with BagReader(job.input) as reader:
            return reader.end_ns - reader.start_ns >= 2 * chunk_s * 1e9
    except Exception:          # unreadable: the whole-bag job reports why
        return False


def _lost(job: BagJob, exc: Exception, retries: int) -> BagOutcome:
    text = str(exc).strip().split('\n')[0][:200]
    return BagOutcome(job.name, str(job.input), str(job.output), FAILED,
                      error=f'lost after {retries} retries ({type(exc).__name__}: {text})')


class Fleet:
    """Model actors and the Progress actor on a connected Ray, reusable for several runs with
    the same parameters (a service, or tests). ``close`` ends them."""

    def __init__(self, ray, params: dict, options: FleetOptions, threads: int | None = None,
                 log: Callable[[str], None] = lambda t: None):
        self.ray, self.params, self.options = ray, params, options
        remotes = _remotes(ray)
        self.size, cpus, gpus = _actor_shape(ray, options)
        self.threads = threads or max(1, int(cpus))
        name = f'fiffdepth_progress_{os.getpid()}_{uuid.uuid4().hex[:8]}'
        self.progress = remotes['progress'].options(name=name).remote()
        self.actors = [remotes['actor'].options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=options.retries,
            max_task_retries=options.retries).remote(params, self.threads, name)
            for _ in range(self.size)]
        log(f'{self.size} model actor(s), {cpus:g} CPU and {gpus:g} GPU each')

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every actor has loaded the model; FleetUnavailable with the reason if the
        model cannot be loaded there (the same error for every bag otherwise)."""
        errors = self.ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)
        if any(errors):
            raise FleetUnavailable('the model cannot be loaded on the Ray workers: '
                                   + next(e for e in errors if e))

    def memory(self, timeout_s: float = 60) -> list[dict]:
        return self.ray.get([a.memory.remote() for a in self.actors], timeout=timeout_s)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.ray.kill(self.progress)
        self.actors = []

    def __enter__(self) -> 'Fleet':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_fleet(jobs: list[BagJob], args, params: dict, options: FleetOptions,
              log: Callable[[str], None] = lambda t: None, bar=None,
              on_progress: Callable[[dict], None] | None = None,
              stop: threading.Event | None = None, fleet: Fleet | None = None) -> FleetResult:
    """Process ``jobs`` on Ray; outcomes in the jobs' order. ``bar``: a FleetBar. ``stop``
    set (or Ctrl-C): running bags stop and stay partial, the rest are not started. ``fleet``:
    actors to use (made with the same params; ``options`` then only sets chunking and task
    retries); by default this call makes and ends its own."""
    ray = require_ray()
    t0 = time.perf_counter()
    outcomes: dict[str, BagOutcome] = {}
    todo: deque[BagJob] = deque()
    for job in jobs:
        if output_complete(job) and not args.overwrite:
            outcomes[job.name] = BagOutcome(job.name, str(job.input), str(job.output), COMPLETE)
        else:
            todo.append(job)
    result = FleetResult([])
    if todo:
        started = fleet is None and connect(ray, options, log)
        own = fleet is None
        try:
            if fleet is None:
                fleet = Fleet(ray, params, options, args.threads, log)
                fleet.wait_ready()
            result.actors = fleet.size
            ray.get(fleet.progress.reset.remote())
            _drive(ray, fleet, options, todo, args, params, outcomes, log, bar, on_progress,
                   stop or threading.Event())
            try:
                result.actor_memory = fleet.memory()
            except Exception:
                result.actor_memory = []
        finally:
            if own and fleet is not None:
                fleet.close()
            if started:
                ray.shutdown()
    # A job whose result a Ctrl-C cut off counts as interrupted (its output is not final).
    result.outcomes = [outcomes.get(j.name) or BagOutcome(j.name, str(j.input), str(j.output),
                                                          INTERRUPTED) for j in jobs]
    result.wall_s = time.perf_counter() - t0
    return result


def _drive(ray, fleet: Fleet, options: FleetOptions, todo, args, params, outcomes, log, bar,
           on_progress, stop: threading.Event) -> None:
    remotes, n = _remotes(ray), fleet.size
    actors, progress = fleet.actors, fleet.progress
    free = deque(actors)
    inflight: dict = {}              # ref -> (job, actor or None)
    finishers = 0
    interrupted = False
    try:
        while todo or inflight:
            try:
                if stop.is_set() and not interrupted:
                    raise KeyboardInterrupt
                while todo and not interrupted:
                    job = todo[0]
                    if _is_chunked(job, args, options.chunk_s):
                        if finishers >= n:
                            break
                        ref = remotes['finish'].options(max_retries=options.retries).remote(
                            job, args, params, actors, progress, options.chunk_s, 2 * n)
                        inflight[ref] = (job, None)
                        finishers += 1
                    elif free:
                        actor = free.popleft()
                        inflight[actor.run_bag.remote(job, args)] = (job, actor)
                    else:
                        break
                    todo.popleft()
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    job, actor = inflight.pop(ref)
                    try:
                        outcomes[job.name] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcomes[job.name] = _lost(job, exc, options.retries)
                    if actor is None:
                        finishers -= 1
                    else:
                        free.append(actor)
                try:
                    snap = ray.get(progress.snapshot.remote(), timeout=30)
                except ray.exceptions.RayError:      # display only: the work goes on
                    continue
                if bar is not None:
                    bags = snap['bags']
                    bar.set_state(sum(b['frames'] for b in bags.values()),
                                  [b['expected'] for b in bags.values()], len(outcomes))
                if on_progress is not None:
                    on_progress(snap)
            except KeyboardInterrupt:
                if interrupted:            # a second Ctrl-C: leave now (outputs stay partial)
                    raise
                interrupted = True
                log('\ninterrupted: stopping the running bags (their outputs stay partial, '
                    'finished ones are complete); Ctrl-C again to leave at once')
                progress.request_stop.remote()
                while todo:
                    job = todo.popleft()
                    outcomes[job.name] = BagOutcome(job.name, str(job.input), str(job.output),
                                                    NOT_STARTED)
    finally:
        for job, _ in inflight.values():
            outcomes.setdefault(job.name, BagOutcome(job.name, str(job.input), str(job.output),
                                                     INTERRUPTED))
