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
import zipfile

import h5py
import numpy as np

from .files import atomic_output
from .scan import ScanData, object_grid

def read_npz(path, max_frames=None):
    """Frames, positions and probe of an npz scan file (see module docstring).

    Returns ``(frames, positions, probe)``: float32 (N, H, W) photon counts fftshifted to
    PtyPy's centred convention, float (N, 2) positions in object pixels (row, column) as
    stored, complex64 (M, H, W) or None. ``max_frames`` keeps the first frames only.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"scan file {path} does not exist")
    opener = bz2.open if str(path).endswith('.bz2') else open
    try:
        with opener(path, 'rb') as handle:
            archive = np.load(io.BytesIO(handle.read()))
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"scan file {path} is not a readable npz archive ({type(error).__name__}: {error})") from None
    missing = {'data', 'scan'} - set(arrays)
    if missing:
        raise ValueError(f"scan file {path} lacks the arrays {sorted(missing)} (needs data, scan; probe optional)")
    frames = arrays['data'].reshape((-1,) + arrays['data'].shape[-2:])
    positions = arrays['scan'].reshape(-1, 2).astype(float)
    if len(frames) != len(positions):
        raise ValueError(f"scan file {path}: {len(frames)} frames in 'data' but {len(positions)} positions in 'scan'")
    if max_frames is not None:
        frames, positions = frames[:max_frames], positions[:max_frames]
    probe = arrays.get('probe')
    if probe is not None:
        probe = probe.reshape((-1,) + frames.shape[-2:]).astype(np.complex64)
    return np.fft.fftshift(frames, axes=(-2, -1)).astype(np.float32), positions, probe


def load_npz_scan(path, max_frames=None):
    """A :class:`ScanData` from an npz scan file (see :func:`read_npz`), object initialised to 1.

    Positions are rounded to whole pixels and moved to start at ``OBJECT_MARGIN``.
    """
    frames, positions, probe = read_npz(path, max_frames)
    pixels, object_shape = object_grid(positions, frames.shape[-2:])
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
    ``scan.OBJECT_MARGIN`` from the edge. The probe is the file's, else ``probe`` (complex (H, W)
    or (modes, H, W)), else None (the caller guesses one: :mod:`ptypy_npu.guesses`).
    """
    with open_hdf5(path, 'CXI file') as handle:
        def read(key, required=True, scalar=False):
            if CXI_PATHS[key] not in handle:
                if required:
                    raise ValueError(f"CXI file {path} lacks the dataset {CXI_PATHS[key]}")
                return None
            try:
                value = handle[CXI_PATHS[key]][()]
                return float(value) if scalar else np.asarray(value)
            except (OSError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"CXI file {path}: {CXI_PATHS[key]} cannot be read "
                                 f"({type(error).__name__}: {error})") from None
        frames, translation = read('data'), read('translation')
        distance, pixel, energy = read('distance', scalar=True), read('pixel', scalar=True), read('energy', scalar=True)
        mask, file_probe = read('mask', required=False), read('probe', required=False)
    if frames.ndim != 3 or translation.shape != (len(frames), 3):
        raise ValueError(f"CXI file {path}: {CXI_PATHS['data']} must be (N, H, W) and {CXI_PATHS['translation']} "
                         f"(N, 3), got {frames.shape} and {translation.shape}")
    if not min(distance, pixel, energy) > 0:
        raise ValueError(f"CXI file {path}: distance, x_pixel_size and energy must be > 0, "
                         f"got {distance}, {pixel}, {energy}")
    if max_frames is not None:
        frames, translation = frames[:max_frames], translation[:max_frames]
        mask = mask[:max_frames] if mask is not None and mask.ndim == 3 else mask
    n, h, w = frames.shape
    probe = file_probe if file_probe is not None else probe
    if probe is not None and np.size(probe) % (h * w):
        raise ValueError(f"CXI file {path}: the probe {np.shape(probe)} does not fit the {h} x {w} frames")
    wavelength = PLANCK_TIMES_LIGHT / energy
    object_pixel = wavelength * distance / (h * pixel)
    pixels, object_shape = object_grid(translation[:, [1, 0]] / object_pixel, (h, w))
    valid = None if mask is None else np.broadcast_to(np.asarray(mask) == 0, frames.shape)
    geometry = {'wavelength': wavelength, 'distance': distance, 'detector_pixel': pixel, 'object_pixel': object_pixel}
    return ScanData(intensities=frames.astype(np.float32), positions=pixels,
                    probe=None if probe is None else np.asarray(probe, np.complex64).reshape((-1, h, w)),
                    obj=np.ones(object_shape, np.complex64), mask=valid, geometry=geometry)


