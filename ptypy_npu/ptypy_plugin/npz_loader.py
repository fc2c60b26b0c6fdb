"""PtyPy data loader ``NpzScan`` for scans in the npz layout of ``shared/data/`` (needs PtyPy).

Registered with PtyPy by ``import ptypy_npu.ptypy_plugin``, so a parameter tree can say
``p.scans.star.data.name = 'NpzScan'``. The files carry no geometry; the defaults are
a geometry whose object pixel, ``wavelength * distance / (shape * psize)``, is one unit of
the file's positions (10 nm), as ``shared/data/README.md`` describes for the Siemens star.
"""
from ptypy import utils as u
from ptypy.core.data import PtyScan
from ptypy.experiment import register

from ..io import read_npz

#: Frame subsets: all frames, or two disjoint halves for half-data FRC scoring.
FRAME_SUBSETS = {'all': slice(None), 'even': slice(0, None, 2), 'odd': slice(1, None, 2)}


@register()
class NpzScan(PtyScan):
    """
    Measured frames from an npz file: ``data`` (1, N, H, W) photon counts with the zero frequency
    at the array corner (fftshifted here to PtyPy's centred convention), ``scan`` (1, N, 2)
    positions in object pixels (row = y, column = x, no sign flip), ``probe`` (a guess; read it
    with :meth:`NpzScan.probe_guess` for the scan's illumination model).

    Defaults:

    [name]
    default = NpzScan
    type = str
    help = Data loader for npz scan files (tike's layout)

    [npz_file]
    default = None
    type = str
    help = Path of the .npz or .npz.bz2 scan file

    [frames]
    default = 'all'
    type = str
    help = Frames to load: 'all', or the 'even' or 'odd' half (disjoint halves for FRC scoring)
    choices = ['all', 'even', 'odd']

    [energy]
    default = 12.40597
    type = float
    help = Photon energy (keV); with distance and psize it must make one object pixel one position unit

    [distance]
    default = 2.2016
    type = float
    help = Sample to detector distance (m)

    [psize]
    default = 172e-6
    type = float
    help = Detector pixel size (m)

    [shape]
    default = 128
    type = int, tuple
    help = Frame shape (pixels); must match the file's frames

    """

    def __init__(self, pars=None, **kwargs):
        p = self.DEFAULT.copy(depth=99)
        p.update(pars)
        if not p.npz_file:
            raise ValueError("NpzScan: set scans.<name>.data.npz_file to the .npz or .npz.bz2 scan file")
        if p.frames not in FRAME_SUBSETS:
            raise ValueError(f"NpzScan: data.frames must be one of {sorted(FRAME_SUBSETS)}, got {p.frames!r}")
        frames, positions, _ = read_npz(p.npz_file)
        if tuple(u.expect2(p.shape)) != frames.shape[-2:]:
            raise ValueError(f"NpzScan: data.shape is {p.shape} but {p.npz_file} holds {frames.shape[-2:]} frames")
        subset = FRAME_SUBSETS[p.frames]
        object_pixel = u.keV2m(p.energy) * p.distance / (frames.shape[-1] * p.psize)  # m per position unit
        self._frames = frames[subset]
        self._positions = positions[subset] * object_pixel
        p.num_frames = len(self._frames)
        super().__init__(p, **kwargs)

    @staticmethod
    def probe_guess(npz_file):
        """The file's probe, complex (M, H, W), as an illumination model for PtyPy."""
        return read_npz(npz_file)[2]

    def load_positions(self):
        """Positions (N, 2) in m, (y, x)."""
        return self._positions

    def load(self, indices):
        """Frames of ``indices``, centred; positions come from :meth:`load_positions`."""
        return {k: self._frames[k] for k in indices}, {}, {}


def npz_scan_tree(npz_file, shape=128):
    """Parameter tree of one BlockFull scan of ``npz_file`` through :class:`NpzScan`, its probe
    guess as the illumination model (used as it is: no aperture, propagation or diversity)."""
    return u.Param(name='BlockFull', data=u.Param(name='NpzScan', npz_file=npz_file, shape=shape),
                   illumination=u.Param(model=NpzScan.probe_guess(npz_file), aperture=None, propagation=None,
                                        diversity=None))
