"""Pretraining for an instrument, one network over several scans, warm starts, and the model card."""
import json
import os

import h5py
import numpy as np
import pytest

from ptypy_npu import cli
from ptypy_npu.io import load_scan
from ptypy_npu.models import load_model
from ptypy_npu.objects import CLASSES, NATURAL_IMAGES, random_object
from ptypy_npu.pretraining import corpus, instrument
from ptypy_npu.scan import combine, patch_indices
from ptypy_npu.simulate import siemens_star, simulate_scan

SMALL = ['--depth', '2', '--width', '8', '--binning', '1']


def test_library_objects_keep_their_ranges_and_sources_apart():
    rng = np.random.default_rng(0)
    for _ in range(20):
        obj, card = random_object((40, 50), rng)
        amplitude, phase = np.abs(obj), np.angle(obj)
        assert amplitude.max() <= 1 + 1e-9 and amplitude.min() >= card['amplitude_floor'] - 1e-9
        assert phase.min() >= -1e-9 and phase.max() <= card['phase_range'] + 1e-9
        assert card['amplitude'] in CLASSES and card['phase'] in CLASSES
    assert 'grace_hopper' not in NATURAL_IMAGES  # MoonFlowerScan's photograph stays unseen


def test_the_simulators_star_stays_the_siemens_star_beside_the_librarys_star_class():
    _, truth = simulate_scan(frame_size=32, count=8, seed=5)
    np.testing.assert_array_equal(truth, siemens_star(truth.shape))


def test_combined_scans_keep_each_object_in_its_own_region():
    scans = [simulate_scan(frame_size=32, count=12, seed=k, obj='random') for k in range(3)]
    data, truth, starts = combine([s for s, _ in scans], [t for _, t in scans])
    assert data.intensities.shape == (36, 32, 32)
    for k, (scan, true) in enumerate(scans):
        frames = slice(12 * k, 12 * (k + 1))
        np.testing.assert_array_equal(data.intensities[frames], scan.intensities)
        rows, cols = data.positions[frames].T
        for (r, c), (r0, c0) in zip(data.positions[frames], scan.positions):  # the same patch of the same object
            np.testing.assert_array_equal(truth[r:r + 32, c:c + 32], true[r0:r0 + 32, c0:c0 + 32])
        assert cols.min() >= starts[k] and cols.max() + 32 <= starts[k] + true.shape[1]


def test_corpus_takes_the_instruments_probe_dose_step_and_geometry():
    like, _ = simulate_scan(frame_size=32, count=30, photons=3e5, step_fraction=0.2, seed=4, probe='lens')
    machine = instrument(like)
    data, truth, card = corpus(machine, objects=3, frames=10, seed=1)
    assert card['objects'] == 3 and card['photons_per_frame'] == [pytest.approx(machine['photons'])] * 2
    assert np.mean(data.intensities.sum(axis=(1, 2))) == pytest.approx(machine['photons'], rel=0.05)
    assert data.geometry == like.geometry and truth.shape == data.obj.shape
    assert np.corrcoef(np.abs(data.probe).ravel(), np.abs(like.probe).ravel())[0, 1] > 0.999


@pytest.fixture(scope='module')
def instrument_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp('instrument')
    assert cli.main(['simulate', '--out', str(folder / 'scan.cxi'), '--frames', '60', '--photons', '1e7',
                     '--with-probe', '--object', 'random', '--seed', '7']) == 0
    return folder / 'scan.cxi'


@pytest.fixture(scope='module')
def pretrained(instrument_scan):
    model = instrument_scan.parent / 'model'
    assert cli.main(['pretrain', '--like', str(instrument_scan), '--out', str(model), '--objects', '6',
                     '--frames-per-object', '40', '--epochs', '12', *SMALL]) == 0
    return model


