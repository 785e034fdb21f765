"""process_bags on a local two-node Ray cluster (2 CPUs): the driver's node with no CPU for
models, and a node with 2 CPUs where the model actors go; one cluster, one set of model actors
and pools of reader / writer actors for the whole module (start-ups cost seconds each).

Outputs are compared message for message with the single-bag ``process_bag`` run of the same
recording (fleet_helpers.sequential_reference); the killed workers are real SIGKILLs of the
model actor's process, or of the writer actor's, mid-bag.
"""
import os
import signal
import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from fleet_helpers import (COMMON, ReusedModel, contents, make_recordings, sequential_reference,
                           warm_prompt_cache)
from fiffdepth_ros.bag.inputs import expand_inputs
from fiffdepth_ros.bag.jobs import output_complete, partial_path
from fiffdepth_ros.bag.process_bag import resolve_params
from fiffdepth_ros.bag.process_bags import build_parser, main
from fiffdepth_ros.bag.fleet import Fleet, FleetOptions, run_fleet
from fiffdepth_ros.bag.synthetic import SyntheticBagSpec, write_synthetic_bag

STRIDE2 = ('--stride', '2', '--batch-size', '2')
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
    cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 0,
                                                            'include_dashboard': False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    fleet = Fleet(ray, params, FleetOptions(workers=2, retries=2), threads=1)
    # The actors load the model while the references run here.
    model = ReusedModel()
    refs = {}
    for name in ('a', 'b', 'long', 'slow'):
        assert sequential_reference(root / 'in' / name, root / 'ref' / name, tiny_checkpoint,
                                    info['params']) == 0
        refs[name] = contents(root / 'ref' / name)
    assert sequential_reference(root / 'in' / 'long', root / 'ref' / 'long_s2', tiny_checkpoint,
                                info['params'], STRIDE2) == 0
    refs['long_s2'] = contents(root / 'ref' / 'long_s2')
    model.undo()
    fleet.wait_ready()
    yield dict(root=root, refs=refs, argv=argv, args=args, params=params, fleet=fleet)
    fleet.close()
    ray.shutdown()
    cluster.shutdown()


def fleet_run(setup, names, args=None, out='out', **kwargs):
    options = FleetOptions(retries=2, bags_in_flight=kwargs.pop('bags_in_flight', None),
                           batches_in_flight=kwargs.pop('batches_in_flight', None))
    inputs = [str(setup['root'] / 'in' / n) for n in names]
    return run_fleet(expand_inputs(inputs, setup['root'] / out), args or setup['args'],
                     setup['params'], options, fleet=setup['fleet'], **kwargs)


@pytest.fixture(scope='module')
def first_run(setup):
    return fleet_run(setup, ['a', 'corrupt.mcap', 'b', 'long', 'nocam'])


def test_outputs_equal_the_sequential_runs(first_run, setup):
    by_name = {o.name: o for o in first_run.outcomes}
    for name in ('a', 'b', 'long'):            # MCAP and sqlite3
        assert by_name[name].status == 'done', by_name[name].error
        assert contents(setup['root'] / 'out' / name) == setup['refs'][name], name
    assert by_name['a'].frames == 4 and by_name['b'].frames == 3
    assert by_name['a'].metric_frames == 4     # LiDAR anchors: the scale filter was exercised
    # Where the time went, measured in each process: reading, the model, finishing, writing.
    assert all(by_name['long'].__dict__[k] > 0 for k in ('read_s', 'model_s', 'finish_s',
                                                           'write_s'))


def test_one_long_bag_spreads_over_both_actors_and_equals_its_sequential_output(setup):
    """--stride 2 --batch-size 2: the reader selects and batches the frames as the sequential
    run does, the batches go to both model actors, the writer puts them back in bag order."""
    args = build_parser().parse_args(['unused'] + setup['argv'] + list(STRIDE2))
    result = fleet_run(setup, ['long'], args=args, out='out_s2', bags_in_flight=1,
                       batches_in_flight=3)
    long = result.outcomes[0]
    assert long.status == 'done', long.error
    assert long.frames == 12                   # 24 images, every second one
    assert all(n > 0 for n in result.actor_batches), result.actor_batches
    assert result.peak_batches_in_flight == 3  # bounded, and more than one at a time
    assert contents(setup['root'] / 'out_s2' / 'long') == setup['refs']['long_s2']


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
    # Readers and writers are their own processes, on the driver's node (where the files are);
    # the model actors on the other node, which never opens a recording.
    io, driver = first_run.io_memory, ray.get_runtime_context().get_node_id()
    assert {m['kind'] for m in io} == {'reader', 'writer'}
    assert {m['node'] for m in io} == {driver}
    assert driver not in {m['node'] for m in first_run.actor_memory}


