"""Many recordings on Ray: reading and writing near the data, the model on model actors.

What runs where, per recording (bag)::

    driver (run_fleet)             reader actor           model actors x N    writer actor
      jobs; skips complete           (near the input)       (GPUs, or CPUs)     (near the output)
      outputs                        BagReader,             the loaded model    pipeline.finish
      <= B bags in flight            FrameSource matching,  pipeline.predict    (scale filter),
      <= K batches in flight a bag   decode (prepare),      of one batch        CDR, BagWriter:
      submits, counts: one bar,      the run's batches ------------------->     .partial, renamed
      the per-bag table                by object reference  --- relative --->   when closed

* The **reader** opens the input, plans the run (``plan_run``: topics, window, extrinsics) and
  yields the run's items in bag order: the same ``FrameSource`` look-ahead matching, the same
  ``pipeline.prepare`` decode and the same :class:`~fiffdepth_ros.bag.runner.Batcher` grouping
  as ``process_bag``. Each call returns one model batch with the items around it: the images
  (what the model needs) and the rest (companions, input copies, skips) as two objects in Ray's
  object store; only their references pass through the driver.
* A **model actor** holds one loaded model and only predicts: ``DepthPipeline.predict`` on the
  batch's images (a batch goes to the actor with the fewest in flight, so one long bag spreads
  over every actor). It never touches a file.
* The **writer** (one per bag at a time: a bag writer is stateful) receives the batches in bag
  order (Ray runs a single-threaded actor's calls from one submitter in submission order;
  readers and writers have no task retries, which would void that; each batch carries the
  reader's sequence number and the writer checks it), runs the pipeline's ``finish`` (scale
  fit with its temporal filter, messages) and writes through the same
  :class:`~fiffdepth_ros.bag.runner.OutputStage` as ``process_bag``, under
  ``OUTPUT_ROOT/.partial/<name>``; closed after a complete read it is renamed to
  ``OUTPUT_ROOT/<name>``. Hence the same messages, message for message, as the sequential run,
  for any --stride and --batch-size (on CUDA models the writer finishes with numpy where the
  sequential run finishes on the GPU: equal up to float rounding).
* Memory stays flat: at most B bags in flight (``bags_in_flight``, default N) and at most K
  batches of each between its reader and its writer (``batches_in_flight``, default 2 N).

Placement (``io_node``): ``'driver'`` (default) schedules readers and writers on the driver's
node (Ray's NodeAffinitySchedulingStrategy, hard): inputs and the output root must be on the
driver's machine, no shared filesystem is needed, frames travel to the model actors on other
nodes through Ray's object store. ``'any'`` spreads readers and writers over the cluster
(SPREAD): inputs and the output root must then be on a filesystem every node sees. Model actors
need only the model (a hub id, or a checkpoint folder present on their node). ``io_cpus``: CPUs
each reader and writer reserves (default 0: none; finishing and writing are a sizeable share of
a frame's CPU, see bench/fleet_throughput.py, so on CPU-only clusters reserving some keeps the
model actors from taking every core; the default actor count then leaves room for them).

Faults: a model actor whose process dies is restarted by Ray (it reloads the model) and its
batches are retried (``retries``): the bag goes on and completes. A reader or writer that dies
fails the bag's attempt: its .partial output is deleted and the bag starts again with new ones,
up to ``retries`` times. A bag failing for its own reasons (corrupt, no camera topic) comes back
as a failed outcome; the others go on. Stop (Ctrl-C at the driver): no more batches are read,
the batches in flight are written, every running bag is closed (valid, under .partial) and
reported interrupted; outputs finished before are complete under their final names.

Ray is optional: without it, :func:`require_ray` raises FleetUnavailable saying how to get it.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .inputs import BagJob
from .jobs import (COMPLETE, DONE, FAILED, INTERRUPTED, NOT_STARTED, BagOutcome, describe_error,
                   fresh_partial, job_args, output_complete, publish)

INSTALL_HINT = ("pip install 'fiffdepth_ros[fleet]' (or pip install -r requirements-fleet.txt, "
                'or pip install ray)')
IO_NODES = ('driver', 'any')


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
    retries: int = 3              # model actor restarts and call retries; bag attempts
    local_cpus: int | None = None     # CPUs of a local instance (default: all)
    dashboard: bool | None = None     # local instance: start Ray's dashboard (needs ray[default])
    bags_in_flight: int | None = None      # default: the model actors
    batches_in_flight: int | None = None   # per bag; default: 2 x the model actors
    io_node: str = 'driver'       # readers and writers: 'driver' (its node) or 'any' (spread)
    io_cpus: float = 0.0          # CPUs each reader and writer reserves


@dataclass
class FleetResult:
    outcomes: list[BagOutcome]
    wall_s: float = 0.0
    actors: int = 0
    actor_memory: list[dict] = field(default_factory=list)   # per model actor: pid, rss/peak MiB
    io_memory: list[dict] = field(default_factory=list)      # per reader / writer actor
    actor_batches: list[int] = field(default_factory=list)   # batches predicted per model actor
    peak_batches_in_flight: int = 0      # the most batches one bag ever had in flight


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
def _memory_mib(kind: str) -> dict:
    status = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                status[key] = int(value.split()[0]) / 1024.0
    import ray
    return {'kind': kind, 'pid': os.getpid(), 'node': ray.get_runtime_context().get_node_id(),
            'rss_mib': status.get('VmRSS'), 'peak_mib': status.get('VmHWM')}


class ModelActorImpl:
    """Holds one loaded model; predicts batches of images with the pipeline's own predict."""

    def __init__(self, params: dict, threads: int):
        from ..model.runtime import load_estimator
        from ..pipeline import DepthPipeline, PipelineConfig
        self.estimator, self.error = None, ''
        try:
            self.estimator = load_estimator(params)
        except Exception as exc:       # reported once by Fleet.wait_ready, not retried
            self.error = f'{type(exc).__name__}: {exc}'.split('\n')[0][:300]
            return
        self.cuda = getattr(getattr(self.estimator, 'device', None), 'type', 'cpu') == 'cuda'
        if not self.cuda:
            from ..model.runtime import set_cpu_threads
            set_cpu_threads(threads)
        # finish_device None: relative depth comes back as numpy (the writer finishes it).
        self.pipeline = DepthPipeline(self.estimator, PipelineConfig(), backend=None,
                                      finish_device=None)

    def ready(self) -> str:
        """'' once the model is loaded, else why it could not be."""
        return self.error

    def traits(self) -> dict:
        """What the readers and writers need to know of the model they never see."""
        return {'output_space': getattr(self.estimator, 'output_space', 'depth'),
                'cuda': self.cuda, 'pid': os.getpid()}

    def predict(self, groups: list) -> tuple[list, float]:
        """Per group (one model batch of images): its relative depths, or why it failed."""
        from ..pipeline import PreparedFrame
        from .runner import inference_failure
        t0 = time.perf_counter()
        out: list = []
        for images in groups:
            # Arrays from Ray's object store are read-only views: the model gets its own.
            frames = [PreparedFrame(None, None, 0, np.array(rgb), None, [], {})
                      for rgb in images]
            try:
                out.append([np.asarray(r) for r in self.pipeline.predict(frames)])
            except Exception as exc:      # e.g. out of memory: these frames are skipped
                out.append(inference_failure(exc))
        return out, time.perf_counter() - t0

    def memory(self) -> dict:
        return _memory_mib('model')


