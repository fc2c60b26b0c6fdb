"""Ground-truth metrics for reconstructions (numpy only; PtyPy has none).

Ptychography determines the object only up to a global complex factor, a sub-pixel
shift and a linear phase ramp (probe and object trade them). :func:`registered_error`
removes all of them before comparing with the truth.
"""
import numpy as np

from .scan import illumination

#: Alternations of phase-ramp removal and shift registration in :func:`registered_error`.
REGISTRATION_ROUNDS = 3
#: Width (px) of the taper to zero at the edge of the region an FRC compares.
FRC_TAPER_PX = 8.0
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


def align(estimate, truth, region=None, upsample=20):
    """``estimate`` moved onto ``truth``: ``c T(estimate)``, complex (H, W), and its error.

    T removes the sub-pixel shift (found by correlating with the truth over ``region``, up to
    :data:`REGISTRATION_MAX_SHIFT` px) and the linear phase ramp, and c is the best global
    complex factor (global phase and the probe/object scale). ``estimate`` and ``truth`` are
    complex (H, W) on the same pixel grid; ``region`` is a bool (H, W) of the pixels to score
    (e.g. :func:`illuminated_region`), default all. Returns ``(aligned, error)`` with the
    normalised RMS error ``||aligned - truth|| / ||truth||`` over ``region``.
    """
    estimate = np.asarray(estimate, dtype=complex)
    truth = np.asarray(truth, dtype=complex)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate {estimate.shape} and truth {truth.shape} must have one shape")
    region = np.ones(truth.shape, bool) if region is None else np.asarray(region, bool)
    weights = region.astype(float)

    def centred(image):
        return image - np.sum(image * weights) / weights.sum()

    def aligned_and_error(shift, slopes):
        aligned = shift_image(estimate * np.conj(phase_ramp(truth.shape, slopes)), shift)
        aligned = aligned * np.sum(weights * np.conj(aligned) * truth) / np.sum(weights * np.abs(aligned) ** 2)
        residual = weights * np.abs(aligned - truth) ** 2
        return aligned, float(np.sqrt(residual.sum() / np.sum(weights * np.abs(truth) ** 2)))

    # Only the truth is windowed: a window on both sides would correlate best with itself, at zero
    # shift. A ramp blurs the correlation peak and a shift biases the ramp, so the two are refined in
    # turn, the shift always applied to the ramp-free estimate (a shifted ramp rings at the edges).
    # The error is a minimum over these transformations, so every candidate may be tried: each round
    # keeps the better of its ramp fit and no further ramp (badly lit edge pixels with large junk
    # amplitudes can pull the fit away).
    slopes = np.zeros(2)
    best = aligned_and_error(np.zeros(2), slopes)  # the identity is one of the transformations
    for _ in range(REGISTRATION_ROUNDS):
        deramped = estimate * np.conj(phase_ramp(truth.shape, slopes))
        shift = find_shift(centred(deramped), centred(truth) * weights, upsample, REGISTRATION_MAX_SHIFT)
        candidates = [slopes, slopes + phase_ramp_slopes(shift_image(deramped, shift), truth, weights)]
        scored = [(aligned_and_error(shift, c), k) for k, c in enumerate(candidates)]
        (aligned, error), k = min(scored, key=lambda item: item[0][1])
        slopes = candidates[k]
        best = min(best, (aligned, error), key=lambda item: item[1])
    return best


def registered_error(estimate, truth, region=None, upsample=20):
    """Normalised RMS error of ``estimate`` against ``truth`` after :func:`align`."""
    return align(estimate, truth, region, upsample)[1]


def illuminated_region(probe, positions, object_shape, threshold=0.1):
    """Object pixels whose summed probe intensity reaches ``threshold`` of its maximum.

    probe (M, H, W) or (H, W) complex; positions (N, 2) top-left object pixels.
    """
    total = illumination(probe, positions, object_shape)
    return total >= threshold * total.max()


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


