"""The comparison harness: contestants, output folders, .ptyr reading, runs under PtyPy and MPI."""
import csv
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ptypy_npu import cli
from ptypy_npu.comparison import check_output_folder, compare_ptyr, parse_contestants, read_ptyr
from ptypy_npu.metrics import illuminated_region, phase_ramp, registered_error, score_object, shift_image
from ptypy_npu.simulate import focused_probe, siemens_star, simulate_scan

from helpers import write_tike_layout

KNOWN = {'DM': None, 'EPIE': None, 'ML': None, 'W1Net': None}
PSIZE = 1e-8
ORIGIN = np.array([-5e-7, -4e-7])


def test_contestants_are_engines_or_chains_with_their_iterations():
    contestants = parse_contestants(['dm', 'ePIE', 'DM+w1net', 'DM:30+W1Net:5'], [12], KNOWN)
    assert [c.name for c in contestants] == ['DM', 'EPIE', 'DM+W1Net', 'DM+W1Net']
    assert contestants[2].engines == [{'name': 'DM', 'numiter': 12}, {'name': 'W1Net', 'numiter': 12}]
    assert contestants[3].engines == [{'name': 'DM', 'numiter': 30}, {'name': 'W1Net', 'numiter': 5}]
    assert [c.engines[0]['numiter'] for c in parse_contestants(['DM', 'ML'], [7, 9], KNOWN)] == [7, 9]


@pytest.mark.parametrize('specs, numiter, message', [
    (['DM', 'RAAAR'], [5], r"PtyPy knows no engine 'RAAAR'.*known: DM, EPIE, ML, W1Net"),
    (['DM+Foo'], [5], r"no engine 'Foo' \(in 'DM\+Foo'\)"),
    (['DM', 'ML', 'EPIE'], [5, 6], r'--numiter: give one count for all engines or one per contestant \(3\), got 2'),
    (['DM:0'], [5], r"--numiter: 'DM:0' needs at least 1 iteration"),
    ([], [5], '--engines: name at least one engine'),
])
def test_bad_contestants_are_refused_by_name(specs, numiter, message):
    with pytest.raises(ValueError, match=message):
        parse_contestants(specs, numiter, KNOWN)


def write_ptyr(path, obj, probe, positions, durations, errors):
    """A reconstruction in the layout PtyPy's ``save_run(kind='minimal')`` writes (h5py only)."""
    with h5py.File(path, 'w') as f:
        f['content/obj/S00G00/data'] = obj[None]
        f['content/obj/S00G00/_psize'] = [PSIZE, PSIZE]
        f['content/obj/S00G00/_origin'] = ORIGIN
        f['content/probe/S00G00/data'] = probe[None]
        f['content/positions/S00G00'] = positions
        for k, (duration, error) in enumerate(zip(durations, errors)):
            entry = f.create_group(f'content/runtime/iter_info/{k:05d}')
            entry['duration'], entry['error'], entry['iterations'] = duration, error, 5 * (k + 1)


@pytest.fixture
def finished(tmp_path):
    """Two .ptyr files of one 96x96 object (a transformed copy of the truth, and a noisy one) and the
    truth.npz they are scored against; view centres in m as PtyPy records them."""
    truth = siemens_star((96, 96))
    probe = focused_probe(32)[0]
    corners = np.array([(r, c) for r in range(8, 57, 8) for c in range(8, 57, 8)])
    positions = (corners + 16) * PSIZE + ORIGIN  # PtyPy: corner = round((centre - origin) / psize) - shape // 2
    region = illuminated_region(probe, corners, truth.shape)
    moved = 2.0 * np.exp(0.7j) * shift_image(truth, (1.4, -0.6)) * phase_ramp(truth.shape, (0.02, 0.01))
    noisy = truth + 0.1 * np.random.default_rng(3).normal(size=truth.shape)
    write_ptyr(tmp_path / 'A.ptyr', moved, probe, positions, [1.0, 2.0], [[30.0, 2, 1], [20.0, 1, 0.5]])
    write_ptyr(tmp_path / 'B.ptyr', noisy, probe, positions, [0.5], [[9.0, 3, 4]])
    np.savez(tmp_path / 'truth.npz', object=truth, region=region, probe=probe)
    return tmp_path, truth, region, noisy