class _ModelTraits:
    """Stands in for the estimator in the writer's pipeline: the fit space follows the model's
    output space; finishing runs in numpy (device None)."""

    def __init__(self, output_space: str):
        self.output_space = output_space
        self.device = None


@dataclass
class Opened:
    """A reader's answer to open: the run's plan (for the writer) or why the bag cannot run."""
    plan: Any = None
    expected: int | None = None
    error: str = ''
    pid: int = 0


_END = object()


class ReaderImpl:
    """Reads one bag at a time (``open``, then ``next_batch`` until done); reusable."""

    def __init__(self):
        self.reader = None
        self.items = None
        self.seq = 0
        self._connections: dict = {}

    def open(self, job: BagJob, args, params: dict, batch: int) -> Opened:
        from ..conversions.backends import RosbagsBackend
        from .process_bag import _estimated_frames, frame_source, make_pipeline, plan_run
        from .reader import BagReader
        from .runner import Batcher
        self.close()
        try:
            backend = RosbagsBackend()
            self.reader = BagReader(job.input)
            bag_args = job_args(args, job, job.output)
            plan = plan_run(bag_args, params, self.reader, backend.typestore, lambda t: None)
            self.pipeline = make_pipeline(plan, None, backend)
            self.source = frame_source(bag_args, plan, self.reader, backend, None)
            self.items = iter(self.source)
            self.batcher = Batcher(batch)
            self.seq = 0
            return Opened(plan, _estimated_frames(self.reader, plan.topics, plan.window), '',
                          os.getpid())
        except Exception as exc:        # this bag's own problem: the driver reports it
            self.close()
            return Opened(error=describe_error(exc), pid=os.getpid())

    def next_batch(self) -> tuple[dict, list, tuple]:
        """(meta, image groups, (sequence number, items)): the items in bag order up to and
        including one model batch (groups: that batch's images; more than one only when a
        batch ended early on an image size change). meta['done'] once the bag is read (with
        its read stats)."""
        from .runner import prepare_item
        t0 = time.perf_counter()
        items: list = []
        groups: list = []
        done = self.items is None
        while not done:
            item = next(self.items, _END)
            if item is _END:
                ready, done = self.batcher.flush(), True
            else:
                ready = self.batcher.add(prepare_item(self.pipeline, item))
            for held, frames in ready:
                if frames:
                    groups.append([p.frame.rgb for p in frames])
                items.extend(self._for_transport(i) for i in held)
            if groups or len(items) >= 512:
                break
        meta = {'done': done, 'read_s': time.perf_counter() - t0}
        if done and self.reader is not None:
            meta.update(read=self.source.stats, read_error=self.reader.read_error)
            self.close()
        self.seq += 1
        return meta, groups, (self.seq, items)

    def _for_transport(self, item):
        """What the writer needs of an item, picklable: a frame without its image (that travels
        in the group, once) and without the image message (finish never reads it); copies with
        their bytes and a connection without its open reader."""
        from .frames import CopyItem
        from .runner import _Prepared
        if isinstance(item, _Prepared):
            frame = item.frame
            return _Prepared(replace(frame, rgb=None, inputs=replace(frame.inputs, image=None)),
                             item.bag_time_ns)
        if isinstance(item, CopyItem):
            raw = item.raw
            conn = self._connections.get(id(raw.connection))
            if conn is None:
                conn = self._connections[id(raw.connection)] = raw.connection._replace(
                    owner=None)
            return CopyItem(replace(raw, data=bytes(raw.data) if raw.data is not None else None,
                                    connection=conn))
        return item

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.reader, self.items = None, None
        self._connections = {}

    def memory(self) -> dict:
        return _memory_mib('reader')


