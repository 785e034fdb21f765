"""process_bags on a local Ray instance (2 CPUs): one instance and one set of model actors for
the whole module (Ray and actor start-up cost seconds each).

Outputs are compared message for message with the single-bag ``process_bag`` run of the same
recording (fleet_helpers.sequential_reference); the killed worker is a real SIGKILL of the
actor process that reports progress for the bag.
"""
import os
import signal
import threading

import pytest
import ray

from fleet_helpers import (COMMON, ReusedModel, contents, make_recordings, sequential_reference,
                           warm_prompt_cache)
from fiffdepth_ros.bag.inputs import expand_inputs
from fiffdepth_ros.bag.jobs import output_complete, partial_path
from fiffdepth_ros.bag.process_bag import resolve_params
from fiffdepth_ros.bag.process_bags import build_parser, main
from fiffdepth_ros.bag.fleet import Fleet, FleetOptions, run_fleet
from fiffdepth_ros.bag.synthetic import SyntheticBagSpec, write_synthetic_bag

CHUNK_S = 0.6
SLOW_FRAMES = 80


@pytest.fixture(scope='module')
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp('fleet_ray')
    info = make_recordings(root / 'in')
    write_synthetic_bag(root / 'in' / 'slow', SyntheticBagSpec(
        frames=SLOW_FRAMES, width=96, height=72, lidar_lines=8, lidar_columns=256,
        distinct_scenes=2), 'sqlite3')
    warm_prompt_cache(tiny_checkpoint)          # every run (and actor) loads the cached one
    argv = ['-o', str(root / 'out'), '--model', str(tiny_checkpoint), '--params',
            str(info['params'])] + COMMON
    args = build_parser().parse_args(['unused'] + argv)
    params = resolve_params(args)
    # Other jobs may fill this machine's memory: Ray's own OOM killer would kill our workers
    # (the kernel's still guards the machine).
    os.environ.setdefault('RAY_memory_monitor_refresh_ms', '0')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    fleet = Fleet(ray, params, FleetOptions(workers=2, retries=2), threads=1)
    # The actors load the model while the references run here.
    model = ReusedModel()
    refs = {}
    for name in ('a', 'b', 'long', 'slow'):
        assert sequential_reference(root / 'in' / name, root / 'ref' / name, tiny_checkpoint,
                                    info['params']) == 0
        refs[name] = contents(root / 'ref' / name)
    model.undo()
    fleet.wait_ready()
    yield dict(root=root, refs=refs, argv=argv, args=args, params=params, fleet=fleet)
    fleet.close()
    ray.shutdown()


def jobs(setup, *names):
    inputs = [str(setup['root'] / 'in' / n) for n in names]
    return expand_inputs(inputs, setup['root'] / 'out')


def fleet_run(setup, names, chunk_s=0.0, args=None, **kwargs):
    options = FleetOptions(chunk_s=chunk_s, retries=2)
    return run_fleet(jobs(setup, *names), args or setup['args'], setup['params'], options,
                     fleet=setup['fleet'], **kwargs)


@pytest.fixture(scope='module')
def first_run(setup):
    return fleet_run(setup, ['a', 'corrupt.mcap', 'b', 'long', 'nocam'], chunk_s=CHUNK_S)


def test_outputs_equal_the_sequential_runs(first_run, setup):
    by_name = {o.name: o for o in first_run.outcomes}
    for name in ('a', 'b'):                    # MCAP and sqlite3, whole bags on the actors
        assert by_name[name].status == 'done', by_name[name].error
        assert contents(setup['root'] / 'out' / name) == setup['refs'][name], name
    assert by_name['a'].frames == 4 and by_name['b'].frames == 3
    assert by_name['a'].metric_frames == 4     # LiDAR anchors: the scale filter was exercised


def test_a_chunked_long_bag_equals_its_sequential_output(first_run, setup):
    long = {o.name: o for o in first_run.outcomes}['long']
    assert long.status == 'done', long.error
    assert long.chunks == 4                    # 2.4 s in 0.6 s chunks
    assert contents(setup['root'] / 'out' / 'long') == setup['refs']['long']