def read_table(folder):
    with open(folder / 'results.csv') as handle:
        return {row['contestant']: row for row in csv.DictReader(handle)}


def test_compare_ptyr_scores_finished_reconstructions_against_the_truth(finished):
    folder, truth, region, noisy = finished
    out = folder / 'cmp'
    assert cli.main(['compare', '--ptyr', str(folder / 'A.ptyr'), str(folder / 'B.ptyr'),
                     '--truth', str(folder / 'truth.npz'), '--out', str(out)]) == 0
    table = read_table(out)
    assert float(table['A']['object_error']) < 2e-3       # shift, ramp and complex factor removed
    assert float(table['A']['probe_error']) < 1e-6
    assert float(table['A']['frc_half_period_px']) == 1.0
    assert float(table['A']['wall_s']) == pytest.approx(3.0)  # summed iteration durations
    assert float(table['A']['s_per_iteration']) == pytest.approx(0.3)
    assert float(table['A']['fourier_error']) == 20.0
    assert float(table['B']['object_error']) == pytest.approx(registered_error(noisy, truth, region), rel=1e-9)
    mse = np.mean(np.abs(0.1 * np.random.default_rng(3).normal(size=truth.shape))[region] ** 2)
    assert float(table['B']['psnr_db']) == pytest.approx(10 * np.log10(np.abs(truth[region]).max() ** 2 / mse),
                                                        abs=0.2)  # the fitted factor moves it slightly
    record = json.loads((out / 'results.json').read_text())['contestants'][0]
    assert [[c['wall_s'], c['iterations'], c['fourier_error']] for c in record['curve']] == [[1.0, 5, 30.0], [3.0, 10, 20.0]]
    for name in ('objects.png', 'convergence.png'):
        assert (out / name).stat().st_size > 10_000


def test_earlier_results_are_never_replaced_without_force(finished):
    folder = finished[0]
    out = folder / 'cmp'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    arguments = ['compare', '--ptyr', str(folder / 'A.ptyr'), '--out', str(out)]
    assert cli.main(arguments) == 0
    table = (out / 'results.csv').read_bytes()
    assert cli.main(['compare', '--ptyr', str(folder / 'B.ptyr'), '--out', str(out)]) == 2
    assert (out / 'results.csv').read_bytes() == table
    assert cli.main(['compare', '--ptyr', str(folder / 'B.ptyr'), '--out', str(out), '--force']) == 0
    assert list(read_table(out)) == ['B']
    assert (out / 'notes.txt').read_text() == 'mine'
    with pytest.raises(FileExistsError, match=r'holds earlier results \(results.csv\)'):
        check_output_folder(str(out), ['results.csv', 'DM.ptyr'], force=False)


def test_missing_or_corrupt_ptyr_files_are_named(tmp_path, capsys):
    (tmp_path / 'junk.ptyr').write_bytes(b'not hdf5')
    with h5py.File(tmp_path / 'empty.ptyr', 'w') as f:
        f['header/kind'] = 'minimal'
    for name, message in (('nope.ptyr', 'nope.ptyr does not exist'),
                          ('junk.ptyr', 'junk.ptyr is not a readable HDF5 file'),
                          ('empty.ptyr', 'empty.ptyr lacks content/obj')):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_ptyr(str(tmp_path / name))
    assert cli.main(['compare', '--ptyr', str(tmp_path / 'junk.ptyr'), '--out', str(tmp_path / 'cmp')]) == 2
    assert 'junk.ptyr is not a readable HDF5 file' in capsys.readouterr().err
    assert not (tmp_path / 'cmp').exists()
    with pytest.raises(ValueError, match='--ptyr: name at least one'):
        compare_ptyr([], str(tmp_path / 'cmp'))


