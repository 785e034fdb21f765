"""process_bags without Ray: many inputs, one after another, idempotent; the shared batching.

The reference for every output is the single-bag ``process_bag`` run of the same recording with
the same options (fleet_helpers.sequential_reference), compared message for message.
"""
import argparse
import pickle
import sys
import threading
import time

import numpy as np
import pytest

from fleet_helpers import (COMMON, ReusedModel, contents, make_recordings, sequential_reference,
                           warm_prompt_cache)
from fiffdepth_ros import params as P
from fiffdepth_ros.bag.fleet import (FleetUnavailable, ModelActorImpl, ReaderImpl, WriterImpl,
                                     require_ray)
from fiffdepth_ros.bag.frames import CopyItem, SkipItem
from fiffdepth_ros.bag.inputs import InputError, expand_inputs
from fiffdepth_ros.bag.jobs import DONE, output_complete, partial_path, run_job
from fiffdepth_ros.bag.process_bag import resolve_params
from fiffdepth_ros.bag.process_bags import build_parser, main, process
from fiffdepth_ros.bag.runner import Batcher, _Prepared

STRIDE2 = ('--stride', '2', '--batch-size', '2')
COPY = ('--copy-input',)


@pytest.fixture(scope='module')
def recordings(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp('fleet_local')
    info = make_recordings(root / 'in')
    warm_prompt_cache(tiny_checkpoint)
    model = ReusedModel()
    refs = {}
    for name, path, extra in (('a', 'a', ()), ('b', 'b', ()), ('long', 'long', ()),
                              ('long_s2', 'long', STRIDE2), ('b_copy', 'b', COPY)):
        assert sequential_reference(root / 'in' / path, root / 'ref' / name, tiny_checkpoint,
                                    info['params'], extra) == 0
        refs[name] = contents(root / 'ref' / name)
    yield dict(root=root, refs=refs, model=tiny_checkpoint, **info)
    model.undo()


def argv(rec, *inputs, out='out'):
    return ([str(i) for i in inputs] + ['-o', str(rec['root'] / out), '--model',
                                         str(rec['model']), '--params', str(rec['params'])]
            + COMMON)


# ---------------------------------------------------------------------- inputs
def test_inputs_expand_paths_folders_globs_and_lists(tmp_path):
    for name in ('x', 'y'):
        (tmp_path / 'bags' / name).mkdir(parents=True)
        (tmp_path / 'bags' / name / 'metadata.yaml').write_text('{}')
        (tmp_path / 'bags' / name / f'{name}_0.mcap').write_bytes(b'')
    (tmp_path / 'bags' / 'deep').mkdir()
    (tmp_path / 'bags' / 'deep' / 'z.mcap').write_bytes(b'')
    (tmp_path / 'bags' / 'w.bag').write_bytes(b'')
    (tmp_path / 'bags' / 'notes.txt').write_text('not a bag')
    root = tmp_path / 'out'

    folder = expand_inputs([str(tmp_path / 'bags')], root)
    # Bag folders are one recording each (their storage files are not searched), in path order.
    assert [j.name for j in folder] == ['z', 'w', 'x', 'y']
    assert folder[2].input == tmp_path / 'bags' / 'x' and folder[2].output == root / 'x'

    globbed = expand_inputs([str(tmp_path / 'bags' / '**' / '*.mcap')], root)
    assert [j.name for j in globbed] == ['z']          # x_0.mcap / y_0.mcap are inside bags

    listing = tmp_path / 'list.txt'
    listing.write_text('# recordings of monday\nbags/y\n\nbags/deep/z.mcap  # the short one\n')
    listed = expand_inputs([f'@{listing}', str(tmp_path / 'bags' / 'y')], root)
    assert [(j.name, j.input) for j in listed] == [
        ('y', tmp_path / 'bags' / 'y'), ('z', tmp_path / 'bags' / 'deep' / 'z.mcap')]


def test_inputs_refuse_what_cannot_work(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'metadata.yaml').write_text('{}')
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'a.mcap').write_bytes(b'')
    with pytest.raises(InputError, match='would both write'):
        expand_inputs([str(tmp_path / 'a'), str(tmp_path / 'other' / 'a.mcap')], tmp_path / 'o')
    with pytest.raises(InputError, match='does not exist'):
        expand_inputs([str(tmp_path / 'missing')], tmp_path / 'o')
    with pytest.raises(InputError, match='matches no recording'):
        expand_inputs([str(tmp_path / '*.db3')], tmp_path / 'o')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match='holds no recording'):
        expand_inputs([str(tmp_path / 'empty')], tmp_path / 'o')
    with pytest.raises(InputError, match='cannot read list file'):
        expand_inputs([f'@{tmp_path / "nolist.txt"}'], tmp_path / 'o')


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, 'ray', None)          # import ray -> ImportError
    with pytest.raises(FleetUnavailable, match=r"fiffdepth_ros\[fleet\].*requirements-fleet"):
        require_ray()
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'metadata.yaml').write_text('{}')
    code = main([str(tmp_path / 'a'), '-o', str(tmp_path / 'o'), '--model', 'm', '--ray'])
    assert code == 1
    assert 'pip install' in capsys.readouterr().err


