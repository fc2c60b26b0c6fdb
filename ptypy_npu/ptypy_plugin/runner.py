"""Running engines side by side on one scan inside PtyPy: the comparison runner (needs PtyPy).

    ptypy-npu compare SCRIPT_OR_TREE --engines DM EPIE ML W1Net DM+W1Net --numiter 100 --out cmp

Each contestant (one engine, or a chain such as ``DM+W1Net`` run in turn on one object and
probe) runs on the same data in its own fresh ``Ptycho``: same seed, PtyPy's load manager
reset between runs, the tree's own engines replaced. Scoring, tables and figures are
:mod:`ptypy_npu.comparison`'s, which needs no PtyPy.
"""
import json
import math
import os
import runpy
import time

import numpy as np
import ptypy.core
import ptypy.core.ptycho
import ptypy.resources
from ptypy import utils as u
from ptypy.core import Ptycho
from ptypy.engines import ENGINES, by_name
from ptypy.utils import parallel

from ..comparison import OUTPUT_FILES, Result, check_output_folder, format_row, ptyr_name, score, write_outputs
from ..metrics import frc_between, illuminated_region, registered_error
from .moonflower import true_object, use_structured_object

def known_engines():
    """PtyPy's engine registry (name -> class), W1Net and the plugins' engines included."""
    return ENGINES


def tree_from_dict(tree):
    """A PtyPy parameter tree (``ptypy.utils.Param``, nested) from nested dicts."""
    return u.Param({key: tree_from_dict(value) if isinstance(value, dict) else value for key, value in tree.items()})


class _TreeCaptured(Exception):
    """Raised in place of ``Ptycho(p, ...)`` while a script is read for its tree."""

    def __init__(self, tree):
        super().__init__('parameter tree captured')
        self.tree = tree