# --- with PtyPy ---------------------------------------------------------------------------------

def moonflower_tree(path, frames=30):
    tree = {'verbose_level': 'critical', 'io': {'home': str(path)},
            'scans': {'MF': {'name': 'BlockFull', 'data': {'name': 'MoonFlowerScan', 'shape': 64,
                                                           'num_frames': frames, 'photons': 1e8}}}}
    path.mkdir(parents=True, exist_ok=True)
    (path / 'tree.json').write_text(json.dumps(tree))
    return path / 'tree.json'


@pytest.mark.ptypy
def test_compare_runs_engines_side_by_side_and_scores_them_independently(tmp_path):
    tree = moonflower_tree(tmp_path)
    out = tmp_path / 'cmp'
    assert cli.main(['compare', str(tree), '--engines', 'DM', 'DM:4+W1Net:4', '--numiter', '8',
                     '--sample-every', '4', '--out', str(out)]) == 0
    table = read_table(out)
    assert list(table) == ['DM', 'DM+W1Net']
    truth = np.load(out / 'truth.npz')
    records = json.loads((out / 'results.json').read_text())['contestants']
    for name, record in zip(table, records):
        with h5py.File(out / f'{name}.ptyr', 'r') as f:  # PtyPy's own file, read independently of the harness
            obj = f['content/obj/SMFG00/data'][0]
            engines = [f[f'content/runtime/iter_info/{k}/engine'][()] for k in sorted(f['content/runtime/iter_info'])]
            durations = [float(f[f'content/runtime/iter_info/{k}/duration'][()]) for k in f['content/runtime/iter_info']]
        expected = score_object(obj, truth['object'], truth['region'])  # independently of the harness's run
        for column in ('object_error', 'ssim_amplitude', 'ssim_phase', 'frc_half_period_px', 'psnr_db'):
            assert float(table[name][column]) == pytest.approx(expected[column], rel=1e-9), column
        assert record['curve'][-1]['object_error'] == pytest.approx(expected['object_error'], rel=1e-9)
        assert int(table[name]['iterations']) == 8
        # wall_s: the iterations' time as the .ptyr keeps it (PtyPy's durations), set-up apart
        assert float(table[name]['wall_s']) == pytest.approx(sum(durations), rel=1e-6)
        assert float(table[name]['setup_s']) > 0
    assert [e.decode() if isinstance(e, bytes) else e for e in engines] == ['DM', 'W1Net']
    assert float(table['DM']['object_error']) < 0.5
    again = tmp_path / 'again'
    assert cli.main(['compare', '--ptyr', str(out / 'DM.ptyr'), '--truth', str(out / 'truth.npz'),
                     '--out', str(again)]) == 0
    assert float(read_table(again)['DM']['object_error']) == pytest.approx(float(table['DM']['object_error']))


@pytest.mark.ptypy
def test_an_engine_ptypy_does_not_know_stops_the_comparison_before_anything_runs(tmp_path, capsys):
    out = tmp_path / 'cmp'
    assert cli.main(['compare', str(moonflower_tree(tmp_path)), '--engines', 'DM', 'ePIEE', '--out', str(out)]) == 2
    assert "PtyPy knows no engine 'ePIEE'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.ptypy
def test_a_sample_interval_below_one_is_refused(tmp_path, capsys):
    assert cli.main(['compare', str(moonflower_tree(tmp_path)), '--engines', 'DM', '--sample-every', '0',
                     '--out', str(tmp_path / 'cmp')]) == 2
    assert '--sample-every must be a whole number of iterations >= 1, got 0' in capsys.readouterr().err
    assert not (tmp_path / 'cmp').exists()