class WriterImpl:
    """Finishes and writes one bag at a time (``open``, ``write`` per batch, ``close``)."""

    def __init__(self):
        self.stage = None

    def open(self, job: BagJob, args, opened: Opened, traits: dict) -> dict:
        from ..conversions.backends import RosbagsBackend
        from .process_bag import make_pipeline, writer_factory
        from .runner import OutputStage
        from .summary import RunStats
        from .writer import check_output
        self.abort()
        if opened.error:
            return {'error': opened.error, 'pid': os.getpid()}
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            check_output(job.output, args.overwrite, job.input)
            self.partial = fresh_partial(job)
            self.job, self.args = job, args
            backend = RosbagsBackend()
            plan = opened.plan
            pipeline = make_pipeline(plan, _ModelTraits(traits['output_space']), backend)
            self.stats = RunStats()
            stage = OutputStage(pipeline, writer_factory(job_args(args, job, self.partial), plan,
                                                         backend, self.partial),
                                plan.topics_by_output, self.stats)
            stage.open()
            self.stage, self.seq = stage, 0
            return {'error': '', 'pid': os.getpid()}
        except Exception as exc:
            self.abort()
            return {'error': describe_error(exc), 'pid': os.getpid()}

    def write(self, batch: tuple, groups: list, predicted: tuple) -> int:
        """One batch, in bag order; returns the selected frames it finished (or skipped)."""
        from .frames import SkipItem
        from .runner import _Inferred, _Prepared
        seq, items = batch
        if seq != self.seq + 1:           # never write a batch out of order
            raise RuntimeError(f'batch {seq} arrived after batch {self.seq}')
        self.seq = seq
        results, model_s = predicted
        self.stats.model_s += model_s
        per_frame = ((rgb, group if isinstance(group, str) else group[i])
                     for images, group in zip(groups, results)
                     for i, rgb in enumerate(images))
        frames = 0
        for item in items:
            if isinstance(item, _Prepared):
                rgb, relative = next(per_frame)
                frame = replace(item.frame, rgb=np.array(rgb))
                item = (SkipItem(relative, item.bag_time_ns) if isinstance(relative, str) else
                        _Inferred(frame, np.array(relative), item.bag_time_ns))
            frames += self.stage.write_item(self.stage.finish_item(item))
        return frames

    def close(self, final: dict | None, read_s: float, complete: bool) -> BagOutcome:
        """Close the bag; with ``complete`` (read to the end) give it its final name."""
        job = self.job
        stage, self.stage = self.stage, None
        stage.close()
        stats = self.stats
        if final is not None:
            stats.read, stats.read_error = final['read'], final['read_error']
        stats.stage_s['read+decode'] = read_s
        outcome = BagOutcome(job.name, str(job.input), str(job.output), INTERRUPTED,
                             frames=stats.processed, metric_frames=stats.metric_frames,
                             skipped=stats.skipped_total, warning=stats.read_error or '',
                             model_s=stats.model_s, read_s=read_s,
                             finish_s=stats.stage_s['finish'], write_s=stats.stage_s['write'])
        if complete:
            publish(job, self.partial, self.args.overwrite)
            outcome.status = DONE
        return outcome

    def abort(self) -> None:
        """Close a bag left open (its output stays partial)."""
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.close()

    def memory(self) -> dict:
        return _memory_mib('writer')


