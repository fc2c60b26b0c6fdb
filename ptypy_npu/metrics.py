"""Ground-truth metrics for reconstructions (numpy only; PtyPy has none).

Ptychography determines the object only up to a global complex factor, a sub-pixel
shift and a linear phase ramp (probe and object trade them). :func:`registered_error`
removes all of them before comparing with the truth.
"""
import numpy as np

#: Alternations of phase-ramp removal and shift registration in :func:`registered_error`.
REGISTRATION_ROUNDS = 3
#: Largest shift (px per axis) :func:`registered_error` looks for; the probe/object trade-off
#: moves a reconstruction by a few pixels, while wider correlation peaks come from the
#: unlit border (still the initial guess) when the object's scale has drifted.
REGISTRATION_MAX_SHIFT = 16


def _upsampled_dft(spectrum, upsample, region, offsets):
    """DFT of ``spectrum`` (H, W) on a ``region`` x ``region`` grid spaced 1/upsample px around ``offsets``."""
    h, w = spectrum.shape
    rows = (np.arange(region) - region // 2) / upsample + offsets[0]
    cols = (np.arange(region) - region // 2) / upsample + offsets[1]
    kernel_rows = np.exp(2j * np.pi * np.outer(rows, np.fft.fftfreq(h)))
    kernel_cols = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(w), cols))
    return kernel_rows @ spectrum @ kernel_cols, rows, cols


def find_shift(moving, reference, upsample=20, max_shift=None):
    """Shift (dy, dx) in pixels, to 1/upsample px, that best aligns ``moving`` onto ``reference``.

    Peak of the cross-correlation (Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)):
    integer peak first, within ``max_shift`` px per axis if given, then an upsampled DFT around it.
    """
    cross_power = np.fft.fft2(reference) * np.conj(np.fft.fft2(moving))
    correlation = np.abs(np.fft.ifft2(cross_power))
    if max_shift is not None:
        lags = [np.abs(np.fft.fftfreq(n) * n) for n in correlation.shape]  # |lag| of each index, px
        correlation = correlation * ((lags[0][:, None] <= max_shift) & (lags[1][None, :] <= max_shift))
    peak = np.array(np.unravel_index(np.argmax(correlation), correlation.shape), dtype=float)
    shape = np.array(correlation.shape)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    fine, rows, cols = _upsampled_dft(cross_power, upsample, int(3 * upsample), peak)
    r, c = np.unravel_index(np.argmax(np.abs(fine)), fine.shape)
    return np.array([rows[r], cols[c]])