def test_every_process_bag_option_is_accepted():
    args = build_parser().parse_args(['x', '-o', 'o', '--stride', '2', '--storage', 'sqlite3',
                                      '-p', 'a:=1', '--copy-input', '--ray', '--workers', '3'])
    assert (args.stride, args.storage, args.param, args.copy_input) == (2, 'sqlite3', ['a:=1'],
                                                                       True)
    assert (args.ray, args.workers) == ('local', 3)


# ---------------------------------------------------------------------- sequential
def test_sequential_run_matches_process_bag_and_reports_broken_inputs(recordings, capsys):
    rec = recordings
    inputs = [rec['root'] / 'in' / n for n in ('a', 'corrupt.mcap', 'b', 'nocam')]
    code = main(argv(rec, *inputs))
    printed = capsys.readouterr().out
    assert code == 1                                 # a recording failed: the table says which
    out = rec['root'] / 'out'
    for name in ('a', 'b'):
        assert contents(out / name) == rec['refs'][name], name
    table = {line.split()[0]: line for line in printed.splitlines()[2:-1]}
    assert 'done' in table['a'] and 'done' in table['b']
    assert 'failed' in table['corrupt'] and 'cannot read input bag' in table['corrupt']
    assert 'failed' in table['nocam'] and 'image' in table['nocam'].lower()
    assert not (out / 'corrupt').exists() and not (out / 'nocam').exists()
    assert not (out / '.partial').exists()           # removed once empty

    # A rerun skips what is complete; --overwrite redoes it (same messages again).
    before = (out / 'a' / 'metadata.yaml').stat().st_mtime_ns
    outcomes = process(argv(rec, inputs[0], inputs[2]), bar=False)
    assert [o.status for o in outcomes] == ['complete already'] * 2
    assert (out / 'a' / 'metadata.yaml').stat().st_mtime_ns == before
    outcomes = process(argv(rec, inputs[0]) + ['--overwrite'], bar=False)
    assert [o.status for o in outcomes] == ['done']
    assert (out / 'a' / 'metadata.yaml').stat().st_mtime_ns != before
    assert contents(out / 'a') == rec['refs']['a']


def test_an_interrupted_bag_never_gets_its_final_name(recordings, tiny_checkpoint):
    rec = recordings
    args = build_parser().parse_args(argv(rec, rec['root'] / 'in' / 'long', out='stopped'))
    params = P.validate(dict(P.load_yaml(str(rec['params']), node_name='depth_node'),
                             model=str(tiny_checkpoint), processing_res=64, use_lidar=True))
    job = expand_inputs(args.inputs, rec['root'] / 'stopped')[0]
    stop = threading.Event()

    class StopAfterTwo:
        frames = 0

        def begin(self, expected):
            pass

        def update(self, n=1):
            self.frames += n
            if self.frames == 2:
                stop.set()                      # as Ctrl-C does
                time.sleep(0.3)                 # the writer waits: the stop reaches the reader
    (rec['root'] / 'stopped').mkdir()
    outcome = run_job(job, args, params, _estimator(params), stop=stop, progress=StopAfterTwo())
    assert outcome.status == 'interrupted'
    assert not output_complete(job)
    # The partial output is a closed, readable bag holding the frames finished.
    messages, _ = contents(partial_path(job))
    images = [m for m in messages if m[0] == '/camera/depth/image']
    assert 2 <= len(images) < 24


def _estimator(params):
    from fiffdepth_ros.model import runtime
    return runtime.load_estimator(params)          # loaded once (ReusedModel)


# ---------------------------------------------------------------------- the Ray path's parts
def test_batcher_groups_as_the_model_stage_needs():
    class Frame:
        def __init__(self, shape):
            self.rgb = np.zeros(shape, np.uint8)
    small, big = (4, 6, 3), (8, 6, 3)
    p1, p2, p3, p4 = (_Prepared(Frame(s), i) for i, s in enumerate((small, small, small, big)))
    c1, c2, c3 = (CopyItem(raw=i) for i in range(3))
    skip = SkipItem('corrupt', 9)
    b = Batcher(2)
    steps = [b.add(p1), b.add(p2), b.add(c1), b.add(p3), b.add(p4), b.add(c2), b.add(skip),
             b.add(c3), b.flush()]
    assert steps == [
        [], [([p1, p2], [p1, p2])],           # a full batch
        [([c1], [])],                          # nothing waits for a batch: passes at once
        [], [([p3], [p3])],                    # another image size ends the batch early
        [], [], [], [([p4, c2, skip, c3], [p4])]]     # items behind a frame wait with it
    # A busy input topic never piles up behind a waiting frame: 512 items run the batch.
    b = Batcher(4)
    groups = [b.add(p1)] + [b.add(CopyItem(raw=i)) for i in range(511)]
    assert [len(g) for g in groups].count(1) == 1 and groups[-1][0][1] == [p1]
    assert len(groups[-1][0][0]) == 512