def test_a_rerun_skips_finished_bags(first_run, setup, capsys):
    out = setup['root'] / 'out'
    stamps = {n: (out / n / 'metadata.yaml').stat().st_mtime_ns for n in ('a', 'b', 'long')}
    inputs = [str(setup['root'] / 'in' / n) for n in ('a', 'b', 'long')]
    code = main(inputs + setup['argv'] + ['--ray', 'local'])
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in printed.splitlines()[3:6]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ('a', 'complete', 'already'), ('b', 'complete', 'already'),
        ('long', 'complete', 'already')], printed
    assert stamps == {n: (out / n / 'metadata.yaml').stat().st_mtime_ns for n in stamps}


def _slow_job(setup, out='out'):
    return expand_inputs([str(setup['root'] / 'in' / 'slow')], setup['root'] / out)[0]


def test_a_killed_model_actor_is_restarted_and_its_bag_completes(setup):
    fleet = setup['fleet']
    before = fleet.pids()
    killed = []

    def kill_once(snapshot):
        bag = snapshot['bags'].get('slow')
        if bag and not killed and bag['frames'] >= 2 and snapshot['load'][0] > 0:
            os.kill(before[0], signal.SIGKILL)      # a model actor's process, mid-batch
            killed.append(bag['frames'])
    result = fleet_run(setup, ['slow'], out='out_kill_model', on_progress=kill_once)
    slow = result.outcomes[0]
    assert killed and killed[0] < SLOW_FRAMES, 'the bag ended before the kill'
    assert slow.status == 'done', slow.error
    after = fleet.pids()
    assert after[0] != before[0] and after[1] == before[1]     # restarted by Ray
    assert slow.frames == SLOW_FRAMES
    assert contents(setup['root'] / 'out_kill_model' / 'slow') == setup['refs']['slow']


def test_a_killed_writer_s_bag_is_started_again_and_completes(setup):
    attempts, killed = [], []

    def kill_writer(snapshot):
        bag = snapshot['bags'].get('slow')
        if bag is None:
            return
        attempts.append(bag['attempt'])
        if not killed and bag['frames'] >= 2 and 'writer' in bag:
            os.kill(bag['writer'], signal.SIGKILL)   # the writer, with its bag half written
            killed.append(bag['frames'])
    result = fleet_run(setup, ['slow'], out='out_kill_writer', on_progress=kill_writer)
    slow = result.outcomes[0]
    assert killed and killed[0] < SLOW_FRAMES, 'the bag ended before the kill'
    assert slow.status == 'done', slow.error
    assert max(attempts) == 2                        # started again, once
    assert slow.frames == SLOW_FRAMES
    job = _slow_job(setup, 'out_kill_writer')
    assert contents(job.output) == setup['refs']['slow']
    assert not partial_path(job).exists()


def test_stopping_the_fleet_leaves_finished_outputs_valid(setup):
    """As Ctrl-C does: the running bag stops and stays partial; --overwrite's old complete
    output is untouched until a new one is complete."""
    first = fleet_run(setup, ['slow'], out='out_stop')
    assert first.outcomes[0].status == 'done', first.outcomes[0].error
    before_a = fleet_run(setup, ['a'], out='out_stop').outcomes[0]
    assert before_a.status == 'done'
    before = contents(setup['root'] / 'out_stop' / 'a')
    args = build_parser().parse_args(['unused'] + setup['argv'] + ['--overwrite'])
    stop = threading.Event()

    def stop_when_started(snapshot):
        bag = snapshot['bags'].get('slow')
        if bag and bag['frames'] >= 2:
            stop.set()
    result = fleet_run(setup, ['slow', 'a'], args=args, out='out_stop',
                       on_progress=stop_when_started, stop=stop, bags_in_flight=1)
    statuses = {o.name: o.status for o in result.outcomes}
    assert statuses == {'slow': 'interrupted', 'a': 'not started'}
    job = _slow_job(setup, 'out_stop')
    assert output_complete(job)               # the earlier complete output is still there
    assert contents(job.output) == setup['refs']['slow']
    partial = contents(partial_path(job))[0]  # the interrupted attempt: closed and readable
    assert 0 < len([m for m in partial if m[0] == '/camera/depth/image']) < SLOW_FRAMES
    assert contents(setup['root'] / 'out_stop' / 'a') == before
