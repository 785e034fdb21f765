"""``process_bags``: ``process_bag`` for many recordings, here one after another or on Ray.

    process_bags INPUT... -o OUTPUT_ROOT [--ray [ADDRESS]] [--workers N] [--io-node driver|any]
                 [--overwrite] [any process_bag option: --model, --params, -p, --lidar-topic ...]

INPUT: recordings, folders of them, globs or @LIST files (see fiffdepth_ros.bag.inputs); each
recording's output is OUTPUT_ROOT/<its name>. Every option of ``process_bag`` applies to every
recording, with the same meaning; one recording gets the same output bag as ``process_bag``
gives it. Outputs appear under their final name only when complete, so a rerun skips what is
done (``--overwrite`` redoes it) and a recording that failed or was interrupted is redone.

Exit status: 0 every recording done (or complete already), 1 cannot start or some recording
failed (the table says which and why), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

from .. import params as P
from .fleet_report import FleetBar, format_table
from .inputs import BagJob, InputError, expand_inputs
from .jobs import (COMPLETE, FAILED, INTERRUPTED, NOT_STARTED, PARTIAL_DIR, BagOutcome,
                   output_complete, run_job)


def build_parser() -> argparse.ArgumentParser:
    from .process_bag import build_parser as single_bag_parser
    ap = argparse.ArgumentParser(
        prog='process_bags', description='Metric depth for many recordings: process_bag for '
        'each, one after another or distributed on Ray. Each recording gets OUTPUT_ROOT/<name>.',
        epilog='Exit status: 0 all done, 1 error or a failed recording, 130 Ctrl-C (finished '
        'outputs are complete; unfinished ones stay under OUTPUT_ROOT/.partial).')
    ap.add_argument('inputs', nargs='+', metavar='INPUT',
                    help='a recording (rosbag2 folder, .mcap, .db3, ROS 1 .bag), a folder of '
                    'them (searched recursively), a glob (quote it) or @LIST (a text file, '
                    'one item per line)')
    ap.add_argument('-o', '--output-root', required=True, metavar='DIR',
                    help='folder of the output bags (created if missing)')
    fleet = ap.add_argument_group('distributed (Ray; pip install fiffdepth_ros[fleet])')
    fleet.add_argument('--ray', nargs='?', const='local', metavar='ADDRESS',
                       help="run on Ray: 'local' (default: start an instance here), 'auto' "
                       '(the cluster this machine belongs to) or a cluster address '
                       '(ray://head:10001)')
    fleet.add_argument('--workers', type=int, metavar='N',
                       help='model actors (default: one per GPU / --gpus-per-actor, else one '
                       'per --cpus-per-actor CPUs)')
    fleet.add_argument('--gpus-per-actor', type=float, default=1.0, metavar='G',
                       help='GPUs each model actor reserves when the cluster has GPUs '
                       '(fractions share a GPU; default 1)')
    fleet.add_argument('--cpus-per-actor', type=float, default=1.0, metavar='C',
                       help='CPUs each model actor reserves (default 1; also its torch threads '
                       'unless --threads)')
    fleet.add_argument('--io-node', choices=('driver', 'any'), default='driver',
                       help="where recordings are read and outputs written: 'driver' (default: "
                       "this machine's node; no shared filesystem needed) or 'any' (spread "
                       'over the cluster; inputs and OUTPUT_ROOT on a filesystem every node '
                       'sees)')
    fleet.add_argument('--io-cpus', type=float, default=0.0, metavar='C',
                       help='CPUs each reader and writer reserves (default 0)')
    fleet.add_argument('--bags-in-flight', type=int, metavar='N',
                       help='recordings processed at once (default: the model actors)')
    fleet.add_argument('--batches-in-flight', type=int, metavar='N',
                       help="model batches in flight per recording, between its reader and its "
                       'writer (default: 2 x the model actors); bounds the memory held')
    fleet.add_argument('--retries', type=int, default=3, metavar='N',
                       help='restarts of a model actor that died (its batches are retried), '
                       'and new attempts of a recording whose reader or writer died '
                       '(default 3)')
    fleet.add_argument('--local-cpus', type=int, metavar='N',
                       help="CPUs of a '--ray local' instance (default: all)")
    # Every per-bag option of process_bag (without its INPUT/OUTPUT), with the same meaning.
    single = single_bag_parser()
    group = ap.add_argument_group('per-recording options (as for process_bag)')
    for action in single._actions:
        if action.option_strings and action.dest != 'help':
            group._add_action(action)
    return ap


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _LocalProgress:
    """The bar fed from this process: BagProcessor's update(n) per frame."""

    def __init__(self, bar: FleetBar, done_before: int, expected: list, bags_done: int):
        self.bar, self.done_before, self.expected, self.bags_done = (
            bar, done_before, expected, bags_done)
        self.frames = 0

    def begin(self, expected):
        self.expected.append(expected)
        self.bar.set_state(self.done_before, self.expected, self.bags_done)

    def update(self, n: int = 1):
        self.frames += n
        self.bar.set_state(self.done_before + self.frames, self.expected, self.bags_done)


