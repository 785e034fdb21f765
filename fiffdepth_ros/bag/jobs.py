"""One recording of a many-bag run: the same per-bag run as ``process_bag``, made idempotent.

Used by the sequential ``process_bags`` path (in this process, one bag after another): it plans
and runs the bag exactly as ``process_bag`` does (``plan_run`` and ``_processor`` of
process_bag.py, the same BagProcessor and DepthPipeline), so a bag gets the same messages
whichever way it is run; the Ray path (bag/fleet.py) splits the same steps over a reader, the
model actors and a writer, with the same output rules. What it adds:

* the output is written under ``OUTPUT_ROOT/.partial/<name>`` and renamed to
  ``OUTPUT_ROOT/<name>`` only once closed after a complete run, so an output at its final name is
  always complete: a run killed, failed or interrupted leaves only a ``.partial`` folder, which
  the next attempt deletes (a retried Ray task starts clean);
* a recording that fails for its own reasons (corrupt, no camera topic) becomes an outcome with
  the error, never an exception that would stop the other recordings.
"""
from __future__ import annotations

import copy
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversions.backends import RosbagsBackend
from .inputs import BagJob
from .reader import BagReader
from .writer import check_output

PARTIAL_DIR = '.partial'

DONE, COMPLETE, FAILED, INTERRUPTED, NOT_STARTED = (
    'done', 'complete already', 'failed', 'interrupted', 'not started')


@dataclass
class BagOutcome:
    name: str
    input: str
    output: str
    status: str
    frames: int = 0              # images processed (model + scale)
    metric_frames: int = 0
    skipped: int = 0             # selected images that could not be processed
    wall_s: float = 0.0
    error: str = ''
    warning: str = ''            # e.g. a damaged tail: the output holds what came before it
    # Busy time by stage (they overlap; on Ray each runs in its own process).
    model_s: float = 0.0         # inside the model (batched predict calls)
    read_s: float = 0.0          # reading, matching and decoding
    finish_s: float = 0.0        # scale fit, messages, serialisation
    write_s: float = 0.0         # writing the output bag


def output_complete(job: BagJob) -> bool:
    """Only complete outputs ever get the final name (see the module docstring)."""
    return (job.output / 'metadata.yaml').is_file()


def partial_path(job: BagJob) -> Path:
    return job.output.parent / PARTIAL_DIR / job.output.name


def fresh_partial(job: BagJob) -> Path:
    path = partial_path(job)
    if path.exists():              # a killed or interrupted attempt's leftovers: ours to delete
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def publish(job: BagJob, partial: Path, overwrite: bool) -> None:
    if job.output.exists():
        # check_output accepted it at the start: --overwrite and a bag folder.
        check_output(job.output, overwrite, job.input)
        shutil.rmtree(job.output)
    os.replace(partial, job.output)        # same filesystem: atomic


def job_args(args, job: BagJob, output: Path):
    """process_bag's arguments for one recording (the shared options are the many-bag run's)."""
    a = copy.copy(args)
    a.input = [str(job.input)]
    a.output = str(output)
    a.overwrite = False                    # the partial folder is always fresh
    a.no_progress = True                   # the many-bag run shows its own progress
    return a


def describe_error(exc: BaseException) -> str:
    from .process_bag import UsageError
    from .reader import BagReadError
    from .topics import TopicError
    from .writer import BagWriteError
    text = str(exc).strip().split('\n')[0][:300]
    known = (BagReadError, BagWriteError, TopicError, UsageError)
    return text if isinstance(exc, known) and text else f'{type(exc).__name__}: {text}'


class _Linked:
    """The processor's own stop event, set when ``outer`` is. BagProcessor sets its event
    itself at every end, so ``outer`` alone tells a requested stop from a normal end."""

    def __init__(self, outer: threading.Event):
        self.event = threading.Event()
        self._done = threading.Event()
        self._outer = outer
        threading.Thread(target=self._follow, name='bag-stop-link', daemon=True).start()

    def _follow(self) -> None:
        while not self._done.is_set():
            if self._outer.wait(0.1):
                self.event.set()
                return

    def close(self) -> None:
        self._done.set()


class NullProgress:
    def begin(self, expected: int | None) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def run_job(job: BagJob, args, params: dict[str, Any], estimator, *,
            stop: threading.Event | None = None, progress=None,
            log=lambda text: None) -> BagOutcome:
    """Process one recording into its output with the loaded model ``estimator``.
    ``progress``: begin(expected frames) and update(n).
    ``stop`` set: the run ends early and its output stays partial (interrupted)."""
    from .process_bag import _estimated_frames, _processor, plan_run
    stop = stop or threading.Event()
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    outcome = BagOutcome(job.name, str(job.input), str(job.output), FAILED)
    link = _Linked(stop)
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        check_output(job.output, args.overwrite, job.input)
        partial = fresh_partial(job)
        bag_args = job_args(args, job, partial)
        backend = RosbagsBackend()
        with BagReader(job.input) as reader:
            plan = plan_run(bag_args, params, reader, backend.typestore, log)
            on_cuda = getattr(getattr(estimator, 'device', None), 'type', 'cpu') == 'cuda'
            processor = _processor(bag_args, plan, reader, estimator, backend, partial,
                                   link.event,
                                   batch=args.batch_size or (4 if on_cuda else 1))
            progress.begin(_estimated_frames(reader, plan.topics, plan.window))
            processor.progress = progress
            stats = processor.run()
        outcome.frames, outcome.metric_frames = stats.processed, stats.metric_frames
        outcome.skipped = stats.skipped_total
        outcome.model_s = stats.model_s
        outcome.read_s = stats.stage_s['read+decode']
        outcome.finish_s, outcome.write_s = stats.stage_s['finish'], stats.stage_s['write']
        outcome.warning = stats.read_error or ''
        if stop.is_set():
            outcome.status = INTERRUPTED
        else:
            publish(job, partial, args.overwrite)
            outcome.status = DONE
    except Exception as exc:           # this recording's own problem: report, keep going
        outcome.error = describe_error(exc)
    finally:
        link.close()
    outcome.wall_s = time.perf_counter() - t0
    return outcome
