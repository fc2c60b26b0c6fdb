"""Plugin host, the separately installed PtychoNN plugin, the CLI and file I/O."""
import importlib.metadata
import importlib.util

import h5py
import numpy as np
import pytest

from ptypy_npu import cli, plugins
from ptypy_npu.io import load_npz_scan
from ptypy_npu.simulate import simulate_scan

from helpers import make_solver, write_tike_layout

HAVE_PTYCHONN = importlib.util.find_spec('ptypy_npu_ptychonn') is not None


def test_builtins_register_through_the_hooks():
    assert 'W1Network' in plugins.networks()
    assert {'adam', 'adamw', 'sgd'} <= set(plugins.optimizers())
    assert ('builtin', 'ptypy-npu') == plugins.describe()[0][:2]


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(monkeypatch):
    broken = importlib.metadata.EntryPoint(name='broken', value='no_such_module_xyz', group='ptypy_npu')
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, 'entry_points',
                        lambda group: list(real(group=group)) + [broken])
    monkeypatch.setattr(plugins, '_manager', None)
    monkeypatch.setattr(plugins, 'FAILED_PLUGINS', {})
    with pytest.warns(UserWarning, match="plugin 'broken' failed to contribute and is skipped: ModuleNotFoundError"):
        names = plugins.networks()
    assert 'W1Network' in names
    assert any(row[0] == 'broken' and row[4].startswith('failed: ModuleNotFoundError') for row in plugins.describe())
    monkeypatch.setattr(plugins, '_manager', None)  # the next user reloads a clean host


@pytest.mark.skipif(not HAVE_PTYCHONN, reason="plugin distribution not installed: pip install ./plugins/ptypy-npu-ptychonn")
def test_ptychonn_plugin_is_selected_by_name_and_trains():
    data, truth = simulate_scan(frame_size=64, count=32, photons=1e6)
    # width 8: at width 4 PtychoNN's ReLU decoder can start with every unit dead (seen for seed 0)
    solver = make_solver(data, {'network.name': 'PtychoNN', 'network.depth': 2, 'network.width': 8,
                                'network.binning': 1, 'batch_size': 8, 'network.start': 0})
    assert type(solver.network).__name__ == 'PtychoNN'
    before = [p.asnumpy().copy() for p in solver.network.trainable_params()]
    solver.run(10)
    after = [p.asnumpy() for p in solver.network.trainable_params()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    losses = [h['loss'] for h in solver.history]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.skipif(not HAVE_PTYCHONN, reason="plugin distribution not installed: pip install ./plugins/ptypy-npu-ptychonn")
def test_ptychonn_names_the_setting_it_cannot_take():
    from ptypy_npu_ptychonn import PtychoNN
    with pytest.raises(ValueError, match='network.binning = 2'):
        PtychoNN(128, binning=1)


def test_npz_reader_restores_ptypys_convention(tmp_path):
    data, _ = simulate_scan(frame_size=32, count=10, photons=1e4)
    write_tike_layout(tmp_path / 'scan.npz.bz2', data)
    loaded = load_npz_scan(str(tmp_path / 'scan.npz.bz2'))
    np.testing.assert_array_equal(loaded.intensities, data.intensities)
    np.testing.assert_array_equal(loaded.positions - loaded.positions.min(0), data.positions - data.positions.min(0))
    assert loaded.probe.shape == (1, 32, 32)


def test_npz_reader_names_the_missing_array(tmp_path):
    np.savez(tmp_path / 'bad.npz', data=np.ones((1, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"lacks the arrays \['scan'\] \(needs data, scan; probe optional\)"):
        load_npz_scan(str(tmp_path / 'bad.npz'))
    with pytest.raises(FileNotFoundError, match='nope.npz'):
        load_npz_scan(str(tmp_path / 'nope.npz'))


def test_cli_solves_a_simulated_scan_and_never_overwrites(tmp_path, capsys):
    out = str(tmp_path / 'result.h5')
    assert cli.main(['solve', '--simulate', '--frames', '32', '--epochs', '5', '--network', 'none',
                     '--out', out, '--png']) == 0
    with h5py.File(out, 'r') as f:
        assert f['object'].shape[0] > 64 and f['errors'].shape == (32, 3)
        saved = f['object'][()]
    assert (tmp_path / 'result.png').stat().st_size > 0
    assert 'object error' in capsys.readouterr().out
    assert cli.main(['solve', '--simulate', '--epochs', '1', '--out', out]) == 2
    assert 'result.h5 exists; choose another path or pass --force' in capsys.readouterr().err
    with h5py.File(out, 'r') as f:
        np.testing.assert_array_equal(f['object'][()], saved)


@pytest.mark.parametrize('arguments,message', [
    (['--network', 'NoSuchNet'], "--network names an unknown network 'NoSuchNet'"),
    (['--precision', 'bfloat16'], "--precision 'bfloat16' needs device"),
    (['--object-rate', '-1'], "--object-rate must be a finite number >= 0 or None, got -1.0"),
    (['--network-start', '-2'], "--network-start must be an integer >= 0, got -2"),
    (['--epochs', '0'], "--epochs must be an integer >= 1, got 0"),
    (['--batch-size', '0'], "--batch-size must be an integer >= 1 or None, got 0"),
])
def test_cli_reports_a_bad_setting_by_name(tmp_path, capsys, arguments, message):
    assert cli.main(['solve', '--simulate', *arguments, '--out', str(tmp_path / 'r.h5')]) == 2
    assert message in capsys.readouterr().err
