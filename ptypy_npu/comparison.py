"""Side-by-side engine comparisons: contestants, scores, tables and figures (no PtyPy needed).

    ptypy-npu compare SCRIPT_OR_TREE --engines DM EPIE ML W1Net DM+W1Net --numiter 100 --out cmp
    ptypy-npu compare --ptyr cmp/DM.ptyr cmp/W1Net.ptyr --out cmp2 [--truth cmp/truth.npz]

Live runs are :mod:`ptypy_npu.ptypy_plugin.runner`'s (they need PtyPy); finished ``.ptyr`` files
are read here with h5py. Into the output folder go (by MPI rank 0 alone) :data:`OUTPUT_FILES` and
one ``<contestant>.ptyr`` per contestant:

* ``results.csv`` / ``results.json``: the columns of :data:`TABLE_COLUMNS`, one row per
  contestant (JSON also holds the convergence curves);
* ``objects.png``: object amplitude and phase of every contestant beside the truth;
* ``convergence.png``: error against wall time, all contestants on one axis;
* ``truth.npz`` (simulated scans): the true object, its scored region and the true probe, for
  ``--ptyr --truth``.

``wall_s`` is the iterations' time as PtyPy records it (``runtime.iter_info`` durations), in live
runs and ``.ptyr`` files alike; live runs add ``setup_s``, the engines' initialisation and
preparation (W1Net's graph compilation), which a ``.ptyr`` file does not keep.
"""
import csv
import dataclasses
import json
import math
import os

import numpy as np

from .io import open_hdf5
from .metrics import illuminated_region, registered_error, score_object

#: Files the comparison writes into its output folder (besides one .ptyr per contestant).
OUTPUT_FILES = ('results.csv', 'results.json', 'objects.png', 'convergence.png', 'truth.npz')
#: Columns of the results table; ground-truth scores are empty when no truth is known.
TABLE_COLUMNS = ('contestant', 'frames', 'wall_s', 'setup_s', 'iterations', 's_per_iteration', 'fourier_error', 'photon_error',
                 'exit_error', 'amplitude_misfit', 'object_error', 'probe_error', 'psnr_db', 'ssim_amplitude', 'ssim_phase',
                 'frc_half_period_px', 'frc_halves_px')


@dataclasses.dataclass
class Contestant:
    """One entry of a comparison: ``engines`` (dicts of PtyPy engine parameters, each with
    ``name`` and ``numiter``) run in turn on one Ptycho; ``name`` as in ``DM+W1Net``."""
    name: str
    engines: list


@dataclasses.dataclass
class Result:
    """What one contestant produced: its table row (:data:`TABLE_COLUMNS`), its convergence
    ``curve`` of samples (dicts: ``wall_s``, ``iterations``, ``fourier_error`` as PtyPy's engine
    reported it, ``amplitude_misfit`` from :func:`amplitude_misfit`, ``object_error``; None where
    unknown), the
    object (Ho, Wo) and probe (H, W) complex (first storage, first layer), the bool (Ho, Wo)
    region its frames lit, the object pixel (m) and the position (m, y and x) of object pixel (0, 0)."""
    row: dict
    curve: list
    obj: np.ndarray
    probe: np.ndarray
    region: np.ndarray
    object_pixel: float
    origin: np.ndarray


def parse_contestants(specs, numiter, known):
    """Contestants from ``specs`` such as ``DM``, ``DM+W1Net`` or ``DM:50+W1Net:30``.

    ``numiter`` (list of int) holds one count for every engine, or one per spec; a count after
    ``:`` wins. Engine names match ``known`` (PtyPy's registry) case-insensitively.
    """
    if not specs:
        raise ValueError("--engines: name at least one engine, e.g. DM W1Net DM+W1Net")
    if len(numiter) not in (1, len(specs)):
        raise ValueError(f"--numiter: give one count for all engines or one per contestant "
                         f"({len(specs)}), got {len(numiter)}")
    by_lower = {name.lower(): name for name in known}
    contestants = []
    for spec, count in zip(specs, numiter * len(specs) if len(numiter) == 1 else numiter):
        engines = []
        for part in spec.split('+'):
            name, _, explicit = part.partition(':')
            if name.lower() not in by_lower:
                raise ValueError(f"--engines: PtyPy knows no engine {name!r} (in {spec!r}); "
                                 f"known: {', '.join(sorted(known))}")
            iterations = int(explicit) if explicit else count
            if iterations < 1:
                raise ValueError(f"--numiter: {spec!r} needs at least 1 iteration per engine, got {iterations}")
            engines.append({'name': by_lower[name.lower()], 'numiter': iterations})
        contestants.append(Contestant('+'.join(e['name'] for e in engines), engines))
    return contestants


