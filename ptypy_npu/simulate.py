"""Simulated far-field ptychography scans in plain numpy (an independent forward model).

Used by the tests, the CLI's ``--simulate`` and the examples. Conventions match
:mod:`ptypy_npu.physics` with centred FFT factors:
``I = |fftshift(fft2(ifftshift(P * O_patch), norm='ortho'))|^2``, in photons.
"""
import numpy as np

from .guesses import propagate
from .objects import CLASSES, random_object
from .scan import ScanData, object_grid, patch_indices


def siemens_star(shape, spokes=18, max_phase=1.0, min_transmission=0.6):
    """Complex test object (Ho, Wo): a Siemens star in amplitude and phase plus rings.

    Amplitude in [min_transmission, 1], phase in [0, max_phase] rad.
    """
    yy, xx = np.indices(shape, dtype=float)
    yy -= (shape[0] - 1) / 2
    xx -= (shape[1] - 1) / 2
    radius = np.hypot(yy, xx)
    angle = np.arctan2(yy, xx)
    star = 0.5 * (1 + np.sign(np.sin(spokes * angle))) * (radius < 0.45 * min(shape))
    rings = 0.5 * (1 + np.cos(radius / 3.0)) * (radius > 0.3 * min(shape))
    amplitude = 1 - (1 - min_transmission) * star
    phase = max_phase * (0.6 * star + 0.4 * rings)
    return amplitude * np.exp(1j * phase)


def focused_probe(frame_size, diameter_fraction=0.45, defocus_phase=6.0):
    """Probe (1, H, W): a soft-edged disc with quadratic (defocus) phase, unit peak amplitude."""
    yy, xx = np.indices((frame_size, frame_size), dtype=float) - (frame_size - 1) / 2
    r = np.hypot(yy, xx) / (diameter_fraction * frame_size / 2)
    amplitude = 1 / (1 + np.exp((r - 1) * 12))
    return (amplitude * np.exp(1j * defocus_phase * r ** 2))[None]


def lens_focus_probe(frame_size, pupil_fraction=0.2, defocus_waves=0.5):
    """Probe (1, H, W) of a lens with a sharp circular pupil (radius ``pupil_fraction`` of the Nyquist
    frequency) slightly out of focus (``defocus_waves`` waves at the pupil's edge): an Airy focus with
    rings (half its power within 6 px, 80 % within 11 px, whatever the frame), unit peak amplitude. Unlike
    :func:`focused_probe` its far field has a hard edge."""
    ky, kx = (np.indices((frame_size, frame_size)) - frame_size // 2) / frame_size
    rho = np.hypot(ky, kx) / (pupil_fraction / 2)
    pupil = (rho <= 1) * np.exp(2j * np.pi * defocus_waves * rho ** 2)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    return (probe / np.abs(probe).max())[None]


#: Probe shapes of simulated scans by name: ``make(frame_size)`` -> (1, H, W).
PROBES = {'disc': focused_probe, 'lens': lens_focus_probe}


def spiral_positions(count, step):
    """(count, 2) float positions in px on a Fermat spiral with mean spacing ``step``, min at 0."""
    k = np.arange(count)
    radius = step * np.sqrt(k / np.pi)
    theta = k * np.pi * (3 - np.sqrt(5))
    positions = np.stack([radius * np.sin(theta), radius * np.cos(theta)], 1)
    return positions - positions.min(0)


def far_field_intensity(probe, patches):
    """Noise-free intensities (N, H, W) of probe modes (M, H, W) on patches (N, H, W)."""
    return (np.abs(propagate(patches[:, None] * probe[None])) ** 2).sum(1)


#: Geometry of simulated scans (m): an 8 keV beam, a detector of 75 um pixels 2 m downstream.
GEOMETRY = {'wavelength': 1.5498e-10, 'distance': 2.0, 'detector_pixel': 75e-6}

#: Test objects by name: ``make(shape, rng)`` -> complex (Ho, Wo): the Siemens star ('star'), a random object
#: of the library (:mod:`ptypy_npu.objects`), or one whose amplitude and phase both come from one class (the
#: library's random stars only through 'random': 'star' stays the fixed Siemens star).
OBJECTS = {**{name: (lambda shape, rng, name=name: random_object(shape, rng, (name,))[0]) for name in CLASSES},
           'star': lambda shape, rng: siemens_star(shape),
           'random': lambda shape, rng: random_object(shape, rng)[0]}


def simulate_scan(frame_size=64, count=64, step_fraction=0.15, photons=1e6, seed=0, noise=True, obj='star',
                  probe='disc'):
    """A scan of a test object (:data:`OBJECTS`) with a probe (a name of :data:`PROBES`, or a complex
    (M, H, W) array, rescaled) on a Fermat spiral of mean step ``step_fraction`` of the frame.

    Returns ``(data, truth)``: a :class:`ScanData` whose initial object is 1 and whose initial
    probe is the true probe (as an experiment's probe estimate would be), with the geometry of
    :data:`GEOMETRY`, and the true object (Ho, Wo) on the same pixel grid (that of
    :func:`~ptypy_npu.scan.object_grid`, as the file readers build it). ``photons`` is the mean
    count per frame.
    """
    if obj not in OBJECTS:
        raise ValueError(f"object must be one of {', '.join(OBJECTS)}, got {obj!r}")
    if isinstance(probe, str) and probe not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)} or an array, got {probe!r}")
    rng = np.random.default_rng(seed)
    probe = PROBES[probe](frame_size) if isinstance(probe, str) else np.asarray(probe, complex).reshape(
        (-1, frame_size, frame_size))
    positions, object_shape = object_grid(spiral_positions(count, step_fraction * frame_size), (frame_size,) * 2)
    truth = OBJECTS[obj](object_shape, rng)
    patches = truth.ravel()[patch_indices(positions, (frame_size, frame_size), object_shape)]
    intensities = far_field_intensity(probe, patches)
    scale = photons / intensities.sum(axis=(1, 2)).mean()
    intensities *= scale
    probe = probe * np.sqrt(scale)
    if noise:
        intensities = rng.poisson(intensities).astype(np.float32)
    geometry = dict(GEOMETRY, object_pixel=GEOMETRY['wavelength'] * GEOMETRY['distance']
                    / (frame_size * GEOMETRY['detector_pixel']))
    data = ScanData(intensities=intensities.astype(np.float32), positions=positions, probe=probe,
                    obj=np.ones(object_shape, complex), geometry=geometry)
    return data, truth