def load_tree(path):
    """A PtyPy parameter tree from a script or a JSON file.

    A script (``.py``) runs until it builds its ``Ptycho``; the tree it passes is taken and
    nothing is reconstructed. A script that builds none must leave the tree in ``p``.
    JSON holds the tree as nested objects.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"parameter tree {path} does not exist")
    if str(path).endswith('.json'):
        try:
            with open(path) as handle:
                return tree_from_dict(json.load(handle))
        except json.JSONDecodeError as error:
            raise ValueError(f"parameter tree {path} is not valid JSON: {error}") from error
    if not str(path).endswith('.py'):
        raise ValueError(f"parameter tree {path}: expected a PtyPy script (.py) or a JSON tree (.json)")

    def capture(pars=None, *args, **kwargs):
        raise _TreeCaptured(pars)

    original = ptypy.core.Ptycho
    ptypy.core.Ptycho = ptypy.core.ptycho.Ptycho = capture
    try:
        namespace = runpy.run_path(str(path), run_name='__main__')
    except _TreeCaptured as captured:
        return captured.tree
    finally:
        ptypy.core.Ptycho = ptypy.core.ptycho.Ptycho = original
    if not isinstance(namespace.get('p'), u.Param):
        raise ValueError(f"parameter tree {path}: the script neither builds a Ptycho nor defines a tree 'p'")
    return namespace['p']


def amplitude_misfit(ptycho):
    """Mean squared amplitude misfit (photons per valid pixel) of the current object and probe over all
    frames and MPI ranks: ``sum mask (|F(probe * object)| - sqrt(I))^2 / sum mask``, the modes'
    intensities summed, with each pod's own propagator. One measure for every engine (PtyPy's
    engines each report their own kind of error)."""
    squared, pixels = 0.0, 0.0
    for diff_view in ptycho.diff.views.values():
        if not diff_view.active:
            continue
        intensity = sum(np.abs(pod.fw(pod.probe * pod.object)) ** 2 for pod in diff_view.pods.values())
        mask = diff_view.pod.mask
        squared += float(np.sum(mask * (np.sqrt(intensity) - np.sqrt(np.maximum(diff_view.data, 0))) ** 2))
        pixels += float(np.sum(mask))
    totals = np.array([squared, pixels])
    parallel.allreduce(totals)  # in place
    return totals[0] / max(totals[1], 1.0)


def simulated_truth(ptycho):
    """``(object, region, probe)`` known to a simulated scan (MoonFlowerScan), or None for measured data."""
    label = next(iter(ptycho.model.scans))
    scan = ptycho.model.scans[label].ptyscan
    if not all(hasattr(scan, name) for name in ('obj', 'pixel', 'pr')):
        return None
    truth, region = true_object(ptycho, label)
    return truth, region, np.asarray(scan.pr)


def ensure_structured_moonflower():
    """Give MoonFlowerScan a structured object where PtyPy's own image is missing (see :mod:`.moonflower`):
    random phase noise has no features for SSIM or FRC to score."""
    if not os.path.exists(ptypy.resources.flowerfile):
        use_structured_object()


def check_sample_every(sample_every):
    """Raise ``ValueError`` unless ``sample_every`` (iterations between convergence samples) is an int >= 1."""
    if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 1:
        raise ValueError(f"--sample-every must be a whole number of iterations >= 1, got {sample_every!r}")


def run_contestant(tree, contestant, seed=0, sample_every=5, time_limit=math.inf, ptyr=None):
    """Run ``contestant`` on a fresh Ptycho of ``tree`` (until done or ``time_limit`` s of iterating).

    ``wall_s`` (of the row and the convergence samples) is the iterations' time as PtyPy records it
    (``runtime.iter_info`` durations), the measure a ``.ptyr`` file keeps, so live and finished
    runs compare alike; ``setup_s`` is the engines' initialisation and preparation (W1Net's graph
    compilation). Object errors are sampled every ``sample_every`` iterations outside the timed
    iterations when the scan is simulated. Writes ``ptyr`` (PtyPy's minimal .ptyr, rank 0) if
    given. Returns ``(Result, truth)``, truth as from :func:`simulated_truth`.
    """
    check_sample_every(sample_every)
    if any(scan.get('data', {}).get('name') == 'MoonFlowerScan' for scan in tree.scans.values()):
        ensure_structured_moonflower()
    parallel.loadmanager.reset()
    np.random.seed(seed)
    p = tree.copy(depth=99)
    p.io = p.get('io', u.Param())
    p.io.update(rfile=None, autosave=u.Param(active=False), interaction=u.Param(active=False))
    p.engines = u.Param()
    P = Ptycho(p, level=4)
    P.runtime.iter_info = []
    P.record_positions = True
    truth = simulated_truth(P) if parallel.master else None
    storage = next(iter(P.obj.storages.values()))

    def iterations_time():
        return sum(float(info['duration']) for info in P.runtime.iter_info)

    def sample(iterations, fourier_error):
        """A convergence sample; the misfit and object error are evaluated outside the timed iterations."""
        return {'wall_s': iterations_time(), 'iterations': iterations, 'fourier_error': fourier_error,
                'amplitude_misfit': amplitude_misfit(P),
                'object_error': registered_error(storage.data[0], truth[0], truth[1]) if truth else None}

    setup, done_before, curve = 0.0, 0, []
    for pars in contestant.engines:
        tick = time.perf_counter()
        engine = by_name(pars['name'])(P, u.Param(pars))
        engine.initialize()
        P.new_data = [(d.label, d) for d in P.diff.S.values()]
        engine.prepare()
        setup += time.perf_counter() - tick
        if not curve:
            curve.append(sample(0, None))
        while not engine.finished and parallel.bcast_dict({'go': iterations_time() < time_limit})['go']:  # rank 0's
            engine.iterate(min(sample_every, engine.numiter - engine.curiter))
            curve.append(sample(done_before + engine.curiter, float(P.runtime.iter_info[-1]['error'][0])))
        engine.finalize()
        done_before += engine.curiter
    if ptyr:
        P.save_run(ptyr, kind='minimal')
    errors = P.runtime.iter_info[-1]['error']
    probe = next(iter(P.probe.storages.values()))
    region = illuminated_region(probe.data, [v.dlow for v in storage.views], storage.shape[1:])
    wall = iterations_time()
    row = {'contestant': contestant.name, 'frames': len(P.diff.V), 'wall_s': wall, 'setup_s': setup,
           'iterations': curve[-1]['iterations'], 's_per_iteration': wall / max(curve[-1]['iterations'], 1),
           'fourier_error': float(errors[0]), 'photon_error': float(errors[1]), 'exit_error': float(errors[2]),
           'amplitude_misfit': curve[-1]['amplitude_misfit']}
    result = Result(row, curve, storage.data[0].copy(), probe.data[0].copy(), region, float(storage.psize[0]),
                    np.array(storage.origin, float))
    return result, truth


def _halves(tree):
    """Two copies of ``tree`` loading the even and the odd frames of every scan (``data.frames``)."""
    halves = []
    for half in ('even', 'odd'):
        copy = tree.copy(depth=99)
        for label, scan in copy.scans.items():
            if scan.data.get('name') != 'NpzScan':
                raise ValueError(f"halves: scan {label!r} uses {scan.data.get('name')!r}; half-data FRC needs a "
                                 f"loader with a 'frames' subset parameter (NpzScan)")
            scan.data.frames = half
        halves.append(copy)
    return halves


def on_common_grid(results):
    """Objects and regions of ``results`` placed on one pixel grid by their origins (same object pixel).

    Returns ``(objects, regions)``: lists of complex and bool (Ho, Wo) arrays covering every
    result's grid, zero (False) where a result has no pixels.
    """
    offsets = [np.round((r.origin - results[0].origin) / r.object_pixel).astype(int) for r in results]
    low = np.min(offsets, 0)
    offsets = [offset - low for offset in offsets]
    shape = tuple(np.max([offset + r.obj.shape for offset, r in zip(offsets, results)], 0))
    objects, regions = [], []
    for offset, result in zip(offsets, results):
        window = np.s_[offset[0]:offset[0] + result.obj.shape[0], offset[1]:offset[1] + result.obj.shape[1]]
        obj, region = np.zeros(shape, complex), np.zeros(shape, bool)
        obj[window], region[window] = result.obj, result.region
        objects.append(obj)
        regions.append(region)
    return objects, regions


def halves_frc(tree, contestant, seed=0):
    """Half-period resolution (px) by FRC of ``contestant``'s reconstructions from the even and the
    odd frames, over the pixels both lit (rank 0; None elsewhere)."""
    halves = [run_contestant(half, contestant, seed)[0] for half in _halves(tree)]
    if not parallel.master:
        return None
    (obj_even, obj_odd), (region_even, region_odd) = on_common_grid(halves)
    return frc_between(obj_even, obj_odd, region_even & region_odd)


def compare(tree, contestants, out, seed=0, sample_every=5, force=False, halves=False, report=print):
    """Run every :class:`Contestant` on ``tree`` in turn and write the comparison into ``out``.

    ``halves``: also reconstruct from the even and the odd frames (scans loaded by NpzScan) and
    report ``frc_halves_px``, the resolution where no truth is known. Under MPI all ranks run
    the engines and rank 0 alone scores and writes. Returns the :class:`Result` list (scored on rank 0).
    """
    check_output_folder(out, OUTPUT_FILES + tuple(ptyr_name(c.name) for c in contestants), force)
    check_sample_every(sample_every)
    if halves:
        _halves(tree)  # refuse unsuitable scans before anything runs
    if parallel.master:
        os.makedirs(out, exist_ok=True)
    results, truth = [], None
    for contestant in contestants:
        result, truth = run_contestant(tree, contestant, seed, sample_every, ptyr=os.path.join(out, ptyr_name(
            contestant.name)))
        if halves:
            result.row['frc_halves_px'] = halves_frc(tree, contestant, seed)
        if parallel.master:
            if truth:
                score(result, truth)
            report(format_row(result.row))
        results.append(result)
    if parallel.master:
        write_outputs(out, results, truth, ranks=parallel.size)
        report(f"wrote {out}")
    parallel.barrier()
    return results
