"""Initial guesses from the measured data alone, for files that carry no probe (numpy only).

Most raw beamline files hold frames and positions, not the illumination. The guess here needs
nothing else: the mean diffraction amplitude propagated back to the sample (zero phase), which
by Parseval carries the mean frame's photons, so ``|F(P O)|^2`` starts in photons for a
transmission of 1. The solver refines it from there.
"""
import numpy as np


def probe_from_data(intensities, mask=None):
    """Probe guess (1, H, W) complex from frames (N, H, W) in photons, zero frequency centred.

    ``P = F^-1(sqrt(<I>))``, the centred unitary inverse FFT of the mean measured amplitude (bad
    pixels, ``mask`` False, take the mean of the valid ones), so ``sum |P|^2`` equals the mean
    frame's photon count.
    """
    intensities = np.asarray(intensities, float)
    valid = np.ones(intensities.shape, bool) if mask is None else np.asarray(mask, bool)
    counts = valid.sum(0)
    mean = np.where(counts > 0, (intensities * valid).sum(0) / np.maximum(counts, 1), 0.0)
    if not np.any(mean > 0):
        raise ValueError("the frames hold no photons: no probe can be guessed from them")
    mean[counts == 0] = mean[counts > 0].mean()
    amplitude = np.sqrt(mean)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amplitude), norm='ortho'))
    return probe[None].astype(np.complex64)