def save_cxi(path, data, with_probe=True, force=False):
    """Write ``data`` (a :class:`ScanData` with ``wavelength``, ``distance``, ``detector_pixel`` and
    ``object_pixel`` in its geometry) as a CXI file of :data:`CXI_PATHS` that :func:`load_cxi_scan`
    reads back on the same object grid; the probe only ``with_probe`` (raw beamline files have none)."""
    geometry = data.geometry
    pixel = geometry['object_pixel']
    positions = np.asarray(data.positions, float)
    values = {'data': np.asarray(data.intensities, np.float32),
              'translation': np.column_stack([positions[:, 1] * pixel, positions[:, 0] * pixel, np.zeros(len(positions))]),
              'distance': geometry['distance'], 'pixel': geometry['detector_pixel'],
              'energy': PLANCK_TIMES_LIGHT / geometry['wavelength']}
    if data.mask is not None:
        values['mask'] = (~np.asarray(data.mask, bool)).astype(np.uint8)
    if with_probe:
        values['probe'] = np.asarray(data.probe, np.complex64)
    with atomic_output(path, force, 'CXI file') as temporary, h5py.File(temporary, 'w') as handle:
        handle['cxi_version'] = 150
        for key, value in values.items():
            handle[CXI_PATHS[key]] = value


def load_scan(path, probe=None, max_frames=None):
    """A :class:`ScanData` from a CXI (``.cxi``, ``.h5``) or npz (``.npz``, ``.npz.bz2``) file."""
    if str(path).endswith(('.cxi', '.h5', '.hdf5')):
        return load_cxi_scan(path, probe, max_frames)
    if str(path).endswith(('.npz', '.npz.bz2')):
        return load_npz_scan(path, max_frames)
    raise ValueError(f"scan file {path}: expected a .cxi/.h5 (CXI) or .npz/.npz.bz2 file")


def read_probe(path, frame_shape):
    """A probe, complex (M, H, W), from a file: ``.npy``, ``.npz`` (array ``probe``, or its only
    array), CXI/HDF5 (``entry_1/instrument_1/source_1/probe`` or a dataset ``probe``) or a PtyPy
    ``.ptyr`` (the first probe storage). ``ValueError`` naming the file and what it lacks."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"probe file {path} does not exist")
    try:
        if path.endswith('.npy'):
            probe = np.load(path, allow_pickle=False)
        elif path.endswith('.npz'):
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                if 'probe' not in names and len(names) != 1:
                    raise ValueError(f"probe file {path} holds {names}: name the array 'probe'")
                probe = archive['probe' if 'probe' in names else names[0]]
        elif path.endswith(('.cxi', '.h5', '.hdf5', '.ptyr')):
            with open_hdf5(path, 'probe file') as handle:
                storages = handle.get('content/probe')
                candidates = [CXI_PATHS['probe'], 'probe'] + (
                    [f"content/probe/{sorted(storages)[0]}/data"] if storages is not None and len(storages) else [])
                found = next((name for name in candidates if name in handle), None)
                if found is None:
                    raise ValueError(f"probe file {path} has none of the datasets {candidates[:2]} or a .ptyr probe")
                probe = handle[found][()]
        else:
            raise ValueError(f"probe file {path}: expected .npy, .npz, .cxi/.h5 or .ptyr")
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"probe file {path} cannot be read ({type(error).__name__}: {error})") from None
    probe = np.asarray(probe)
    h, w = frame_shape
    if probe.size == 0 or probe.size % (h * w) or probe.shape[-2:] != (h, w):
        raise ValueError(f"probe file {path}: probe of shape {probe.shape} does not fit the {h} x {w} frames")
    return probe.reshape(-1, h, w).astype(np.complex64)


def save_result(path, obj, probe, positions, metadata, errors=None, force=False):
    """Write object (Ho, Wo), probe (M, H, W), positions (N, 2), per-frame errors (N, 3) if
    given, and ``metadata`` (dict of str or numbers) to HDF5.

    Written to a temporary file first and renamed, so an existing result is never left half-written.
    """
    with atomic_output(path, force, 'result') as temporary, h5py.File(temporary, 'w') as f:
        f['object'] = obj
        f['probe'] = probe
        f['positions'] = positions
        if errors is not None:
            f['errors'] = errors
            f['errors'].attrs['columns'] = 'fourier,photon,exit'
        for key, value in metadata.items():
            f.attrs[key] = value


def save_png(path, obj, region=None, force=False):
    """Amplitude and phase of ``obj`` (Ho, Wo) side by side as a PNG, cropped to the bool ``region``
    (the scanned area; default all). The amplitude is divided by its median over the region (the
    probe/object scale split is arbitrary) and the phase has its mean over the region removed;
    grey levels span the 1st to 99th percentile inside it. The titles say so."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    region = np.ones(np.shape(obj), bool) if region is None else np.asarray(region, bool)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    crop = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    amplitude = np.abs(obj) / np.median(np.abs(obj[region]))
    phase = np.angle(obj * np.exp(-1j * np.angle(np.sum(obj[region]))))
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for axis, image, title in zip(axes, (amplitude, phase), ('amplitude / its median over the scanned area',
                                                             'phase (rad), mean over the scanned area removed')):
        low, high = np.percentile(image[region], [1, 99])
        shown = axis.imshow(image[crop], cmap='gray', vmin=low, vmax=high)
        axis.set_title(title, fontsize=10)
        figure.colorbar(shown, ax=axis, shrink=0.8)
    with atomic_output(path, force, 'figure') as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches='tight', format='png')
    plt.close(figure)