def shift_image(image, shift):
    """``image`` (H, W) moved by ``shift`` (dy, dx) px with the Fourier shift theorem (periodic)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1])))


def phase_ramp_slopes(estimate, truth, region):
    """Slopes (rad/px, y then x) of the linear phase ramp of ``estimate * conj(truth)`` over ``region``.

    The weighted mean phase differences between neighbouring pixels, free of phase wrapping.
    """
    product = estimate * np.conj(truth) * region
    return np.array([np.angle(np.sum(product[1:] * np.conj(product[:-1]))),
                     np.angle(np.sum(product[:, 1:] * np.conj(product[:, :-1])))])


def phase_ramp(shape, slopes):
    """``exp(i (slope_y y + slope_x x))`` on a (H, W) pixel grid."""
    yy, xx = np.indices(shape)
    return np.exp(1j * (slopes[0] * yy + slopes[1] * xx))


def registered_error(estimate, truth, region=None, upsample=20):
    """Normalised RMS error ``||c T(estimate) - truth|| / ||truth||`` over ``region``.

    T removes the sub-pixel shift (found by correlating with the truth over ``region``, up to
    :data:`REGISTRATION_MAX_SHIFT` px) and
    the linear phase ramp, and c is the best global complex factor (global phase and the
    probe/object scale). ``estimate`` and ``truth`` are complex (H, W) on the same pixel
    grid; ``region`` is a bool (H, W) of the pixels to score (e.g. :func:`illuminated_region`),
    default all.
    """
    estimate = np.asarray(estimate, dtype=complex)
    truth = np.asarray(truth, dtype=complex)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate {estimate.shape} and truth {truth.shape} must have one shape")
    region = np.ones(truth.shape, bool) if region is None else np.asarray(region, bool)
    weights = region.astype(float)

    def centred(image):
        return image - np.sum(image * weights) / weights.sum()

    def error_after(shift, slopes):
        aligned = shift_image(estimate * np.conj(phase_ramp(truth.shape, slopes)), shift)
        scale = np.sum(weights * np.conj(aligned) * truth) / np.sum(weights * np.abs(aligned) ** 2)
        residual = weights * np.abs(scale * aligned - truth) ** 2
        return float(np.sqrt(residual.sum() / np.sum(weights * np.abs(truth) ** 2)))

    # Only the truth is windowed: a window on both sides would correlate best with itself, at zero
    # shift. A ramp blurs the correlation peak and a shift biases the ramp, so the two are refined in
    # turn, the shift always applied to the ramp-free estimate (a shifted ramp rings at the edges).
    # The error is a minimum over these transformations, so every candidate may be tried: each round
    # keeps the better of its ramp fit and no further ramp (badly lit edge pixels with large junk
    # amplitudes can pull the fit away).
    slopes = np.zeros(2)
    errors = [error_after(np.zeros(2), slopes)]  # the identity is one of the transformations
    for _ in range(REGISTRATION_ROUNDS):
        deramped = estimate * np.conj(phase_ramp(truth.shape, slopes))
        shift = find_shift(centred(deramped), centred(truth) * weights, upsample, REGISTRATION_MAX_SHIFT)
        candidates = [slopes, slopes + phase_ramp_slopes(shift_image(deramped, shift), truth, weights)]
        scored = [(error_after(shift, c), k) for k, c in enumerate(candidates)]
        best_error, best = min(scored)
        slopes = candidates[best]
        errors.append(best_error)
    return min(errors)


def illuminated_region(probe, positions, object_shape, threshold=0.1):
    """Object pixels whose summed probe intensity reaches ``threshold`` of its maximum.

    probe (M, H, W) or (H, W) complex; positions (N, 2) top-left object pixels.
    """
    power = np.abs(np.asarray(probe)) ** 2
    power = power.sum(0) if power.ndim == 3 else power
    h, w = power.shape
    illumination = np.zeros(object_shape)
    for row, col in np.asarray(positions, dtype=int):
        illumination[row:row + h, col:col + w] += power
    return illumination >= threshold * illumination.max()


def fourier_ring_correlation(image_a, image_b):
    """FRC of two (H, W) images, ring by ring of integer spatial frequency (van Heel & Schatz 2005).

    Returns ``(frequencies, frc, pixels)``: ring radius in cycles per image side (0..min(H, W)/2 - 1),
    the real part of the normalised cross-correlation of the two spectra on each ring, and
    the number of Fourier pixels on it (for the threshold curves).
    """
    a, b = np.asarray(image_a), np.asarray(image_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"FRC needs two 2D images of one shape, got {a.shape} and {b.shape}")
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))
    yy, xx = np.indices(a.shape)
    radius = np.round(np.hypot(yy - a.shape[0] // 2, xx - a.shape[1] // 2)).astype(int).ravel()
    rings = min(a.shape) // 2
    inside = radius < rings

    def ring_sum(values):
        return np.bincount(radius[inside], values.ravel()[inside], minlength=rings)

    cross = ring_sum(np.real(fa * np.conj(fb)))
    power = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    pixels = np.bincount(radius[inside], minlength=rings)
    return np.arange(rings), cross / np.maximum(power, 1e-300), pixels


def half_bit_threshold(pixels):
    """The half-bit information threshold for FRC rings of ``pixels`` Fourier pixels (van Heel & Schatz 2005)."""
    root = np.sqrt(np.maximum(pixels, 1))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def frc_resolution(image_a, image_b):
    """First ring (cycles per image side) where the FRC falls below the half-bit threshold; None if never."""
    frequencies, frc, pixels = fourier_ring_correlation(image_a, image_b)
    below = np.flatnonzero(frc[1:] < half_bit_threshold(pixels[1:]))
    return None if below.size == 0 else int(frequencies[1:][below[0]])


def psnr(estimate, truth, region=None):
    """Peak signal-to-noise ratio in dB: ``10 log10(max|truth|^2 / mean |estimate - truth|^2)`` over ``region``."""
    estimate, truth = np.asarray(estimate), np.asarray(truth)
    region = np.ones(truth.shape, bool) if region is None else np.asarray(region, bool)
    mse = np.mean(np.abs(estimate[region] - truth[region]) ** 2)
    return float(10 * np.log10(np.max(np.abs(truth[region])) ** 2 / mse)) if mse > 0 else float('inf')