def test_broken_bags_are_reported_and_the_others_finish(first_run, setup):
    by_name = {o.name: o for o in first_run.outcomes}
    assert [o.name for o in first_run.outcomes] == ['a', 'corrupt', 'b', 'long', 'nocam']
    assert by_name['corrupt'].status == 'failed'
    assert 'cannot read input bag' in by_name['corrupt'].error
    assert by_name['nocam'].status == 'failed' and 'image' in by_name['nocam'].error.lower()
    for name in ('corrupt', 'nocam'):
        assert not (setup['root'] / 'out' / name).exists()
    assert {o.status for o in first_run.outcomes} == {'done', 'failed'}
    # Per actor: its process and memory, for the benchmark's table.
    assert len(first_run.actor_memory) == 2 and all(m['rss_mib'] > 0
                                                     for m in first_run.actor_memory)


def test_a_rerun_skips_finished_bags(first_run, setup, capsys):
    out = setup['root'] / 'out'
    stamps = {n: (out / n / 'metadata.yaml').stat().st_mtime_ns for n in ('a', 'b', 'long')}
    inputs = [str(setup['root'] / 'in' / n) for n in ('a', 'b', 'long')]
    code = main(inputs + setup['argv'] + ['--ray', 'local', '--chunk-seconds', str(CHUNK_S)])
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in printed.splitlines()[3:6]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ('a', 'complete', 'already'), ('b', 'complete', 'already'),
        ('long', 'complete', 'already')], printed
    assert stamps == {n: (out / n / 'metadata.yaml').stat().st_mtime_ns for n in stamps}


def test_a_killed_worker_s_bag_is_retried_and_completes(setup):
    pids, killed = [], []

    def kill_once(snapshot):
        bag = snapshot['bags'].get('slow')
        if bag is None:
            return
        if not pids or pids[-1] != bag['pid']:
            pids.append(bag['pid'])
        if not killed and bag['frames'] >= 2:
            os.kill(bag['pid'], signal.SIGKILL)      # the actor process, mid-bag
            killed.append(bag['frames'])
    result = fleet_run(setup, ['slow'], on_progress=kill_once)
    slow = result.outcomes[0]
    assert killed and killed[0] < SLOW_FRAMES, 'the bag ended before the kill'
    assert slow.status == 'done', slow.error
    assert len(pids) >= 2                    # a second attempt began in a restarted actor
    assert slow.frames == SLOW_FRAMES
    assert contents(setup['root'] / 'out' / 'slow') == setup['refs']['slow']
    assert not partial_path(expand_inputs([str(setup['root'] / 'in' / 'slow')],
                                          setup['root'] / 'out')[0]).exists()


def test_stopping_the_fleet_leaves_finished_outputs_valid(setup):
    """As Ctrl-C does: the running bag stops and stays partial; --overwrite's old complete
    output is untouched until a new one is complete."""
    before = contents(setup['root'] / 'out' / 'a')
    args = build_parser().parse_args(['unused'] + setup['argv'] + ['--overwrite'])
    stop = threading.Event()

    def stop_when_started(snapshot):
        bag = snapshot['bags'].get('slow')
        if bag and bag['frames'] >= 2:
            stop.set()
    result = fleet_run(setup, ['slow', 'a'], args=args, on_progress=stop_when_started,
                       stop=stop)
    statuses = {o.name: o.status for o in result.outcomes}
    # 'a' may have finished beside 'slow' before the stop (then it is done and complete).
    assert statuses['slow'] == 'interrupted'
    assert statuses['a'] in ('done', 'interrupted', 'not started')
    job = jobs(setup, 'slow')[0]
    assert output_complete(job)               # the earlier complete output is still there
    assert contents(job.output) == setup['refs']['slow']
    partial = contents(partial_path(job))[0]  # the interrupted attempt: closed and readable
    assert 0 < len([m for m in partial if m[0] == '/camera/depth/image']) < SLOW_FRAMES
    assert contents(setup['root'] / 'out' / 'a') == before
