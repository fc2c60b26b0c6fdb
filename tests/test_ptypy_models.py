"""W1Net's modes (train, infer, finetune), saved models and checkpoint/resume inside PtyPy."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import parameter_tree, run

pytestmark = pytest.mark.ptypy

SMALL = {'depth': 2, 'width': 4, 'binning': 1}


def stored_object(P):
    return next(iter(P.obj.storages.values())).data[0].copy()


@pytest.fixture(scope='module')
def trained_model(tmp_path_factory):
    """A model trained by the engine on a 40-frame MoonFlowerScan, in mixed precision (float16
    network, float32 weights) as on an NPU, and saved by model.save."""
    tmp_path = tmp_path_factory.mktemp('train')
    model = str(tmp_path / 'model')
    run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 3, 'network': dict(SMALL, start=0),
                                   'precision': 'float16', 'model': {'save': model}}]))
    return model


def test_infer_mode_puts_the_stitched_patches_into_ptypys_object(trained_model, tmp_path):
    from ptypy_npu.models import load_model
    from ptypy_npu.ptypy_plugin.engine import W1Net
    # precision is a training setting: inference runs the saved float32 weights in float32
    p = parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1, 'mode': 'infer', 'precision': 'float16',
                                   'model': {'load': trained_model}}])
    P = run(p)
    fresh = run(p, level=3)  # the same scan, untouched: what the engine was given
    fresh.runtime.iter_info = []
    engine = W1Net(fresh, p.engines.e00)
    engine.initialize()
    data, _ = engine.scan_data()
    np.testing.assert_allclose(stored_object(P), load_model(trained_model).reconstruct(data), rtol=1e-5, atol=1e-6)
    errors = P.runtime.iter_info[-1]['error']
    assert np.all(np.isfinite(errors)) and errors[0] > 0 and errors[2] == 0


def scan_illumination(P):
    """The summed probe intensity (Ho, Wo) of the scan's frames, from PtyPy's pods."""
    lit = np.zeros(stored_object(P).shape)
    for pod in P.pods.values():
        view = pod.ob_view
        lit[view.dlow[0]:view.dhigh[0], view.dlow[1]:view.dhigh[1]] += np.abs(pod.probe) ** 2
    return lit


def test_an_engine_after_infer_in_one_chain_starts_from_the_inferred_object(trained_model, tmp_path):
    """Warm start in PtyPy: infer, then W1Net (network off, object held: rate 0, probe fixed) in the same chain
    ends where infer put the object, up to the one global factor of the probe-power gauge, except where the
    scan lights it below 1 % of its brightest: there every hand-over starts from the object's typical transmission
    (the median amplitude of the well-lit pixels, with the phase of their sum)."""
    inferred = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1, 'mode': 'infer',
                                              'model': {'load': trained_model}}]))
    chained = run(parameter_tree(tmp_path, [
        {'name': 'W1Net', 'numiter': 1, 'mode': 'infer', 'model': {'load': trained_model}},
        {'name': 'W1Net', 'numiter': 1, 'network': {'name': None}, 'object_update': {'learning_rate': 0.0},
         'probe_update': {'start': None}}]))
    start, end = stored_object(inferred), stored_object(chained)
    illumination = scan_illumination(inferred)
    weak = (illumination > 0) & (illumination < 0.01 * illumination.max())
    kept = (np.abs(start - 1) > 1e-6) & ~weak  # where infer wrote patches and the scan lights well
    assert weak.any() and kept.sum() > weak.sum()
    gauge = np.median((end[kept] / start[kept]).real)
    np.testing.assert_allclose(end[kept] / start[kept], gauge, rtol=1e-4, atol=1e-4)
    well = illumination >= 0.01 * illumination.max()
    typical = np.median(np.abs(start[well])) * np.exp(1j * np.angle(start[well].sum()))
    np.testing.assert_allclose(end[weak], gauge * typical, rtol=1e-4)


def test_finetune_trains_the_loaded_network_from_the_first_epoch(trained_model, tmp_path):
    P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 2, 'mode': 'finetune',
                                       'model': {'load': trained_model}}]))
    assert all(info['error'][2] > 0 for info in P.runtime.iter_info)  # the network took part at once


@pytest.mark.parametrize('engine,error,message', [
    ({'mode': 'infer'}, ValueError, r"p.engines.e00.model.load must name a trained model directory for mode 'infer'"),
    ({'model': {'load': '/no/such/model'}}, ValueError, 'p.engines.e00.model.load cannot be used: model directory '
                                                        '/no/such/model does not exist'),
    ({'checkpoint': {'path': 'state.txt'}}, ValueError, 'p.engines.e00.checkpoint.path must end in .ckpt'),
])
def test_bad_model_and_checkpoint_settings_are_refused(tmp_path, engine, error, message):
    P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1, **engine}]), level=3)
    before = stored_object(P)
    with pytest.raises(error, match=message):
        P.run()
    np.testing.assert_array_equal(stored_object(P), before)


def test_existing_models_and_checkpoints_are_never_replaced(trained_model, tmp_path):
    checkpoint = tmp_path / 'state.ckpt'
    checkpoint.write_bytes(b'a user file')
    for engine, message in [({'model': {'save': trained_model}}, 'p.engines.e00.model.save .* exists'),
                            ({'checkpoint': {'path': str(checkpoint)}}, 'p.engines.e00.checkpoint.path .* exists')]:
        P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1, **engine}]), level=3)
        with pytest.raises(FileExistsError, match=message):
            P.run()
    assert checkpoint.read_bytes() == b'a user file'
    assert sorted(os.listdir(trained_model)) == ['model.json', 'probe.npy', 'weights.safetensors']


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import parameter_tree, run
from ptypy.engines import by_name
p = parameter_tree(Path({home!r}), [{engine!r}])
P = run(p, level=4)
P.runtime.iter_info = []
engine = by_name('W1Net')(P, p.engines.e00)
engine.initialize()
engine.prepare()
for _ in range({epochs}):
    engine.iterate(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    checkpoint = str(tmp_path / 'state.ckpt')
    engine = {'name': 'W1Net', 'numiter': 4, 'network': dict(SMALL, start=1),
              'checkpoint': {'path': checkpoint, 'interval': 1}}
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), home=str(tmp_path / 'killed'), engine=engine, epochs=2)
    killed = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert os.path.exists(checkpoint) and not [f for f in os.listdir(tmp_path) if 'partial' in f]
    resumed = run(parameter_tree(tmp_path / 'resumed', [dict(engine, checkpoint={'path': checkpoint, 'resume': True})]))
    uninterrupted = run(parameter_tree(tmp_path / 'whole', [dict(engine, checkpoint={})]))
    assert len(resumed.runtime.iter_info) == 2  # epochs 3 and 4 only
    np.testing.assert_allclose(stored_object(resumed), stored_object(uninterrupted), rtol=1e-5, atol=1e-6)
