"""The W1Net engine inside PtyPy (needs PtyPy; skipped with the reason when it is absent)."""
import importlib.util

import numpy as np
import pytest

from helpers import object_error, parameter_tree, run

pytestmark = pytest.mark.ptypy


def test_w1net_is_registered_with_every_setting_as_the_settings_module_declares_it():
    """The engine's Defaults block is generated from ptypy_npu.settings: PtyPy's parsed tree holds every
    setting with its default, type, limits and choices."""
    import ptypy
    import ptypy_npu.ptypy_plugin  # noqa: F401
    from ptypy_npu import settings
    assert 'W1Net' in ptypy.engines.ENGINES
    tree = ptypy.defaults_tree['engine.W1Net']
    for key, default, meta in settings.walk(settings.EngineSettings()):
        parsed = tree[key]
        assert parsed.default == default, key
        assert [t.strip() for t in meta['type'].split(',')] == [t.strip() for t in parsed.options['type'].split(',')]
        for limit in ('lowlim', 'uplim'):  # those we declare (PtyPy's own keys keep PtyPy's other limits)
            if meta[limit] is not None:
                assert float(parsed.options[limit]) == float(meta[limit]), key
        assert list(meta['choices'] or []) == list(parsed.choices or []), key
    assert tree['network.name'].default == 'W1Network'


@pytest.mark.parametrize('extra,reason', [({'no_such_parameter': 1}, 'engines.e00 - no_such_parameter'),
                                          ({'batch_size': 0}, 'engines.e00.batch_size - lowlim'),
                                          ({'network': {'binning': 8}}, 'engines.e00.network.binning - uplim')])
def test_bad_tree_fails_validation_naming_the_parameter(tmp_path, extra, reason):
    import ptypy
    p = parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1, **extra}])
    with pytest.raises(RuntimeError, match=reason):
        ptypy.defaults_tree['ptycho'].validate(p)


def test_propagation_equals_ptypys_own(tmp_path):
    from ptypy_npu.physics import FarfieldPropagator
    from mindspore import Tensor
    P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 1}]), level=2)
    pod = next(iter(P.pods.values()))
    rng = np.random.default_rng(0)
    exit_wave = (rng.normal(size=pod.geometry.shape) + 1j * rng.normal(size=pod.geometry.shape)).astype(np.complex64)
    propagator = pod.geometry.propagator
    re, im = FarfieldPropagator(propagator.pre_fft, propagator.post_fft)(
        Tensor(exit_wave.real.copy()), Tensor(exit_wave.imag.copy()))
    reference = pod.fw(exit_wave)
    ours = re.asnumpy() + 1j * im.asnumpy()
    assert np.linalg.norm(ours - reference) <= 1e-5 * np.linalg.norm(reference)


def dm_then_w1net(tmp_path):
    # physics-only W1Net: with its network on, W1Net does not beat DM at this dose (see benchmarks)
    return run(parameter_tree(tmp_path, [{'name': 'DM', 'numiter': 10},
                                         {'name': 'W1Net', 'numiter': 10, 'numiter_contiguous': 5,
                                          'network': {'name': None}}]))


def test_dm_then_w1net_lowers_ptypys_errors_and_saves_the_w1net_object(tmp_path):
    import h5py
    P = dm_then_w1net(tmp_path)
    info = P.runtime.iter_info
    dm_last = [i for i in info if i['engine'] == 'DM'][-1]
    w1_last = [i for i in info if i['engine'] == 'W1Net'][-1]
    assert w1_last['error'][0] < dm_last['error'][0]
    assert w1_last['error'][2] == 0  # exit error: network/object mismatch, none without a network
    with h5py.File(tmp_path / 'recon.ptyr', 'r') as f:
        saved = f['content/obj/SMFG00/data'][0]
    np.testing.assert_array_equal(saved, next(iter(P.obj.storages.values())).data[0])


def test_dm_then_w1net_lowers_the_object_error(tmp_path):
    """DM leaves amplitudes near 100 at badly lit edges; W1Net's probe step must not freeze on them.

    Measured: DM 10 iterations 0.262, then W1Net 10 epochs 0.213 (0.299 while the probe step's
    regularisation followed the maximum of the object's patch power, 0.228 before handed-over
    outliers were clipped).
    """
    P = dm_then_w1net(tmp_path)
    dm_only = run(parameter_tree(tmp_path / 'dm', [{'name': 'DM', 'numiter': 10}]))
    assert object_error(P) < object_error(dm_only)