@pytest.mark.ptypy
def test_a_script_is_read_up_to_its_ptycho_and_nothing_runs(tmp_path):
    from ptypy_npu.ptypy_plugin.runner import load_tree
    script = tmp_path / 'recon.py'
    script.write_text(
        "from ptypy.core import Ptycho\nfrom ptypy import utils as u\n"
        "p = u.Param(verbose_level='critical', scans=u.Param(A=u.Param(name='BlockFull')))\n"
        "p.engines = u.Param(e0=u.Param(name='DM', numiter=3))\n"
        "P = Ptycho(p, level=5)\n"
        f"open({str(tmp_path / 'ran')!r}, 'w').write('reconstructed')\n")
    tree = load_tree(str(script))
    assert tree.scans.A.name == 'BlockFull' and tree.engines.e0.numiter == 3
    assert not (tmp_path / 'ran').exists()
    (tmp_path / 'bad.py').write_text("x = 1\n")
    with pytest.raises(ValueError, match="bad.py: the script neither builds a Ptycho nor defines a tree 'p'"):
        load_tree(str(tmp_path / 'bad.py'))


def star_scan(tmp_path, count=40, photons=1e6):
    """A simulated Siemens-star scan written in the layout of shared/data (64 px frames)."""
    data, truth = simulate_scan(frame_size=64, count=count, photons=photons, seed=2)
    write_tike_layout(tmp_path / 'star.npz.bz2', data)
    return str(tmp_path / 'star.npz.bz2'), data, truth


def star_tree(npz_file, numiter=0):
    from ptypy import utils as u
    from ptypy_npu.ptypy_plugin.npz_loader import npz_scan_tree
    p = u.Param(verbose_level='critical')
    p.io = u.Param(home=os.path.dirname(npz_file), rfile=None, autosave=u.Param(active=False),
                   interaction=u.Param(active=False))
    p.scans = u.Param(star=npz_scan_tree(npz_file, shape=64))
    p.engines = u.Param(e0=u.Param(name='DM', numiter=numiter)) if numiter else u.Param()
    return p


@pytest.mark.ptypy
def test_npz_scan_gives_ptypy_the_frames_positions_and_halves_it_expects(tmp_path):
    from ptypy import utils as u
    from ptypy_npu.ptypy_plugin.npz_loader import NpzScan
    npz_file, data, truth = star_scan(tmp_path)
    scan = NpzScan(u.Param(npz_file=npz_file, shape=64))
    object_pixel = u.keV2m(12.40597) * 2.2016 / (64 * 172e-6)
    np.testing.assert_allclose(scan.load_positions(), (data.positions - 3.3) * object_pixel, rtol=1e-6)
    frames, _, _ = scan.load([0, 7])
    np.testing.assert_array_equal(frames[7], data.intensities[7])  # back to PtyPy's centred frames
    even = NpzScan(u.Param(npz_file=npz_file, shape=64, frames='even'))
    odd = NpzScan(u.Param(npz_file=npz_file, shape=64, frames='odd'))
    np.testing.assert_array_equal(even.load([3])[0][3], data.intensities[6])
    np.testing.assert_array_equal(odd.load([3])[0][3], data.intensities[7])
    with pytest.raises(ValueError, match=r'data.shape is 128 but .* holds \(64, 64\) frames'):
        NpzScan(u.Param(npz_file=npz_file, shape=128))
    with pytest.raises(ValueError, match='set scans.<name>.data.npz_file'):
        NpzScan(u.Param())


@pytest.mark.ptypy
def test_dm_on_an_npz_scan_recovers_the_star(tmp_path):
    """Any swap or flip of frames or position axes smears the object: DM then stays near a flat guess."""
    from helpers import run
    npz_file, data, truth = star_scan(tmp_path)
    P = run(star_tree(npz_file, numiter=30))
    storage = next(iter(P.obj.storages.values()))
    on_grid = np.zeros(storage.shape[1:], complex)
    corners = []
    for view in storage.views:  # the truth under every view, on PtyPy's object grid
        row, col = view.dlow
        frame_row, frame_col = data.positions[view.pod.di_view.layer]
        on_grid[row:row + 64, col:col + 64] = truth[frame_row:frame_row + 64, frame_col:frame_col + 64]
        corners.append((row, col))
    region = illuminated_region(data.probe, corners, on_grid.shape)
    error = registered_error(storage.data[0], on_grid, region)
    assert error < 0.2 < registered_error(np.ones_like(on_grid), on_grid, region)


