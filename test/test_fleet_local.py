"""process_bags without Ray: many inputs, one after another, idempotent; chunk replay in-process.

The reference for every output is the single-bag ``process_bag`` run of the same recording with
the same options (fleet_helpers.sequential_reference), compared message for message.
"""
import argparse
import sys
import threading
import time

import pytest

from fleet_helpers import (COMMON, ReusedModel, contents, make_recordings, sequential_reference,
                           warm_prompt_cache)
from fiffdepth_ros import params as P
from fiffdepth_ros.bag.chunks import ChunkOutput, ReplayEstimator, chunk_windows, predict_chunk
from fiffdepth_ros.bag.fleet import FleetUnavailable, require_ray
from fiffdepth_ros.bag.frames import Window
from fiffdepth_ros.bag.inputs import InputError, expand_inputs
from fiffdepth_ros.bag.jobs import DONE, FAILED, output_complete, partial_path, run_job
from fiffdepth_ros.bag.process_bags import build_parser, main, process
from fiffdepth_ros.bag.reader import BagReader
from fiffdepth_ros.conversions.backends import RosbagsBackend


@pytest.fixture(scope='module')
def recordings(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp('fleet_local')
    info = make_recordings(root / 'in')
    warm_prompt_cache(tiny_checkpoint)
    model = ReusedModel()
    refs = {}
    for name, path in (('a', 'a'), ('b', 'b'), ('long', 'long')):
        assert sequential_reference(root / 'in' / path, root / 'ref' / name, tiny_checkpoint,
                                    info['params']) == 0
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


# ---------------------------------------------------------------------- chunks (no Ray)
def _chunk_setup(rec, out):
    args = build_parser().parse_args(argv(rec, rec['root'] / 'in' / 'long', out=out))
    params = P.validate(dict(P.load_yaml(str(rec['params']), node_name='depth_node'),
                             model=str(rec['model']), processing_res=64, use_lidar=True))
    (rec['root'] / out).mkdir()
    return args, params, expand_inputs(args.inputs, rec['root'] / out)[0]


def test_chunk_windows_cover_the_bag_without_gaps(recordings):
    with BagReader(recordings['root'] / 'in' / 'long') as reader:
        windows = chunk_windows(reader, Window(), 0.6)
        assert len(windows) == 4                          # 2.4 s recording
        assert windows[0].start_ns is None and windows[-1].end_ns is None
        for w, nxt in zip(windows, windows[1:]):
            assert w.end_ns == nxt.start_ns
        assert chunk_windows(reader, Window(stride=2), 0.6) == [Window(stride=2)]
        assert chunk_windows(reader, Window(), 5.0) == [Window()]
        typestore = RosbagsBackend().typestore
        est = _estimator(P.validate({'model': str(recordings['model']),
                                     'processing_res': 64}))
        counts = [len(predict_chunk(est, reader, '/camera/image_raw', typestore, w).frames)
                  for w in windows]
    assert sum(counts) == 24 and all(c > 0 for c in counts)


def test_chunked_replay_equals_the_sequential_run(recordings):
    rec = recordings
    args, params, job = _chunk_setup(rec, 'chunked_local')
    est = _estimator(params)
    seen = []

    def make(plan, reader, stop):
        windows = chunk_windows(reader, plan.window, 0.6)

        def lazily():             # computed as the replay asks for them
            for w in windows:
                seen.append(w)
                yield predict_chunk(est, reader_for_chunks, plan.topics.image,
                                    RosbagsBackend().typestore, w)
        return ReplayEstimator(lazily(), stop)
    with BagReader(job.input) as reader_for_chunks:
        outcome = run_job(job, args, params, make_estimator=make)
    assert outcome.status == DONE, outcome.error
    assert len(seen) == 4
    assert contents(job.output) == rec['refs']['long']


def test_a_replay_out_of_step_fails_instead_of_writing_wrong_depth(recordings):
    rec = recordings
    args, params, job = _chunk_setup(rec, 'chunked_wrong')
    est = _estimator(params)

    def make(plan, reader, stop):
        windows = chunk_windows(reader, plan.window, 0.6)
        chunks = [predict_chunk(est, reader, plan.topics.image, RosbagsBackend().typestore, w)
                  for w in windows]
        # Drop one frame of the second chunk: every later output would belong to another image.
        chunks[1] = ChunkOutput(chunks[1].window, chunks[1].frames[1:])
        return ReplayEstimator(iter(chunks), stop)
    outcome = run_job(job, args, params, make_estimator=make)
    assert outcome.status == FAILED and 'out of step' in outcome.error
    assert not output_complete(job)


def test_parser_is_the_process_bag_parser_plus_fleet_options():
    # argparse.Namespace travels to Ray actors: it must pickle.
    import pickle
    args = build_parser().parse_args(['x', '-o', 'o'])
    assert isinstance(pickle.loads(pickle.dumps(args)), argparse.Namespace)