_REMOTES: dict = {}


def _remotes(ray):
    if not _REMOTES:
        _REMOTES['model'] = ray.remote(ModelActorImpl)
        _REMOTES['reader'] = ray.remote(ReaderImpl)
        _REMOTES['writer'] = ray.remote(WriterImpl)
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
    # Without GPUs each actor comes with a bag in flight: its reader's and writer's CPUs too.
    per_actor = max(options.cpus_per_actor + 2 * options.io_cpus, 1e-3)
    return max(1, int(cpus // per_actor)), options.cpus_per_actor, 0.0


def _check_fits(ray, options: FleetOptions, size: int, cpus: float) -> None:
    """Reserved CPUs that the cluster cannot hold would leave readers or writers waiting for
    ever: refuse at the start instead."""
    total = ray.cluster_resources().get('CPU', 0.0)
    bags = max(1, options.bags_in_flight or size)
    need = size * cpus + 2 * options.io_cpus * bags
    if options.io_cpus > 0 and need > total + 1e-9:
        raise FleetUnavailable(
            f'{size} model actor(s) x {cpus:g} CPU + {bags} bag(s) in flight x 2 x '
            f'{options.io_cpus:g} CPU (reader, writer) = {need:g} CPUs, the cluster has '
            f'{total:g}: lower --workers, --cpus-per-actor, --io-cpus or --bags-in-flight')


def _death(ray, exc: Exception) -> bool:
    """A process or node died (retry the bag), rather than our code raising (report it)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return isinstance(exc.cause, ray.exceptions.RayError)
    return isinstance(exc, ray.exceptions.RayError)


class _Pool:
    """Idle reader (or writer) actors, reused bag after bag (an actor start costs seconds)."""

    def __init__(self, ray, make: Callable):
        self.ray, self.make = ray, make
        self.free: list = []
        self.all: list = []

    def get(self):
        if self.free:
            return self.free.pop()
        actor = self.make()
        self.all.append(actor)
        return actor

    def put(self, actor) -> None:
        self.free.append(actor)

    def discard(self, actor) -> None:
        self.ray.kill(actor, no_restart=True)
        self.all = [a for a in self.all if a is not actor]
        self.free = [a for a in self.free if a is not actor]

    def close(self) -> None:
        for actor in self.all:
            self.ray.kill(actor, no_restart=True)
        self.all, self.free = [], []


class Fleet:
    """Model actors and pools of reader and writer actors on a connected Ray, reusable for
    several runs with the same parameters (a service, or tests). ``close`` ends them."""

    def __init__(self, ray, params: dict, options: FleetOptions, threads: int | None = None,
                 log: Callable[[str], None] = lambda t: None):
        if options.io_node not in IO_NODES:
            raise FleetUnavailable(f"io_node must be one of {', '.join(IO_NODES)}, "
                                   f"got '{options.io_node}'")
        self.ray, self.params, self.options = ray, params, options
        remotes = _remotes(ray)
        self.size, cpus, gpus = _actor_shape(ray, options)
        _check_fits(ray, options, self.size, cpus)
        self.threads = threads or max(1, int(cpus))
        self.actors = [remotes['model'].options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=options.retries,
            max_task_retries=options.retries).remote(params, self.threads)
            for _ in range(self.size)]
        io = dict(num_cpus=options.io_cpus, max_restarts=0, max_task_retries=0)
        if options.io_node == 'driver':
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            io['scheduling_strategy'] = NodeAffinitySchedulingStrategy(
                # Hard: a soft affinity was seen placing some of them on another node while
                # this one was alive and feasible (Ray 2.60, two-node test cluster), where the
                # files are not. The driver's node dying ends the run anyway.
                ray.get_runtime_context().get_node_id(), soft=False)
        else:
            io['scheduling_strategy'] = 'SPREAD'
        self.readers = _Pool(ray, lambda: remotes['reader'].options(**io).remote())
        self.writers = _Pool(ray, lambda: remotes['writer'].options(**io).remote())
        self.traits: dict = {}
        log(f'{self.size} model actor(s), {cpus:g} CPU and {gpus:g} GPU each; readers and '
            f"writers on {'the driver node' if options.io_node == 'driver' else 'any node'}")

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every actor has loaded the model; FleetUnavailable with the reason if the
        model cannot be loaded there (the same error for every bag otherwise)."""
        errors = self.ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)
        if any(errors):
            raise FleetUnavailable('the model cannot be loaded on the Ray workers: '
                                   + next(e for e in errors if e))
        self.traits = self.ray.get(self.actors[0].traits.remote(), timeout=timeout_s)

    def pids(self, timeout_s: float = 60) -> list[int]:
        return [t['pid'] for t in self.ray.get([a.traits.remote() for a in self.actors],
                                               timeout=timeout_s)]

    def memory(self, timeout_s: float = 60) -> list[dict]:
        return self.ray.get([a.memory.remote() for a in self.actors], timeout=timeout_s)

    def io_memory(self, timeout_s: float = 60) -> list[dict]:
        actors = self.readers.all + self.writers.all
        return self.ray.get([a.memory.remote() for a in actors], timeout=timeout_s)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.readers.close()
        self.writers.close()
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
    set (or Ctrl-C): running bags stop and stay partial, the rest are not started.
    ``on_progress(snapshot)``: called about every 0.2 s (per running bag: frames done,
    expected, attempt, reader and writer pids; 'load': batches in flight per model actor).
    ``fleet``: actors to use (made with the same params; then
    ``options`` only sets the bags and batches in flight and the bag retries); by default this
    call makes and ends its own."""
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
            if not fleet.traits:
                fleet.wait_ready()
            result.actors = fleet.size
            driver = _Driver(ray, fleet, options, args, params, outcomes, bar, on_progress, log)
            driver.run(todo, stop or threading.Event())
            result.actor_batches = driver.batches
            result.peak_batches_in_flight = driver.peak_in_flight
            try:
                result.actor_memory = fleet.memory()
                result.io_memory = fleet.io_memory()
            except Exception:
                pass
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


@dataclass
class _Flow:
    """One attempt at one bag: its reader, its writer, its batches in flight (bag order)."""
    job: BagJob
    attempt: int
    reader: Any
    writer: Any
    t0: float = field(default_factory=time.perf_counter)
    state: str = 'opening'            # opening, running, closing, over
    opened: Any = None                # ref of the reader's Opened
    expected: int | None = None
    pending: list = field(default_factory=list)     # write refs, in bag order
    read_done: bool = False
    final: dict | None = None         # the last batch's meta (read stats)
    read_s: float = 0.0
    frames: int = 0
    pids: dict = field(default_factory=dict)


class _Driver:
    """The driver's loop: starts bags, keeps each one's batches flowing reader -> model ->
    writer with bounded work in flight, retries bags whose reader or writer died, stops."""

    def __init__(self, ray, fleet: Fleet, options: FleetOptions, args, params, outcomes, bar,
                 on_progress, log):
        self.ray, self.fleet, self.args, self.params = ray, fleet, args, params
        self.outcomes, self.bar, self.on_progress, self.log = outcomes, bar, on_progress, log
        self.retries = options.retries
        n = fleet.size
        self.bags_in_flight = max(1, options.bags_in_flight or n)
        self.batches_in_flight = max(1, options.batches_in_flight or 2 * n)
        self.batch = args.batch_size or (4 if fleet.traits.get('cuda') else 1)
        self.load = [0] * n                 # predict calls in flight per model actor
        self.batches = [0] * n
        self.peak_in_flight = 0
        self.dead: set[int] = set()         # model actors lost for good (restarts used up)
        self.actor_ids = [a._actor_id.hex() for a in fleet.actors]
        self.waiting: dict = {}             # ref -> (flow, kind, extra)
        self.flows: list[_Flow] = []
        self.stopping = False
        self.frames_done = 0                # of finished attempts
        self.expected: dict[str, int | None] = {}

    # ------------------------------------------------------------------ the loop
    def run(self, todo: deque, stop: threading.Event) -> None:
        ray = self.ray
        interrupted = False
        next_report = 0.0
        try:
            while todo or self.flows:
                try:
                    if stop.is_set() and not interrupted:
                        raise KeyboardInterrupt
                    while todo and not self.stopping and len(self.flows) < self.bags_in_flight:
                        self._start(todo.popleft(), 1)
                    for flow in list(self.flows):
                        self._advance(flow)
                    if not self.waiting:
                        continue
                    refs = list(self.waiting)
                    ready, _ = ray.wait(refs, num_returns=1, timeout=0.2, fetch_local=False)
                    if ready:                 # and whatever else is ready by now
                        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0,
                                            fetch_local=False)
                    for ref in ready:
                        entry = self.waiting.pop(ref)
                        try:
                            self._on_ready(ref, *entry)
                        except KeyboardInterrupt:     # handled again after the stop
                            self.waiting[ref] = entry
                            raise
                    if time.perf_counter() >= next_report:
                        next_report = time.perf_counter() + 0.2
                        self._report()
                except KeyboardInterrupt:
                    if interrupted:       # a second Ctrl-C: leave now (outputs stay partial)
                        raise
                    interrupted = self.stopping = True
                    self.log('\ninterrupted: stopping the running bags (their outputs stay '
                             'partial, finished ones are complete); Ctrl-C again to leave at '
                             'once')
                    while todo:
                        job = todo.popleft()
                        self.outcomes[job.name] = BagOutcome(job.name, str(job.input),
                                                             str(job.output), NOT_STARTED)
        finally:
            for flow in self.flows:           # left at once: their outputs are not final
                self.outcomes.setdefault(flow.job.name, BagOutcome(
                    flow.job.name, str(flow.job.input), str(flow.job.output), INTERRUPTED))
            self._report()

    def _start(self, job: BagJob, attempt: int) -> None:
        flow = _Flow(job, attempt, self.fleet.readers.get(), self.fleet.writers.get())
        flow.opened = flow.reader.open.remote(job, self.args, self.params, self.batch)
        ref = flow.writer.open.remote(job, self.args, flow.opened, self.fleet.traits)
        self.waiting[ref] = (flow, 'open', None)
        self.flows.append(flow)

    def _advance(self, flow: _Flow) -> None:
        if flow.state != 'running':
            return
        while (not self.stopping and not flow.read_done
               and len(flow.pending) < self.batches_in_flight):
            meta, groups, items = flow.reader.next_batch.options(num_returns=3).remote()
            alive = [i for i in range(len(self.load)) if i not in self.dead]
            if not alive:
                raise FleetUnavailable('every model actor died and could not be restarted')
            a = min(alive, key=self.load.__getitem__)
            self.load[a] += 1
            self.batches[a] += 1
            predicted = self.fleet.actors[a].predict.remote(groups)
            written = flow.writer.write.remote(items, groups, predicted)
            self.waiting[meta] = (flow, 'meta', None)
            self.waiting[predicted] = (flow, 'predict', a)
            self.waiting[written] = (flow, 'write', None)
            flow.pending.append(written)
            self.peak_in_flight = max(self.peak_in_flight, len(flow.pending))
        if not flow.pending and (flow.read_done or self.stopping):
            flow.state = 'closing'
            ref = flow.writer.close.remote(flow.final, flow.read_s, flow.read_done)
            self.waiting[ref] = (flow, 'close', None)

    def _on_ready(self, ref, flow: _Flow, kind: str, extra) -> None:
        if kind == 'predict':
            self.load[extra] -= 1        # its result goes to the writer, not here
            return
        if flow.state == 'over':          # an abandoned attempt's late answers
            return
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self._attempt_failed(flow, exc)
            return
        if kind == 'open':
            if value['error']:
                self._end(flow, BagOutcome(flow.job.name, str(flow.job.input),
                                           str(flow.job.output), FAILED, error=value['error']))
                return
            opened = self.ray.get(flow.opened)
            flow.expected = opened.expected
            flow.pids = {'reader': opened.pid, 'writer': value['pid']}
            self.expected[flow.job.name] = opened.expected
            flow.state = 'running'
        elif kind == 'meta':
            flow.read_s += value['read_s']
            if 'read' in value:   # the call that reached the end (later ones find it closed)
                flow.read_done, flow.final = True, value
        elif kind == 'write' and ref in flow.pending:
            flow.pending.remove(ref)
            flow.frames += value
        elif kind == 'close':
            value.wall_s = time.perf_counter() - flow.t0
            self._end(flow, value)

    def _attempt_failed(self, flow: _Flow, exc: Exception) -> None:
        job = flow.job
        lost = getattr(exc, 'actor_id', None)
        if lost is not None and str(lost) in self.actor_ids:
            self.dead.add(self.actor_ids.index(str(lost)))     # past its restarts: not again
        text = str(exc).strip().split('\n')[0][:200]
        for pool, actor in ((self.fleet.readers, flow.reader), (self.fleet.writers, flow.writer)):
            pool.discard(actor)
        flow.state = 'over'
        self.flows.remove(flow)
        if not _death(self.ray, exc):     # our code raised: this bag's own problem
            cause = getattr(exc, 'cause', exc)
            self.outcomes[job.name] = BagOutcome(job.name, str(job.input), str(job.output),
                                                 FAILED, error=describe_error(cause),
                                                 wall_s=time.perf_counter() - flow.t0)
        elif flow.attempt <= self.retries and not self.stopping:
            self.log(f'{job.name}: attempt {flow.attempt} lost ({type(exc).__name__}); '
                     'starting it again')
            self._start(job, flow.attempt + 1)
        else:
            self.outcomes[job.name] = BagOutcome(
                job.name, str(job.input), str(job.output), FAILED,
                error=f'lost after {flow.attempt} attempt(s) ({type(exc).__name__}: {text})',
                wall_s=time.perf_counter() - flow.t0)

    def _end(self, flow: _Flow, outcome: BagOutcome) -> None:
        flow.state = 'over'
        self.flows.remove(flow)
        self.fleet.readers.put(flow.reader)
        self.fleet.writers.put(flow.writer)
        self.frames_done += flow.frames
        self.outcomes[flow.job.name] = outcome

    def _report(self) -> None:
        running = {f.job.name: {'frames': f.frames, 'expected': f.expected,
                                'attempt': f.attempt, 'in_flight': len(f.pending), **f.pids}
                   for f in self.flows}
        if self.bar is not None:
            frames = self.frames_done + sum(f.frames for f in self.flows)
            self.bar.set_state(frames, list(self.expected.values()), len(self.outcomes))
        if self.on_progress is not None:
            self.on_progress({'bags': running, 'load': list(self.load)})