def check_output_folder(out, names, force):
    """Refuse (``FileExistsError``) if ``out`` holds any file this comparison would write, unless ``force``.

    Other files in the folder are never touched.
    """
    existing = [name for name in names if os.path.exists(os.path.join(out, name))]
    if existing and not force:
        raise FileExistsError(f"output folder {out} holds earlier results ({', '.join(existing)}); "
                              f"choose another folder or pass --force to replace them")


def ptyr_name(contestant_name):
    return f"{contestant_name}.ptyr"


def score(result, truth):
    """Fill the ground-truth columns of ``result.row`` from ``truth`` = (object, region, probe)."""
    obj, region, probe = truth
    if result.obj.shape != obj.shape:
        raise ValueError(f"contestant {result.row['contestant']}: object {result.obj.shape} and truth "
                         f"{obj.shape} are on different grids")
    result.row.update(score_object(result.obj, obj, region))
    if probe is not None and probe.shape == result.probe.shape:
        result.row['probe_error'] = registered_error(result.probe, probe)


def format_row(row):
    """One line of the results table for the console."""
    return '  '.join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in row.items() if value is not None)


def read_ptyr(path):
    """A :class:`Result` from a PtyPy ``.ptyr`` file (h5py; no PtyPy needed).

    Object and probe are the first storage's first layer; the region is the pixels lit by the
    probe at the recorded positions (``content/positions``), or the whole object without them.
    The curve is rebuilt from ``content/runtime/iter_info`` (durations summed, without set-up time).
    """
    with open_hdf5(path, '.ptyr file') as handle:
        def group(name):
            if name not in handle or not len(handle[name]):
                raise ValueError(f".ptyr file {path} lacks {name} (not a PtyPy reconstruction)")
            return handle[name][sorted(handle[name])[0]]
        obj_storage, probe_storage = group('content/obj'), group('content/probe')
        obj, probe = obj_storage['data'][0], probe_storage['data'][0]
        psize, origin = obj_storage['_psize'][()], obj_storage['_origin'][()]
        positions = None
        if 'content/positions' in handle and len(handle['content/positions']):
            positions = group('content/positions')[()]
        info = handle.get('content/runtime/iter_info')
        entries = [info[key] for key in sorted(info)] if info is not None else []
        curve, elapsed = [], 0.0
        for entry in entries:
            elapsed += float(entry['duration'][()])
            curve.append({'wall_s': elapsed, 'iterations': int(entry['iterations'][()]),
                          'fourier_error': float(entry['error'][0]), 'amplitude_misfit': None, 'object_error': None})
        errors = entries[-1]['error'][()] if entries else [math.nan] * 3
    if positions is None:
        region = np.ones(obj.shape, bool)
    else:
        corners = np.round((positions - origin) / psize + 1e-5).astype(int) - np.array(probe.shape) // 2
        region = illuminated_region(probe, corners, obj.shape)
    iterations = curve[-1]['iterations'] if curve else 0
    row = {'contestant': os.path.basename(str(path)).rsplit('.', 1)[0], 'frames': None if positions is None else
           len(positions), 'wall_s': elapsed, 'iterations': iterations,
           's_per_iteration': elapsed / max(iterations, 1), 'fourier_error': float(errors[0]),
           'photon_error': float(errors[1]), 'exit_error': float(errors[2])}
    return Result(row, curve, obj, probe, region, float(psize[0]), np.asarray(origin, float))


