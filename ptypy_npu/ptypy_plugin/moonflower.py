"""PtyPy's simulated MoonFlowerScan with a known, structured object (needs PtyPy).

PtyPy's GitHub copy lacks ``resources/flowers.png``; MoonFlowerScan then silently
simulates random phase noise. :func:`use_structured_object` points PtyPy at a real
photograph shipped with matplotlib instead, and :func:`true_object` reads the object the
scan simulated back onto the reconstruction's pixel grid for ground-truth scoring.
"""
import os
import tempfile

import numpy as np
import ptypy.resources
from PIL import Image
from ptypy import utils as u

from ..files import atomic_output
from ..metrics import illuminated_region

#: matplotlib sample photograph the object is made from.
SAMPLE_IMAGE = 'grace_hopper.jpg'


def structured_object():
    """A well-posed complex test object (600, 512) made from matplotlib's sample photograph.

    Amplitude ``0.35 + 0.65 * gray`` (0.35..1), phase ``1.2 * gray`` of the photograph
    flipped upside down (0..1.2 rad, lightly smoothed), so amplitude and phase carry
    different features and the phase never wraps.
    """
    import matplotlib.cbook
    from matplotlib.image import imread
    from scipy.ndimage import gaussian_filter
    gray = imread(matplotlib.cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False))[..., :3].mean(-1) / 255.0
    phase = 1.2 * gaussian_filter(np.flipud(gray), 1.0)
    return (0.35 + 0.65 * gray) * np.exp(1j * phase)


def use_structured_object(path=None):
    """Make PtyPy's MoonFlowerScan simulate :func:`structured_object` instead of random noise.

    Writes the object as the HSV-coded PNG PtyPy reads (hue = phase, value = amplitude) to
    ``path`` (default: a file in the temporary directory), points
    ``ptypy.resources.flowerfile`` at it and checks that PtyPy reads back this object.
    Returns the path.
    """
    obj = structured_object()
    path = path or os.path.join(tempfile.gettempdir(), 'ptypy_npu_moonflower_object.png')
    # each process (MPI rank) writes its own file and renames it: a reader never sees a half-written PNG
    with atomic_output(path, force=True, what='MoonFlowerScan object') as partial:
        # no alpha: PtyPy reads max(R, G, B, A)
        Image.fromarray(np.round(u.complex2rgb(obj)).astype(np.uint8), 'RGB').save(partial)
    ptypy.resources.flowerfile = path
    loaded = ptypy.resources.flower_obj(obj.shape)
    if np.abs(loaded - obj).max() > 0.05:
        raise RuntimeError(f"PtyPy did not load the structured test object from {path}")
    return path


def moonflower_scan(frames=200, shape=128, photons=1e8, noise=True):
    """Parameter tree of the ``MoonFlowerScan`` data of one BlockFull scan."""
    scan = u.Param(name='BlockFull')
    scan.data = u.Param(name='MoonFlowerScan', shape=shape, num_frames=frames, save=None,
                        photons=photons, add_poisson_noise=noise)
    return scan


def true_object(ptycho, scan_label=None):
    """The simulated object on the pixel grid of ``ptycho``'s object storage, and its scored region.

    Returns ``(truth, region)``: complex (Ho, Wo) holding the MoonFlowerScan object where views
    lie (zero elsewhere), and the bool region lit by at least 10 % of the maximum summed probe
    intensity. The object is placed by one offset, the one most views have between their pixel
    on PtyPy's grid and their pixel in the simulation: PtyPy rounds positions to pixels its own
    way, so a few views sit one pixel from where they were simulated, and placing the truth view
    by view would make it inconsistent where such views overlap.
    """
    label = scan_label or next(iter(ptycho.model.scans))
    scan = ptycho.model.scans[label].ptyscan
    storage = next(iter(ptycho.obj.storages.values()))
    h, w = next(iter(ptycho.probe.storages.values())).shape[-2:]
    corners = np.array([view.dlow for view in storage.views])
    offsets = corners - np.array([scan.pixel[view.pod.di_view.layer] for view in storage.views])
    values, counts = np.unique(offsets, axis=0, return_counts=True)
    row, col = values[np.argmax(counts)]  # storage pixel = simulation pixel + (row, col)
    placed = np.zeros(storage.shape[1:], complex)
    rows = slice(max(row, 0), min(row + scan.obj.shape[0], placed.shape[0]))
    cols = slice(max(col, 0), min(col + scan.obj.shape[1], placed.shape[1]))
    placed[rows, cols] = scan.obj[rows.start - row:rows.stop - row, cols.start - col:cols.stop - col]
    covered = np.zeros(placed.shape, bool)
    for r, c in corners:
        covered[r:r + h, c:c + w] = True
    probe = next(iter(ptycho.probe.storages.values())).data
    return np.where(covered, placed, 0), illuminated_region(probe, corners, placed.shape)
