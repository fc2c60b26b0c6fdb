"""Reading scans from files and writing results (h5py, numpy), without PtyPy.

Input layout (``.npz``, optionally ``.npz.bz2``), as in ``shared/data/`` (tike's layout):
``data`` (1, N, H, W) photon counts with zero frequency at the array corner,
``scan`` (1, N, 2) positions in object pixels (row, column), ``probe`` (..., H, W) complex.
"""
import bz2
import io
import os

import h5py
import numpy as np

from .solver import ScanData

#: Object pixels kept free around the scanned area.
OBJECT_MARGIN = 8


def load_npz_scan(path, max_frames=None):
    """A :class:`ScanData` from an npz scan file (see module docstring), object initialised to 1.

    Frames are fftshifted to PtyPy's centred convention; positions are rounded to whole
    pixels and moved to start at ``OBJECT_MARGIN``. ``max_frames`` keeps the first frames only.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"scan file {path} does not exist")
    opener = bz2.open if str(path).endswith('.bz2') else open
    try:
        with opener(path, 'rb') as handle:
            archive = np.load(io.BytesIO(handle.read()))
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"scan file {path} is not a readable npz archive: {error}") from error
    missing = {'data', 'scan', 'probe'} - set(arrays)
    if missing:
        raise ValueError(f"scan file {path} lacks the arrays {sorted(missing)} (needs data, scan, probe)")
    frames = arrays['data'].reshape((-1,) + arrays['data'].shape[-2:])
    positions = arrays['scan'].reshape(-1, 2)
    if len(frames) != len(positions):
        raise ValueError(f"scan file {path}: {len(frames)} frames in 'data' but {len(positions)} positions in 'scan'")
    if max_frames is not None:
        frames, positions = frames[:max_frames], positions[:max_frames]
    h, w = frames.shape[-2:]
    probe = arrays['probe'].reshape((-1, h, w))
    pixels = np.round(positions - positions.min(0)).astype(np.int64) + OBJECT_MARGIN
    object_shape = tuple(pixels.max(0) + (h, w) + OBJECT_MARGIN)
    return ScanData(intensities=np.fft.fftshift(frames, axes=(-2, -1)).astype(np.float32), positions=pixels,
                    probe=probe.astype(np.complex64), obj=np.ones(object_shape, np.complex64))


def refuse_overwrite(path, force):
    """Raise ``FileExistsError`` if ``path`` exists and ``force`` is not set."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; choose another output or pass --force to replace it")


def save_result(path, solver, metadata, force=False):
    """Write object, probe, positions, per-frame errors and ``metadata`` (dict of str) to HDF5.

    Written to a temporary file first and renamed, so an existing result is never left half-written.
    """
    refuse_overwrite(path, force)
    temporary = f"{path}.partial"
    with h5py.File(temporary, 'w') as f:
        f['object'] = solver.object
        f['probe'] = solver.probe
        f['positions'] = solver.data.positions
        f['errors'] = solver.errors
        f['errors'].attrs['columns'] = 'fourier,photon,exit'
        for key, value in metadata.items():
            f.attrs[key] = value
    os.replace(temporary, path)


def save_png(path, obj, force=False):
    """Amplitude and phase of ``obj`` (Ho, Wo) side by side as a PNG."""
    refuse_overwrite(path, force)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for axis, image, title in zip(axes, (np.abs(obj), np.angle(obj)), ('amplitude', 'phase (rad)')):
        shown = axis.imshow(image, cmap='gray')
        axis.set_title(title)
        figure.colorbar(shown, ax=axis, shrink=0.8)
    figure.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(figure)
