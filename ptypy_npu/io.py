"""Reading scans from files and writing results (h5py, numpy), without PtyPy.

Inputs:

* npz (optionally ``.npz.bz2``), as in ``shared/data/`` (tike's layout): ``data``
  (1, N, H, W) photon counts with zero frequency at the array corner, ``scan`` (1, N, 2)
  positions in object pixels (row, column), ``probe`` (..., H, W) complex.
* CXI (HDF5, the Coherent X-ray Imaging format), the datasets of :data:`CXI_PATHS`.
"""
import bz2
import io
import os

import h5py
import numpy as np

from .solver import ScanData

#: Object pixels kept free around the scanned area.
OBJECT_MARGIN = 8


def _object_grid(positions, frame_shape):
    """Top-left object pixels (N, 2) int of ``positions`` (N, 2) float px, rounded and moved
    ``OBJECT_MARGIN`` from the edge, and the object shape that holds every frame plus the margin."""
    pixels = np.round(positions - positions.min(0)).astype(np.int64) + OBJECT_MARGIN
    return pixels, tuple(pixels.max(0) + frame_shape + OBJECT_MARGIN)


def read_npz(path, max_frames=None):
    """Frames, positions and probe of an npz scan file (see module docstring).

    Returns ``(frames, positions, probe)``: float32 (N, H, W) photon counts fftshifted to
    PtyPy's centred convention, float (N, 2) positions in object pixels (row, column) as
    stored, complex64 (M, H, W). ``max_frames`` keeps the first frames only.
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
    positions = arrays['scan'].reshape(-1, 2).astype(float)
    if len(frames) != len(positions):
        raise ValueError(f"scan file {path}: {len(frames)} frames in 'data' but {len(positions)} positions in 'scan'")
    if max_frames is not None:
        frames, positions = frames[:max_frames], positions[:max_frames]
    probe = arrays['probe'].reshape((-1,) + frames.shape[-2:]).astype(np.complex64)
    return np.fft.fftshift(frames, axes=(-2, -1)).astype(np.float32), positions, probe


def load_npz_scan(path, max_frames=None):
    """A :class:`ScanData` from an npz scan file (see :func:`read_npz`), object initialised to 1.

    Positions are rounded to whole pixels and moved to start at ``OBJECT_MARGIN``.
    """
    frames, positions, probe = read_npz(path, max_frames)
    pixels, object_shape = _object_grid(positions, frames.shape[-2:])
    return ScanData(intensities=frames, positions=pixels, probe=probe, obj=np.ones(object_shape, np.complex64))


def open_hdf5(path, kind):
    """``path`` opened read-only with h5py; ``FileNotFoundError`` or ``ValueError`` naming the ``kind`` of file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        return h5py.File(path, 'r')
    except OSError as error:
        raise ValueError(f"{kind} {path} is not a readable HDF5 file: {error}") from error


#: CXI datasets read by :func:`load_cxi_scan` (SI units); mask and probe are optional.
CXI_PATHS = {
    'data': 'entry_1/data_1/data',                                    # (N, H, W) photons, zero frequency centred
    'translation': 'entry_1/instrument_1/detector_1/translation',     # (N, 3) sample x, y, z in m
    'distance': 'entry_1/instrument_1/detector_1/distance',           # sample-detector distance, m
    'pixel': 'entry_1/instrument_1/detector_1/x_pixel_size',          # detector pixel, m
    'energy': 'entry_1/instrument_1/source_1/energy',                 # photon energy, J
    'mask': 'entry_1/instrument_1/detector_1/mask',                   # (H, W) or (N, H, W), nonzero = bad pixel
    'probe': 'entry_1/instrument_1/source_1/probe',                   # (H, W) or (modes, H, W) complex, at the sample
}
#: Planck constant times the speed of light, J m.
PLANCK_TIMES_LIGHT = 6.62607015e-34 * 299792458.0


def load_cxi_scan(path, probe=None, max_frames=None):
    """A :class:`ScanData` from a CXI file, object initialised to 1, geometry filled in.

    The object pixel is ``wavelength * distance / (frame size * detector pixel)``; sample
    translations (x, y) become top-left object pixels (row from y, column from x), rounded,
    ``OBJECT_MARGIN`` from the edge. ``probe`` (complex (H, W) or (modes, H, W)) is used
    when the file has none (e.g. a trained model's); without either, ``ValueError``.
    """
    with open_hdf5(path, 'CXI file') as handle:
        def read(key, required=True):
            if CXI_PATHS[key] not in handle:
                if required:
                    raise ValueError(f"CXI file {path} lacks the dataset {CXI_PATHS[key]}")
                return None
            return handle[CXI_PATHS[key]][()]
        frames, translation = read('data'), read('translation')
        distance, pixel, energy = float(read('distance')), float(read('pixel')), float(read('energy'))
        mask, file_probe = read('mask', required=False), read('probe', required=False)
    if frames.ndim != 3 or translation.shape != (len(frames), 3):
        raise ValueError(f"CXI file {path}: {CXI_PATHS['data']} must be (N, H, W) and {CXI_PATHS['translation']} "
                         f"(N, 3), got {frames.shape} and {translation.shape}")
    if max_frames is not None:
        frames, translation = frames[:max_frames], translation[:max_frames]
        mask = mask[:max_frames] if mask is not None and mask.ndim == 3 else mask
    probe = file_probe if file_probe is not None else probe
    if probe is None:
        raise ValueError(f"CXI file {path} has no probe ({CXI_PATHS['probe']}) and none was given")
    n, h, w = frames.shape
    wavelength = PLANCK_TIMES_LIGHT / energy
    object_pixel = wavelength * distance / (h * pixel)
    pixels, object_shape = _object_grid(translation[:, [1, 0]] / object_pixel, (h, w))
    valid = None if mask is None else np.broadcast_to(np.asarray(mask) == 0, frames.shape)
    geometry = {'wavelength': wavelength, 'distance': distance, 'detector_pixel': pixel, 'object_pixel': object_pixel}
    return ScanData(intensities=frames.astype(np.float32), positions=pixels,
                    probe=np.asarray(probe, np.complex64).reshape((-1, h, w)),
                    obj=np.ones(object_shape, np.complex64), mask=valid, geometry=geometry)


def load_scan(path, probe=None, max_frames=None):
    """A :class:`ScanData` from a CXI (``.cxi``, ``.h5``) or npz (``.npz``, ``.npz.bz2``) file."""
    if str(path).endswith(('.cxi', '.h5', '.hdf5')):
        return load_cxi_scan(path, probe, max_frames)
    if str(path).endswith(('.npz', '.npz.bz2')):
        return load_npz_scan(path, max_frames)
    raise ValueError(f"scan file {path}: expected a .cxi/.h5 (CXI) or .npz/.npz.bz2 file")


def refuse_overwrite(path, force):
    """Raise ``FileExistsError`` if ``path`` exists and ``force`` is not set."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; choose another output or pass --force to replace it")


def save_result(path, obj, probe, positions, metadata, errors=None, force=False):
    """Write object (Ho, Wo), probe (M, H, W), positions (N, 2), per-frame errors (N, 3) if
    given, and ``metadata`` (dict of str or numbers) to HDF5.

    Written to a temporary file first and renamed, so an existing result is never left half-written.
    """
    refuse_overwrite(path, force)
    temporary = f"{path}.partial"
    with h5py.File(temporary, 'w') as f:
        f['object'] = obj
        f['probe'] = probe
        f['positions'] = positions
        if errors is not None:
            f['errors'] = errors
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
