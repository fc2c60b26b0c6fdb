"""Shared checks for the tests."""
import bz2

import numpy as np

from ptypy_npu import settings
from ptypy_npu.metrics import registered_error
from ptypy_npu.plugins import build_solver

#: A small W1Network for quick tests, as settings overrides.
SMALL_NETWORK = {'network.name': 'W1Network', 'network.depth': 2, 'network.width': 4, 'network.binning': 1}
PHYSICS_ONLY = {'network.name': None}


def make_solver(data, overrides=None, **options):
    """``build_solver(data, settings.make(overrides), **options)``: overrides by tree key."""
    return build_solver(data, settings.make(overrides), **options)


def patch_errors(solver, truth, frames):
    """Registered errors (centre half of each frame) of the network's patches and of flat patches.

    A flat patch is what an untrained W1Net predicts; a network that learned anything beats it.
    """
    h = solver.data.intensities.shape[-1]
    centre = np.zeros((h, h), bool)
    centre[h // 4:3 * h // 4, h // 4:3 * h // 4] = True
    network, flat = [], []
    for patch, (row, col) in zip(solver.predict_patches(frames=frames), solver.data.positions[frames]):
        true_patch = truth[row:row + h, col:col + h]
        network.append(registered_error(patch, true_patch, centre))
        flat.append(registered_error(np.ones_like(patch), true_patch, centre))
    return np.mean(network), np.mean(flat)


def parameter_tree(tmp_path, engines, frames=40, shape=64):
    from ptypy import utils as u
    from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, use_structured_object
    from ptypy_npu.ptypy_plugin.runner import tree_from_dict
    tmp_path.mkdir(parents=True, exist_ok=True)
    use_structured_object(str(tmp_path / 'object.png'))
    p = u.Param()
    p.verbose_level = 'critical'
    p.io = u.Param(home=str(tmp_path), rfile=str(tmp_path / 'recon.ptyr'),
                   autosave=u.Param(active=False), interaction=u.Param(active=False))
    p.scans = u.Param(MF=moonflower_scan(frames=frames, shape=shape, photons=1e8))
    p.engines = u.Param()
    for k, engine in enumerate(engines):
        p.engines[f'e{k:02d}'] = tree_from_dict(engine)
    return p


def run(p, level=5, seed=0):
    from ptypy.core import Ptycho
    from ptypy.utils import parallel
    parallel.loadmanager.reset()
    np.random.seed(seed)  # MoonFlowerScan's Poisson noise: the same data in every run
    return Ptycho(p, level=level)


def object_error(P):
    """Registered error of PtyPy's object against MoonFlowerScan's truth."""
    from ptypy_npu.ptypy_plugin.moonflower import true_object
    truth, region = true_object(P)
    return registered_error(next(iter(P.obj.storages.values())).data[0], truth, region)


def write_tike_layout(path, data):
    """``data`` (a ScanData) in the layout of shared/data: corner-centred frames, float positions
    moved by -3.3 px, nested probe axes."""
    frames = np.fft.ifftshift(data.intensities, axes=(-2, -1))[None]
    with bz2.open(path, 'wb') as f:
        np.savez(f, data=frames, scan=(data.positions - 3.3)[None].astype(np.float32),
                 probe=data.probe[None, None, None].astype(np.complex64))
