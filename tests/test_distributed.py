"""The distributed JointSolver: ranks sum their gradients, stay identical, and take the very
steps a single process takes when it composes its batches from the same shards; over MPI
(``mpiexec``) and over MindSpore's own collectives (``msrun``, the "mccl" backend on CPU)."""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from distributed_solver_worker import SCAN, shard

from helpers import SMALL_NETWORK, make_solver

from ptypy_npu.simulate import simulate_scan

WORKER = Path(__file__).with_name('distributed_solver_worker.py')
needs_mpi = pytest.mark.skipif(shutil.which('mpiexec') is None or find_spec('mpi4py') is None,
                               reason='mpiexec or mpi4py not found (pip install mpich mpi4py)')
MSRUN = shutil.which('msrun', path=str(Path(sys.executable).parent)) or shutil.which('msrun')
needs_msrun = pytest.mark.skipif(MSRUN is None, reason='msrun (MindSpore\'s launcher) not found beside python or on PATH')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(tmp_path, script, arguments, channel, ranks=2):
    """Run ``script`` on ``ranks`` processes started by mpiexec (channel 'mpi') or msrun ('mindspore'),
    every worker with this test's Python (msrun starts ``python`` from PATH: this one's folder goes first)."""
    if channel == 'mpi':
        command = ['mpiexec', '-n', str(ranks), sys.executable]
    else:  # msrun writes each worker's output to its log folder
        command = [MSRUN, f'--worker_num={ranks}', f'--local_worker_num={ranks}', f'--master_port={free_port()}',
                   f'--log_dir={tmp_path / "msrun_logs"}', '--join=True', '--cluster_time_out=300']
    environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    finished = subprocess.run(command + [str(script)] + arguments, capture_output=True, text=True, timeout=600,
                              env=environment)
    logs = ''.join(f.read_text()[-3000:] for f in sorted((tmp_path / 'msrun_logs').glob('worker_*.log')))
    assert finished.returncode == 0, (finished.stderr + logs)[-6000:]


def run_ranks(tmp_path, epochs, settings, ranks=2, channel='mpi'):
    launch(tmp_path, WORKER, [str(tmp_path), str(epochs), json.dumps(settings), channel], channel, ranks)
    return [dict(np.load(tmp_path / f'rank{r}.npz')) for r in range(ranks)]


def interleaved(data, ranks=2):
    """``data`` with rank 0's frames first, then rank 1's, ...: the shards one after another."""
    shards = [shard(data, r, ranks) for r in range(ranks)]
    return (dataclasses.replace(data, intensities=np.concatenate([s.intensities for s in shards]),
                                positions=np.concatenate([s.positions for s in shards])),
            [len(s.positions) for s in shards])


@needs_mpi
def test_two_ranks_take_the_steps_of_one_process_over_the_same_shards(tmp_path):
    settings = {'network.name': None, 'batch_size': 4, 'probe_update.start': 1}
    ranks = run_ranks(tmp_path, 4, settings)
    data, _ = simulate_scan(**SCAN)
    ordered, sizes = interleaved(data)
    single = make_solver(ordered, settings, shard_sizes=sizes)
    errors = single.run(4)
    for name in ('object', 'probe', 'losses'):
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name])  # every rank holds the same state
    # the same global batches; only the order of float32 sums differs (2 + 2 frames, then MPI), and
    # 40 steps amplify it: measured up to 2.6e-5 on an object of amplitude ~1 that the steps moved by > 0.1,
    # and 1.1e-5 of the probe's largest value on 6 of its 4096 pixels
    np.testing.assert_allclose(ranks[0]['object'], single.object, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ranks[0]['probe'], single.probe, rtol=1e-5, atol=3e-5 * np.abs(single.probe).max())
    np.testing.assert_allclose(ranks[0]['losses'], [h['loss'] for h in single.history], rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([r['errors'] for r in ranks]), errors, rtol=1e-4, atol=1e-6)
    assert np.abs(single.object - data.obj).max() > 0.1  # it did reconstruct


@needs_mpi
def test_ranks_training_the_network_keep_identical_weights_and_statistics(tmp_path):
    settings = {**SMALL_NETWORK, 'network.start': 1, 'batch_size': 4}
    ranks = run_ranks(tmp_path, 3, settings)
    names = [name for name in ranks[0] if name.startswith('network.')]
    assert any('moving_mean' in name for name in names)  # BatchNorm's running statistics are among them
    for name in names + ['object', 'probe']:
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name], err_msg=name)
    assert np.all(ranks[0]['errors'][:, 2] > 0)  # the network took part


