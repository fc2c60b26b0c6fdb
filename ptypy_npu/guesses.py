"""Initial guesses from the measured data alone (numpy and scipy.fft): a probe for files that carry none, and
single-frame object patch estimates for the networks' holographic input.

Most raw beamline files hold frames and positions, not the illumination. What the data tell:

* the mean diffraction pattern is about the probe's own far field ``|F(P)|^2`` (the object
  scatters a little of it), so its square root is the probe's pupil amplitude;
* the scan step tells its size: scans are planned for the probe to overlap its neighbours, so
  the probe's rms radius is taken equal to the median nearest-neighbour step.

The pupil phase is not measured. A defocus (quadratic pupil phase) spreads the probe to the
size the step asks for, but its sign, focus before or after the sample, gives the same mean
pattern and a probe whose curvature has the wrong sign stalls a reconstruction for tens of
epochs (measured: 64-px frames, 1e7 photons, error 0.60 after 10 epochs against 0.13 with the
right sign). :func:`defocus_candidates` therefore offers both; the plugin host's
``build_solver`` keeps the one whose first epochs fit the data better. Every guess carries the
mean frame's photons (Parseval), so ``|F(P O)|^2`` starts in photons for a transmission of 1.

The mean amplitude with no phase at all (propagated straight back) is no guess to start from:
it is a fixed point of the Fourier projection, and a solver stays at that compact probe.
"""
import numpy as np
import scipy.fft

#: Defocus strengths tried (rad at the pupil's edge, quadratic in the spatial frequency).
DEFOCUS_GRID = np.geomspace(0.5, 5e3, 160)


def rms_radius(probe):
    """The rms radius (px) of ``sum_modes |probe|^2`` about its centre of mass; probe (M, H, W) or (H, W)."""
    power = np.abs(np.asarray(probe)) ** 2
    power = power.reshape((-1,) + power.shape[-2:]).sum(0)
    yy, xx = np.indices(power.shape)
    total = power.sum()
    cy, cx = np.sum(yy * power) / total, np.sum(xx * power) / total
    return float(np.sqrt(np.sum(((yy - cy) ** 2 + (xx - cx) ** 2) * power) / total))


def scan_step(positions):
    """The median distance (px) from each scan position (N, 2) to its nearest neighbour."""
    positions = np.asarray(positions, float)
    if len(positions) < 2:
        raise ValueError("a probe size cannot be guessed from fewer than two scan positions")
    distances = np.sqrt(((positions[:, None] - positions[None]) ** 2).sum(-1))
    np.fill_diagonal(distances, np.inf)
    return float(np.median(distances.min(1)))


def pupil_amplitude(intensities, mask=None):
    """The mean measured amplitude (H, W), zero frequency centred; bad pixels (``mask`` False) take the
    mean of the valid ones at that pixel, or of the whole pattern where no frame has a valid one."""
    intensities = np.asarray(intensities, float)
    valid = np.ones(intensities.shape, bool) if mask is None else np.asarray(mask, bool)
    counts = valid.sum(0)
    mean = np.where(counts > 0, (intensities * valid).sum(0) / np.maximum(counts, 1), 0.0)
    if not np.any(mean > 0):
        raise ValueError("the frames hold no photons: no probe can be guessed from them")
    mean[counts == 0] = mean[counts > 0].mean()
    return np.sqrt(mean)


def defocus_candidates(intensities, positions, mask=None):
    """Two probe guesses (1, H, W) complex, the pupil amplitude defocused (either sign) until the probe's
    rms radius matches the scan step (at most a quarter of the frame)."""
    amplitude = pupil_amplitude(intensities, mask)
    h, w = amplitude.shape
    target = min(scan_step(positions), min(h, w) / 4)
    ky, kx = np.indices((h, w))
    frequency = ((ky - h // 2) / h) ** 2 + ((kx - w // 2) / w) ** 2

    def probe(strength):
        return propagate(amplitude * np.exp(1j * strength * frequency), inverse=True)

    strength = min(DEFOCUS_GRID, key=lambda s: abs(rms_radius(probe(s)) - target))
    return [probe(sign * strength)[None].astype(np.complex64) for sign in (1, -1)]


#: Tikhonov term of :func:`patch_estimates`, a fraction of the brightest probe pixel's power.
ESTIMATE_REGULARISATION = 0.05


def propagate(waves, propagator=None, inverse=False):
    """PtyPy's far-field propagation ``F = post * fft2(pre * psi) / sqrt(H W)`` of waves (..., H, W), or its
    inverse; ``propagator`` = (pre, post) unit-modulus (H, W) factors, None for the centred FFT. Single
    precision stays single (scipy.fft: 16 against numpy's 420 ms in complex128 for 161 frames of 128 px; one
    thread, as fast here as two, and MPI ranks sharing a node do not oversubscribe it)."""
    axes = (-2, -1)
    if propagator is None:
        transform = scipy.fft.ifft2 if inverse else scipy.fft.fft2
        return np.fft.fftshift(transform(np.fft.ifftshift(waves, axes=axes), norm='ortho'), axes=axes)
    pre, post = propagator
    if inverse:
        return np.conj(pre) * scipy.fft.ifft2(np.conj(post) * waves, norm='ortho')
    return post * scipy.fft.fft2(pre * waves, norm='ortho')


def patch_estimates(intensities, probe, propagator=None):
    """The object patch (N, H, W) complex that each frame (N, H, W) tells on its own, as in-line holography
    does: the measured amplitudes given the phase of the probe's own far field (the frame of a flat
    object), propagated back; the exit wave's departure from the probe, divided by the probe (Tikhonov,
    :data:`ESTIMATE_REGULARISATION`), departs from a flat object of 1, so dark pixels stay at 1.

    For a weak object ``1 + d`` this is about ``1 + d/2`` plus a twin image spread by the probe's
    curvature: a real-space picture that a convolutional network can sharpen, where the frame holds the
    patch only in reciprocal space. The probe (M, H, W), any units, is rescaled to the mean frame's
    photons; its first mode's far field gives the phase. Single precision (complex64) for float32
    frames, as :class:`~ptypy_npu.scan.ScanData` holds them (twice as fast), double otherwise.
    """
    single = np.asarray(intensities).dtype == np.float32
    complex_type = np.complex64 if single else np.complex128
    intensities = np.asarray(intensities, np.float32 if single else np.float64)
    probe = np.asarray(probe, complex_type).reshape((-1,) + intensities.shape[-2:])
    probe = probe * np.sqrt(float(np.mean(intensities.sum(axis=(1, 2))) / np.sum(np.abs(probe) ** 2)))
    if propagator is not None:
        propagator = tuple(np.asarray(factor, complex_type) for factor in propagator)
    far_field = propagate(probe[0], propagator)
    phase = far_field / np.maximum(np.abs(far_field), 1e-30)
    exit_waves = propagate(np.sqrt(np.maximum(intensities, 0)) * phase, propagator, inverse=True)
    power = np.sum(np.abs(probe) ** 2, axis=0)
    departure = (exit_waves - probe[0]) * np.conj(probe[0]) / (power + ESTIMATE_REGULARISATION * power.max())
    return 1 + departure
