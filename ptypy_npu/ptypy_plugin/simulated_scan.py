"""PtyPy data loader ``SimulatedScan``: the scans of :func:`ptypy_npu.simulate.simulate_scan` inside PtyPy.

Registered with PtyPy by ``import ptypy_npu.ptypy_plugin``. Like PtyPy's MoonFlowerScan it keeps
what it simulated (``obj``, ``pixel``, ``pr``), so the comparison runner scores reconstructions
against the truth; unlike it, it offers other probe shapes, objects and doses, the same scans the
command line writes with ``ptypy-npu simulate``. The geometry is :data:`ptypy_npu.simulate.GEOMETRY`.
"""
import numpy as np
from ptypy import utils as u
from ptypy.core.data import PtyScan
from ptypy.experiment import register

from ..simulate import OBJECTS, PROBES, simulate_scan


@register()
class SimulatedScan(PtyScan):
    """
    A far-field scan simulated by ptypy-npu (Fermat spiral, Poisson noise): a test object under a
    probe of a chosen shape. ``obj``, ``pixel`` and ``pr`` hold the truth, as MoonFlowerScan's do.

    Defaults:

    [name]
    default = SimulatedScan
    type = str
    help = Data loader of ptypy-npu's simulated scans

    [shape]
    default = 64
    type = int
    help = Frame size (pixels)

    [num_frames]
    default = 100
    type = int
    help = Frames of the scan

    [photons]
    default = 1e6
    type = float
    help = Mean photons per frame

    [step]
    default = 0.15
    type = float
    help = Mean scan step as a fraction of the frame (smaller: denser overlap)

    [probe]
    default = disc
    type = str
    help = Probe shape of ptypy_npu.simulate.PROBES: 'disc' (defocused soft disc) or 'lens' (defocused Airy focus)

    [object]
    default = star
    type = str
    help = Test object of ptypy_npu.simulate.OBJECTS

    [seed]
    default = 0
    type = int
    help = Seed of the Poisson noise and of random objects

    [energy]
    default = 8.0
    type = float
    help = Photon energy (keV), from ptypy_npu.simulate.GEOMETRY

    [distance]
    default = 2.0
    type = float
    help = Sample to detector distance (m), from ptypy_npu.simulate.GEOMETRY

    [psize]
    default = 75e-6
    type = float
    help = Detector pixel (m), from ptypy_npu.simulate.GEOMETRY
    """

    def __init__(self, pars=None, **kwargs):
        p = self.DEFAULT.copy(depth=99)
        p.update(pars)
        for key, choices in (('probe', PROBES), ('object', OBJECTS)):
            if p[key] not in choices:
                raise ValueError(f"SimulatedScan: data.{key} must be one of {sorted(choices)}, got {p[key]!r}")
        data, truth = simulate_scan(frame_size=int(p.shape), count=int(p.num_frames), step_fraction=p.step,
                                    photons=p.photons, seed=p.seed, obj=p.object, probe=p.probe)
        self.frames_simulated = data.intensities
        self.pixel = np.asarray(data.positions)
        self.obj = truth
        self.pr = data.probe[0]
        self.object_pixel = data.geometry['object_pixel']
        p.num_frames = len(data.intensities)
        super().__init__(p, **kwargs)

    def load_positions(self):
        """Positions (N, 2) in m, (y, x)."""
        return self.pixel * self.object_pixel

    def load(self, indices):
        return {k: self.frames_simulated[k] for k in indices}, {}, {}


def simulated_scan_tree(**data):
    """Parameter tree of one BlockFull scan through :class:`SimulatedScan` (``data``: its parameters),
    starting from the true probe (a well-characterised beam)."""
    scan = u.Param(name='BlockFull', data=u.Param(name='SimulatedScan', **data))
    probe = SimulatedScan(u.Param(data)).pr
    scan.illumination = u.Param(model=probe[None], aperture=None, propagation=None, diversity=None)
    return scan