def run_sequential(jobs: list[BagJob], args, params: dict, log=_log, bar: FleetBar | None = None,
                   stop: threading.Event | None = None) -> list[BagOutcome]:
    """Every job in this process with one loaded model, one after another."""
    from ..model.runtime import load_estimator, model_line, set_cpu_threads
    from .process_bag import CtrlC
    stop = stop or threading.Event()
    outcomes: list[BagOutcome] = []
    todo = [j for j in jobs if args.overwrite or not output_complete(j)]
    estimator = None
    if todo:
        estimator = load_estimator(params)
        info = estimator.describe()
        log(f'model {model_line(info)}')
        if getattr(estimator.device, 'type', 'cpu') != 'cuda':
            log(f'torch CPU threads: {set_cpu_threads(args.threads)}')
    frames_done, expected = 0, []
    ctrl_c = CtrlC(stop, log)
    with ctrl_c:
        for job in jobs:
            if job not in todo:
                outcomes.append(BagOutcome(job.name, str(job.input), str(job.output), COMPLETE))
                continue
            if stop.is_set():
                outcomes.append(BagOutcome(job.name, str(job.input), str(job.output),
                                           NOT_STARTED))
                continue
            progress = None
            if bar is not None:
                progress = _LocalProgress(bar, frames_done, expected, len(outcomes))
            outcome = run_job(job, args, params, estimator, stop=stop, progress=progress,
                              log=lambda t: None)
            if progress is not None:
                frames_done += progress.frames
            log(f'{job.name}: {outcome.status}' + (f' ({outcome.error})' if outcome.error
                                                   else ''))
            outcomes.append(outcome)
    return outcomes


def process(argv=None, log=_log, bar: bool | None = None):
    """Parse ``argv``, run, return the outcomes (raises on errors that stop everything)."""
    from .process_bag import _check_run_options, resolve_params
    args = build_parser().parse_args(argv)
    _check_run_options(args)
    params = resolve_params(args, warn=lambda t: log(f'process_bags: warning: {t}'))
    from pathlib import Path
    root = Path(args.output_root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = expand_inputs(args.inputs, root)
    show = FleetBar(len(jobs), disabled=args.no_progress if bar is None else not bar)
    t0 = time.perf_counter()
    try:
        if args.ray is not None:
            from .fleet import FleetOptions, run_fleet
            options = FleetOptions(address=args.ray, workers=args.workers,
                                   cpus_per_actor=args.cpus_per_actor,
                                   gpus_per_actor=args.gpus_per_actor,
                                   retries=args.retries, local_cpus=args.local_cpus,
                                   io_node=args.io_node, io_cpus=args.io_cpus,
                                   bags_in_flight=args.bags_in_flight,
                                   batches_in_flight=args.batches_in_flight)
            outcomes = run_fleet(jobs, args, params, options, log=log, bar=show).outcomes
        else:
            outcomes = run_sequential(jobs, args, params, log=log, bar=show)
    finally:
        show.close()
        try:
            (root / PARTIAL_DIR).rmdir()         # only when empty: nothing left unfinished
        except OSError:
            pass
    print(format_table(outcomes, time.perf_counter() - t0), flush=True)
    return outcomes


def main(argv=None) -> int:
    from ..model.checkpoint import ModelLoadError
    from .fleet import FleetUnavailable
    try:
        outcomes = process(argv)
    except (InputError, FleetUnavailable, P.ParameterError, ModelLoadError, ValueError,
            OSError) as exc:
        _log(f'process_bags: error: {exc}')
        return 1
    except KeyboardInterrupt:
        _log('process_bags: interrupted')
        return 130
    statuses = {o.status for o in outcomes}
    if statuses & {INTERRUPTED, NOT_STARTED}:
        return 130
    return 1 if FAILED in statuses else 0


if __name__ == '__main__':
    sys.exit(main())