def bounding_square(region):
    """Slices (rows, cols) of the largest square centred in the bounding box of bool ``region`` (H, W)."""
    rows, cols = np.flatnonzero(np.any(region, 1)), np.flatnonzero(np.any(region, 0))
    if rows.size == 0:
        raise ValueError("the scored region is empty")
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = min(height, width)
    top, left = rows[0] + (height - side) // 2, cols[0] + (width - side) // 2
    return np.s_[top:top + side, left:left + side]


def ssim(image, reference, data_range=None):
    """Structural similarity (Wang et al., IEEE TIP 13, 600 (2004)) of two real (H, W) images.

    scikit-image's implementation with the paper's settings: Gaussian window of sigma 1.5 px,
    K1 = 0.01, K2 = 0.03, population covariances; ``data_range`` defaults to the
    reference's peak-to-peak value. 1 for identical images.
    """
    from skimage.metrics import structural_similarity
    reference = np.asarray(reference, float)
    data_range = float(np.ptp(reference)) if data_range is None else data_range
    return float(structural_similarity(np.asarray(image, float), reference, data_range=data_range,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def frc_half_period(image_a, image_b, region=None):
    """Half-period resolution (px) of two square (S, S) images by FRC with the half-bit threshold.

    Both are windowed against edge artefacts: a Hann window times a taper that falls smoothly
    (sin^2 over :data:`FRC_TAPER_PX`) to zero at the edge of ``region`` (bool (S, S), the pixels
    to compare, default all), so unlit junk at a reconstruction's edge never enters and the
    region's outline adds no shared edge; each image's weighted mean is removed first. The ring
    k where the FRC first falls below the threshold gives ``S / (2 k)`` px, and 1 px (Nyquist)
    if it never does.
    """
    from scipy.ndimage import distance_transform_edt
    side = image_a.shape[0]
    if image_a.shape != (side, side) or image_b.shape != image_a.shape:
        raise ValueError(f"FRC resolution needs two square images of one shape, got {image_a.shape}, {image_b.shape}")
    window = np.outer(np.hanning(side), np.hanning(side))
    if region is not None:
        inside = distance_transform_edt(np.asarray(region, bool))  # px to the nearest pixel outside
        window = window * np.sin(0.5 * np.pi * np.clip((inside - 1) / FRC_TAPER_PX, 0, 1)) ** 2

    def windowed(image):
        return window * (image - np.sum(window * image) / np.sum(window))

    ring = frc_resolution(windowed(image_a), windowed(image_b))
    return 1.0 if ring is None else side / (2.0 * ring)


def score_object(estimate, truth, region):
    """Ground-truth scores of a reconstruction ``estimate`` (H, W) of ``truth`` over bool ``region``.

    After :func:`align`: ``object_error`` (normalised RMS), ``psnr_db`` over the region, and, on
    the square of :func:`bounding_square`, ``ssim_amplitude`` and ``ssim_phase`` (rad images)
    and ``frc_half_period_px`` (FRC of the aligned estimate against the truth).
    """
    aligned, error = align(estimate, truth, region)
    square = bounding_square(region)
    estimate_crop, truth_crop = aligned[square], np.asarray(truth)[square]
    return {'object_error': error, 'psnr_db': psnr(aligned, truth, region),
            'ssim_amplitude': ssim(np.abs(estimate_crop), np.abs(truth_crop)),
            'ssim_phase': ssim(np.angle(estimate_crop), np.angle(truth_crop)),
            'frc_half_period_px': frc_half_period(estimate_crop, truth_crop, np.asarray(region)[square])}


def frc_between(reconstruction_a, reconstruction_b, region):
    """Half-period resolution (px) by FRC of two independent reconstructions (H, W) of one object.

    ``reconstruction_b`` is aligned onto ``reconstruction_a`` (shift, phase ramp, complex factor)
    over bool ``region`` first; then :func:`frc_half_period` on the square of :func:`bounding_square`.
    With reconstructions from two disjoint halves of the frames this scores real data, where
    no truth is known.
    """
    aligned, _ = align(reconstruction_b, reconstruction_a, region)
    square = bounding_square(region)
    return frc_half_period(np.asarray(reconstruction_a)[square], aligned[square], np.asarray(region)[square])