def _transported(value):
    """What Ray's object store does to a value between processes."""
    return pickle.loads(pickle.dumps(value, protocol=5))


def _split_run(rec, name, extra, out, model_fails_at=None):
    """The Ray path's reader, model actor and writer driven in this process, each value
    pickled between them as it travels between Ray processes. ``model_fails_at``: the model
    call (0-based) that raises, as an out-of-memory would."""
    args = build_parser().parse_args(argv(rec, rec['root'] / 'in' / name, out=out)
                                     + list(extra))
    params = resolve_params(args)
    job = expand_inputs(args.inputs, rec['root'] / out)[0]
    model = ModelActorImpl(params, threads=1)
    assert model.ready() == ''
    if model_fails_at is not None:
        real, calls = model.pipeline.predict, []

        def predict(frames):
            calls.append(len(frames))
            if len(calls) == model_fails_at + 1:
                raise MemoryError('no memory left for this batch')
            return real(frames)
        model.pipeline.predict = predict
    reader, writer = ReaderImpl(), WriterImpl()
    opened = _transported(reader.open(job, args, params, args.batch_size or 1))
    assert writer.open(job, args, opened, model.traits())['error'] == ''
    read_s, batches = 0.0, []
    while True:
        meta, groups, items = _transported(reader.next_batch())
        batches.append([len(g) for g in groups])
        writer.write(_transported(items), _transported(groups),
                     _transported(model.predict(_transported(groups))))
        if len(batches) == 1:         # a batch out of order is refused, not written
            with pytest.raises(RuntimeError, match='arrived after'):
                writer.write(_transported(items), [], ([], 0.0))
        read_s += meta['read_s']
        if meta['done']:
            return writer.close(meta, read_s, complete=True), job, batches


@pytest.mark.parametrize('name, extra, ref, frames', [
    ('long', STRIDE2, 'long_s2', 12), ('b', COPY, 'b_copy', 3)])
def test_the_ray_path_s_parts_write_the_sequential_output(recordings, name, extra, ref, frames):
    outcome, job, batches = _split_run(recordings, name, extra, f'split_{ref}')
    assert outcome.status == DONE, outcome.error
    assert outcome.frames == frames
    assert contents(job.output) == recordings['refs'][ref]
    assert not partial_path(job).exists()
    if ref == 'long_s2':             # the sequential run's batches: every second image, in pairs
        assert [n for b in batches for n in b] == [2] * 6


def test_a_failed_model_call_skips_its_frames_and_the_bag_goes_on(recordings):
    outcome, job, _ = _split_run(recordings, 'b', (), 'split_oom', model_fails_at=1)
    assert outcome.status == DONE, outcome.error
    assert (outcome.frames, outcome.skipped) == (2, 1)     # the second frame was lost
    messages, _ = contents(job.output)
    depth = [m[1] for m in messages if m[0] == '/camera/depth/image']
    reference = [m[1] for m in recordings['refs']['b'][0] if m[0] == '/camera/depth/image']
    assert depth == [reference[0], reference[2]]


def test_actor_count_leaves_room_for_reserved_reader_and_writer_cpus():
    from fiffdepth_ros.bag.fleet import FleetOptions, _actor_shape, _check_fits

    class Cluster:                       # what the sizing asks of Ray
        def __init__(self, **resources):
            self.resources = resources

        def cluster_resources(self):
            return self.resources
    cpus8, gpus2 = Cluster(CPU=8.0), Cluster(CPU=8.0, GPU=2.0)
    assert _actor_shape(cpus8, FleetOptions()) == (8, 1.0, 0.0)
    # 1 CPU per actor + 2 x 0.5 for the reader and writer of its bag in flight: 4 actors.
    assert _actor_shape(cpus8, FleetOptions(io_cpus=0.5)) == (4, 1.0, 0.0)
    assert _actor_shape(gpus2, FleetOptions(gpus_per_actor=0.5)) == (4, 1.0, 0.5)
    _check_fits(cpus8, FleetOptions(io_cpus=0.5), 4, 1.0)
    with pytest.raises(FleetUnavailable, match=r'= 16 CPUs, the cluster has 8'):
        _check_fits(cpus8, FleetOptions(io_cpus=0.5), 8, 1.0)


def test_the_parser_is_the_process_bag_parser_plus_fleet_options():
    # argparse.Namespace travels to Ray actors: it must pickle.
    import pickle
    args = build_parser().parse_args(['x', '-o', 'o'])
    assert isinstance(pickle.loads(pickle.dumps(args)), argparse.Namespace)