def read_truth(path):
    """``(object, region, probe or None)`` from a ``truth.npz`` written by :func:`compare`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"truth file {path} does not exist")
    try:
        with np.load(path) as archive:
            return archive['object'], archive['region'].astype(bool), archive.get('probe')
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"truth file {path} is not a truth.npz (arrays 'object' and 'region'): {error}") from error


def compare_ptyr(paths, out, truth_path=None, force=False, report=print):
    """The comparison of :func:`compare` from finished reconstructions (``.ptyr`` files), into ``out``.

    Every file is read (and refused with its name if unreadable) before anything is written.
    """
    if not paths:
        raise ValueError("--ptyr: name at least one .ptyr file")
    check_output_folder(out, OUTPUT_FILES, force)
    results = [read_ptyr(path) for path in paths]
    truth = read_truth(truth_path) if truth_path else None
    for result in results:
        if truth:
            score(result, truth)
        report(format_row(result.row))
    os.makedirs(out, exist_ok=True)
    write_outputs(out, results, truth)
    report(f"wrote {out}")
    return results


def write_outputs(out, results, truth=None, ranks=1):
    """Write the table (CSV, JSON with curves), the figures and, when known, ``truth.npz`` into ``out``."""
    with open(os.path.join(out, 'results.csv'), 'w', newline='') as handle:
        writer = csv.DictWriter(handle, TABLE_COLUMNS, restval='')
        writer.writeheader()
        for result in results:
            writer.writerow({key: result.row.get(key) for key in TABLE_COLUMNS})
    records = [dict({key: result.row.get(key) for key in TABLE_COLUMNS}, curve=result.curve) for result in results]
    with open(os.path.join(out, 'results.json'), 'w') as handle:
        json.dump({'mpi_ranks': ranks, 'contestants': records}, handle, indent=1)
    if truth:
        probe = {} if truth[2] is None else {'probe': truth[2]}
        np.savez(os.path.join(out, 'truth.npz'), object=truth[0], region=truth[1], **probe)
    plot_objects(os.path.join(out, 'objects.png'), results, truth)
    plot_convergence(os.path.join(out, 'convergence.png'), results, truth is not None)


def _shown(result, truth):
    """``(object, region)`` as shown: aligned onto the truth when known, else the contestant's own."""
    from .metrics import align
    if truth:
        return align(result.obj, truth[0], truth[1])[0], truth[1]
    return result.obj, result.region


def plot_objects(path, results, truth=None):
    """Amplitude (top) and phase (bottom) of every contestant, beside the truth when known, cropped to
    the scored region; grey levels span the 1st to 99th percentile inside it."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = ([('truth', truth[0], truth[1])] if truth else []) + [
        (result.row['contestant'],) + _shown(result, truth) for result in results]
    figure, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.4), squeeze=False)
    for column, (title, obj, region) in enumerate(panels):
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        crop = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        phase = np.angle(obj * np.exp(-1j * np.angle(np.sum(obj[region]))))  # mean phase at 0
        for row, (image, label) in enumerate(((np.abs(obj), 'amplitude'), (phase, 'phase (rad)'))):
            low, high = np.percentile(image[region], [1, 99])
            axis = axes[row, column]
            shown = axis.imshow(image[crop], cmap='gray', vmin=low, vmax=high)
            axis.set_title(f"{title}: {label}", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
            figure.colorbar(shown, ax=axis, shrink=0.7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_convergence(path, results, have_truth):
    """One error against wall time, one line per contestant: the object error against the truth when
    known, else the amplitude misfit (the same measure for every engine), else (curves read from
    .ptyr files) PtyPy's Fourier error as each engine reports it."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    def measured(key):
        return any(sample[key] is not None for result in results for sample in result.curve)

    key, label = next((key, label) for key, label in (
        ('object_error', 'object error (registered, vs truth)'),
        ('amplitude_misfit', 'amplitude misfit (photons per pixel)'),
        ('fourier_error', "PtyPy's Fourier error (engine's own)")) if measured(key) and (have_truth or key != 'object_error'))
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for result in results:
        points = [(sample['wall_s'], sample[key]) for sample in result.curve if sample[key] is not None]
        if points:
            axis.plot(*zip(*points), marker='.', label=result.row['contestant'])
    axis.set_xlabel('wall time (s)')
    axis.set_ylabel(label)
    axis.set_yscale('log')
    axis.grid(True, which='both', alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