def test_w1net_alone_improves_on_ptypys_initial_object(tmp_path):
    p = parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 15, 'network': {'name': None}}])
    initial = object_error(run(p, level=4))
    P = run(p)
    errors = [i['error'][0] for i in P.runtime.iter_info]
    assert errors[-1] < 0.5 * errors[0]
    assert object_error(P) < initial


def test_an_optimizer_chosen_in_the_tree_without_a_rate_gets_its_own_default(tmp_path):
    tree = parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 2, 'object_update': {'optimizer': 'lion'}}])
    P = run(tree, level=4)
    P.runtime.iter_info = []  # what Ptycho.run sets up before it initialises an engine
    engine = next(iter(P.engines.values()))
    engine.initialize()
    engine.prepare()
    objects, probes, _ = engine.solver.optimizers
    assert float(objects.learning_rate.asnumpy()) == pytest.approx(0.01)
    assert (objects.lazy, objects.beta1) == (True, 0.5)  # the settings' defaults
    assert float(probes.learning_rate.asnumpy()) == pytest.approx(1.0)  # sgd's
    engine.iterate()
    engine.finalize()
    assert np.isfinite(next(iter(P.obj.storages.values())).data).all()


@pytest.mark.parametrize('extra,message', [
    ({'network': {'name': 'NoSuchNet'}}, r"p.engines.e00.network.name names an unknown network 'NoSuchNet'"),
    ({'loss': 'l1'}, r'p.engines.e00.loss must be one of gaussian, poisson'),
    ({'device': 'TPU'}, r'p.engines.e00.device must be one of'),
    ({'object_update': {'optimizer': 'nosuch'}}, r'p.engines.e00.object_update.optimizer names an unknown optimizer'),
    ({'network_update': {'optimizer': 'sgd'}}, r'p.engines.e00.network_update.learning_rate must be given'),
    ({'precision': 'bfloat16'}, r"p.engines.e00.precision 'bfloat16' needs device"),
    ({'distributed': 'mindspore'}, r"p.engines.e00.distributed 'mindspore': .* launch the processes with `msrun")])
def test_bad_engine_settings_fail_before_any_container_changes(tmp_path, extra, message):
    P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 2, **extra}]), level=3)
    before = next(iter(P.obj.storages.values())).data.copy()
    with pytest.raises(ValueError, match=message):
        P.run()
    np.testing.assert_array_equal(next(iter(P.obj.storages.values())).data, before)


@pytest.mark.skipif(importlib.util.find_spec('ptypy_npu_ptychonn') is None,
                    reason="plugin distribution not installed: pip install ./plugins/ptypy-npu-ptychonn")
def test_engine_trains_the_ptychonn_plugin_selected_in_the_tree(tmp_path):
    network = {'name': 'PtychoNN', 'depth': 2, 'width': 4, 'binning': 1, 'start': 0}
    P = run(parameter_tree(tmp_path, [{'name': 'W1Net', 'numiter': 6, 'network': network}]))
    exit_errors = [i['error'][2] for i in P.runtime.iter_info]
    assert exit_errors[0] > 0 and exit_errors[-1] < exit_errors[0]


def test_handed_over_amplitude_outliers_are_clipped_keeping_their_phase():
    from ptypy_npu.ptypy_plugin.engine import HANDOVER_AMPLITUDE_LIMIT, clip_outliers
    obj = np.full((20, 20), 0.8 * np.exp(0.3j))
    obj[2, 3] = 100 * np.exp(1.1j)
    region = np.zeros(obj.shape, bool)
    region[:15, :15] = True
    clipped = clip_outliers(obj, region)
    assert clipped[2, 3] == pytest.approx(HANDOVER_AMPLITUDE_LIMIT * 0.8 * np.exp(1.1j))
    mask = np.ones(obj.shape, bool)
    mask[2, 3] = False
    np.testing.assert_array_equal(clipped[mask], obj[mask])