def test_a_small_corpus_pretrains_a_model_whose_patches_beat_a_flat_object_on_its_corpus(pretrained, instrument_scan):
    """The corpus rebuilt from the model card: the one-pass patches lie much closer to the true patches
    (illumination-weighted) than the flat object does, which is also the untrained network's output (its
    last layers start at zero). Measured ~0.45 against 0.75. On objects outside the corpus a model
    trained for seconds does not beat the flat object (README, pretraining: the generalisation target
    is a measured miss), so this checks the training itself, not reuse."""
    card = json.loads((pretrained / 'model.json').read_text())['training']['corpus']
    data, truth, _ = corpus(instrument(load_scan(str(instrument_scan))), card['objects'], card['frames_per_object'],
                            card['seed'])
    true_patches = truth.ravel()[patch_indices(data.positions, data.frame_shape, truth.shape)]
    weight = np.sum(np.abs(data.probe) ** 2, axis=0)

    def patch_error(patches):
        return np.sqrt(np.sum(weight * np.abs(patches - true_patches) ** 2) / np.sum(weight * np.abs(true_patches) ** 2))

    one_pass = load_model(str(pretrained)).predict(data.intensities)
    assert patch_error(one_pass) < 0.8 * patch_error(np.ones_like(true_patches))


def test_the_model_card_records_the_corpus(pretrained):
    card = json.loads((pretrained / 'model.json').read_text())['training']
    assert card['corpus']['objects'] == 6 and card['corpus']['frames_per_object'] == 40
    assert card['supervision'] == 'truth' and card['frames'] == 240
    assert card['corpus']['photons_per_frame'][0] == pytest.approx(card['photons_per_frame'][0], rel=1e-3)  # Poisson noise


def test_reconstruct_warns_naming_the_quantity_outside_the_models_range(pretrained, tmp_path, capsys):
    faint = tmp_path / 'faint.cxi'
    assert cli.main(['simulate', '--out', str(faint), '--frames', '30', '--photons', '1e5', '--with-probe']) == 0
    with pytest.warns(UserWarning, match=r'was trained at 1e\+07-1e\+07 photons per frame, the scan has (1e\+05|9\.\d+e\+04)'):
        assert cli.main(['reconstruct', str(faint), '--model', str(pretrained), '--out', str(tmp_path / 'r.h5')]) == 0
    other = tmp_path / 'other.cxi'
    assert cli.main(['simulate', '--out', str(other), '--frames', '30', '--photons', '1e7', '--with-probe']) == 0
    data = load_scan(str(other))
    data.probe = np.roll(data.probe, 9, axis=-1) * np.exp(1j * np.linspace(0, 20, 64))  # another beam
    with pytest.warns(UserWarning, match='was trained with another probe'):
        load_model(str(pretrained)).check(data)


def test_a_warm_start_begins_from_the_one_pass_reconstruction(pretrained, instrument_scan, tmp_path, capsys):
    """Zero epochs of solve --model write the one-pass reconstruction itself (checked against the
    stitched patches)."""
    out = tmp_path / 'warm.h5'
    assert cli.main(['solve', str(instrument_scan), '--model', str(pretrained), '--network', 'none', '--epochs', '1',
                     '--object-rate', '0', '--probe-start', 'none', '--out', str(out)]) == 0
    assert 'started from the one-pass reconstruction' in capsys.readouterr().out
    data = load_scan(str(instrument_scan))
    stitched = load_model(str(pretrained)).reconstruct(data)
    with h5py.File(out, 'r') as handle:
        written = handle['object'][()]
    lit = np.abs(stitched - data.obj) > 0
    ratio = written[lit] / stitched[lit]  # the solver holds the probe power: one global factor at most
    np.testing.assert_allclose(ratio, np.median(ratio.real), rtol=1e-4, atol=1e-4)


def test_train_takes_several_scans_of_one_instrument(tmp_path, capsys):
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f'scan{seed}.cxi')
        assert cli.main(['simulate', '--out', str(paths[-1]), '--frames', '20', '--with-probe', '--seed',
                         str(seed), '--object', 'random']) == 0
    assert cli.main(['train', *map(str, paths), '--out', str(tmp_path / 'm'), '--epochs', '2', '--network-start', '0',
                     *SMALL]) == 0
    assert json.loads((tmp_path / 'm' / 'model.json').read_text())['training']['frames'] == 40
    assert cli.main(['simulate', '--out', str(tmp_path / 'big.cxi'), '--frames', '10', '--frame-size', '32',
                     '--with-probe']) == 0
    assert cli.main(['train', str(paths[0]), str(tmp_path / 'big.cxi'), '--out', str(tmp_path / 'm2')]) == 2
    assert 'differ from' in capsys.readouterr().err and not os.path.exists(tmp_path / 'm2')