@needs_msrun
def test_msrun_ranks_sum_in_graph_stay_identical_and_step_as_one_process(tmp_path):
    """MindSpore's data parallel: two processes from ``msrun`` sum gradients inside the compiled step
    (mccl on CPU). Two physics-only epochs, then two with the network."""
    settings = {**SMALL_NETWORK, 'network.start': 2, 'batch_size': 4, 'probe_update.start': 1}
    ranks = run_ranks(tmp_path, 4, settings, channel='mindspore')
    names = [name for name in ranks[0] if name.startswith('network.')]
    assert any('moving_mean' in name for name in names)
    for name in names + ['object', 'probe', 'losses']:
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name], err_msg=name)
    assert np.all(ranks[0]['errors'][:, 2] > 0)  # the network took part
    data, _ = simulate_scan(**SCAN)
    ordered, sizes = interleaved(data)
    single = make_solver(ordered, settings, shard_sizes=sizes)
    single.run(2)
    # the physics-only epochs are the global batches' steps; later BatchNorm sees each rank's half batch
    np.testing.assert_allclose(ranks[0]['losses'][:2], [h['loss'] for h in single.history], rtol=1e-5)


@needs_mpi
@needs_msrun
@pytest.mark.parametrize('channel', ['mpi', 'mindspore'])
def test_ranks_stitching_their_frames_with_a_model_get_the_object_of_all_frames(tmp_path, channel):
    """Inference ('infer' mode) on two processes: each stitches its own frames' patches and the
    weighted sums are added over the ranks (in float32), without turning each patch to the phase of
    what is stitched (each rank would turn its own mosaic): one process stitching so gives the same."""
    from ptypy_npu.models import StreamingReconstruction, load_model, save_model
    data, _ = simulate_scan(**SCAN)
    # batches of 4, not the dose's 16 (about 16 network steps, not 4): its patches must differ from the flat object
    solver = make_solver(data, {**SMALL_NETWORK, 'network.start': 0, 'batch_size': 4})
    solver.run(2)
    save_model(str(tmp_path / 'model'), solver.export_network())
    launch(tmp_path, WORKER.with_name('distributed_infer_worker.py'),
           [str(tmp_path), str(tmp_path / 'model'), channel], channel)
    ranks = [np.load(tmp_path / f'rank{r}.npz')['object'] for r in range(2)]
    stream = StreamingReconstruction(load_model(str(tmp_path / 'model')), data.obj.shape, data.probe, fill=data.obj,
                                     align_phases=False)
    stream.feed(data.intensities, data.positions)
    whole = stream.object
    np.testing.assert_array_equal(ranks[1], ranks[0])
    np.testing.assert_allclose(ranks[0], whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    assert np.abs(whole - data.obj).max() > 0.01  # the patches changed the object


def test_mindspore_collectives_outside_msrun_are_refused_with_the_launch_command():
    from ptypy_npu.distributed import MindSporeCommunicator
    with pytest.raises(RuntimeError, match=r"launch the processes with `msrun --worker_num=N"):
        MindSporeCommunicator()


def test_batches_compose_from_every_shard_and_refuse_an_uneven_split():
    data, _ = simulate_scan(frame_size=32, count=10, seed=1)
    solver = make_solver(data, {'network.name': None, 'batch_size': 4}, shard_sizes=[6, 4])
    batches = solver.shards.epoch(4, np.random.default_rng(0))
    assert batches.shape == (3, 4)  # ceil(6 / 2) steps of 2 + 2 frames
    assert np.all(batches[:, :2] < 6) and np.all(batches[:, 2:] >= 6)
    assert set(batches[:, :2].ravel()) == set(range(6)) and set(batches[:, 2:].ravel()) == set(range(6, 10))
    with pytest.raises(ValueError, match='batch_size 5 must be a multiple of the 2 processes'):
        make_solver(data, {'network.name': None, 'batch_size': 5}, shard_sizes=[6, 4])
    with pytest.raises(ValueError, match='shard_sizes must be frame counts >= 1 adding up to the 10 frames'):
        make_solver(data, {'network.name': None}, shard_sizes=[6, 5])


@pytest.mark.ptypy
@needs_mpi
@needs_msrun
@pytest.mark.parametrize('channel', ['mpi', 'mindspore'])
def test_w1net_on_two_processes_in_ptypy_matches_one_process(tmp_path, channel):
    """Two processes share the frames (PtyPy's MPI ranks, or the engine's split under msrun);
    they end with the same object and probe, as good as one process's (measured over MPI 0.236
    against 0.229: the batches differ, so the last bits do); one process writes the .ptyr file."""
    worker = WORKER.with_name('distributed_engine_worker.py')
    for ranks, out, launcher in ((2, tmp_path / 'two', channel), (1, tmp_path / 'one', 'mpi')):
        out.mkdir()
        launch(out, worker, [str(out), launcher], launcher, ranks)
    two = [np.load(tmp_path / 'two' / f'rank{r}.npz') for r in range(2)]
    one = np.load(tmp_path / 'one' / 'rank0.npz')
    np.testing.assert_array_equal(two[1]['object'], two[0]['object'])
    np.testing.assert_array_equal(two[1]['probe'], two[0]['probe'])
    assert not set(two[0]['views']) & set(two[1]['views'])  # each rank trained on its own frames
    assert sorted(set(two[0]['views']) | set(two[1]['views'])) == sorted(one['views'])
    assert abs(float(two[0]['error']) - float(one['error'])) < 0.03
    assert [bool(r['writes_ptyr']) for r in two] == [True, channel == 'mpi']  # MPI: PtyPy's master writes