@pytest.mark.ptypy
def test_halves_give_an_frc_resolution_where_no_truth_is_known(tmp_path):
    """Known answers: halves holding the same frames reconstruct to the same object, correlated up to
    Nyquist (1 px); halves of distinct frames (other noise, other positions) fall below the
    threshold at a coarser period (measured 1.5 px at 1e5 photons; at 1e6 the halves agree to
    Nyquist, 1.0, so the dose is lowered)."""
    from ptypy_npu.ptypy_plugin.runner import compare, known_engines
    npz_file, data, _ = star_scan(tmp_path, count=60, photons=1e5)
    twins = data.frames(np.repeat(np.arange(30), 2))  # frames 2k and 2k + 1 are one frame
    write_tike_layout(tmp_path / 'twins.npz.bz2', twins)
    rows = {}
    for name, scan_file in (('distinct', npz_file), ('twins', str(tmp_path / 'twins.npz.bz2'))):
        results = compare(star_tree(scan_file), parse_contestants(['DM'], [15], known_engines()),
                          str(tmp_path / name), halves=True, report=lambda line: None)
        rows[name] = results[0].row
    assert rows['twins']['frc_halves_px'] == 1.0
    assert 1.2 < rows['distinct']['frc_halves_px'] < 8.0
    assert rows['distinct'].get('object_error') is None  # measured data: no truth
    assert read_table(tmp_path / 'distinct')['DM']['object_error'] == ''


@pytest.mark.ptypy
@pytest.mark.skipif(shutil.which('mpiexec') is None, reason='mpiexec not found (pip install mpich mpi4py)')
def test_compare_under_two_mpi_ranks_writes_once(tmp_path):
    tree = moonflower_tree(tmp_path)
    out = tmp_path / 'cmp'
    command = ['mpiexec', '-n', '2', sys.executable, '-m', 'ptypy_npu.cli', 'compare', str(tree),
               '--engines', 'DM', 'ML', 'DM+W1Net', '--numiter', '4', '--out', str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count(f'wrote {out}') == 1  # rank 0 alone reports and writes
    assert json.loads((out / 'results.json').read_text())['mpi_ranks'] == 2
    assert list(read_table(out)) == ['DM', 'ML', 'DM+W1Net']


@pytest.mark.ptypy
def test_amplitude_misfit_vanishes_at_the_simulated_object_and_probe(tmp_path):
    """Noise-free MoonFlowerScan on a raster of whole pixels (16 px steps): the truth reproduces PtyPy's
    simulation but for its rounding of intensities down to integers, which bounds the misfit by 1."""
    from ptypy import utils as u
    from ptypy_npu.ptypy_plugin.runner import (amplitude_misfit, ensure_structured_moonflower, simulated_truth,
                                               tree_from_dict)
    from helpers import run
    ensure_structured_moonflower()
    tree = tree_from_dict(json.loads(moonflower_tree(tmp_path).read_text()))
    tree.scans.MF.data.update(add_poisson_noise=False, model='raster', density=0.25)
    tree.io.update(rfile=None, autosave=u.Param(active=False), interaction=u.Param(active=False))
    P = run(tree, level=4)
    initial = amplitude_misfit(P)
    obj, region, probe = simulated_truth(P)
    storage = next(iter(P.obj.storages.values()))
    storage.data[0] = np.where(obj != 0, obj, 1)
    next(iter(P.probe.storages.values())).data[0] = probe
    assert amplitude_misfit(P) < 1.0 < 1e-3 * initial
