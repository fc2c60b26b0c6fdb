"""Ground-truth metric against closed forms."""
import numpy as np
import pytest

from ptypy_npu.metrics import (find_shift, fourier_ring_correlation, frc_between, frc_resolution,
                               half_bit_threshold, illuminated_region, phase_ramp, psnr, registered_error,
                               score_object, shift_image, ssim)
from ptypy_npu.simulate import siemens_star


@pytest.fixture
def truth():
    return siemens_star((96, 96))


def test_find_shift_recovers_a_subpixel_shift(truth):
    moved = shift_image(truth, (2.35, -1.6))
    np.testing.assert_allclose(find_shift(moved, truth), (-2.35, 1.6), atol=0.051)


@pytest.fixture
def region(truth):
    region = np.zeros(truth.shape, bool)
    region[16:80, 16:80] = True
    return region


@pytest.mark.parametrize('transform', [lambda t: 0.37 * np.exp(1.1j) * t,
                                       lambda t: shift_image(t, (1.4, -0.7)),
                                       lambda t: t * phase_ramp(t.shape, (0.05, -0.03))])
def test_registered_error_removes_each_ambiguity_exactly(truth, region, transform):
    assert registered_error(transform(truth), truth, region) < 1e-6


def test_registered_error_removes_all_ambiguities_together(truth, region):
    estimate = 0.37 * np.exp(1.1j) * shift_image(truth, (1.4, -0.7)) * phase_ramp(truth.shape, (0.05, -0.03))
    assert registered_error(estimate, truth, region) < 1e-6


def test_registered_error_of_additive_noise_is_its_relative_norm(truth):
    noise = 0.05 * np.random.default_rng(3).normal(size=truth.shape)
    expected = np.linalg.norm(noise) / np.linalg.norm(truth)
    assert registered_error(truth + noise, truth) == pytest.approx(expected, rel=0.05)


def test_registered_error_refuses_mismatched_shapes(truth):
    with pytest.raises(ValueError, match='one shape'):
        registered_error(truth[:-1], truth)


def test_illuminated_region_covers_the_scanned_area():
    probe = np.ones((1, 4, 4))
    region = illuminated_region(probe, [(0, 0), (0, 4)], (8, 10), threshold=0.5)
    expected = np.zeros((8, 10), bool)
    expected[:4, :8] = True
    np.testing.assert_array_equal(region, expected)


def test_junk_at_the_edge_of_the_region_cannot_bias_the_registration(truth, region):
    """Badly lit edge pixels may hold large random values; the ramp fit must not follow them."""
    rng = np.random.default_rng(4)
    estimate = truth.copy()
    edge = region & ~np.pad(np.ones((56, 56), bool), 20)
    estimate[edge] = 1.5 * np.exp(2j * np.pi * rng.random(edge.sum())) * np.exp(0.3j * np.arange(edge.sum()))
    weights = region.astype(float)
    scale = np.sum(weights * np.conj(estimate) * truth) / np.sum(weights * np.abs(estimate) ** 2)
    unregistered = np.sqrt(np.sum(weights * np.abs(scale * estimate - truth) ** 2) / np.sum(weights * np.abs(truth) ** 2))
    assert registered_error(estimate, truth, region) <= unregistered + 1e-9


def test_a_bright_unlit_border_does_not_capture_the_registration():
    """A drifted scale (object 0.1x where lit, unlit border still at the initial 1; the truth
    known only where lit) must register by the lit part; without the shift limit the border
    wins the correlation (measured 0.24 here; on a low-dose run the peak was 240 px away)."""
    lit, region = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    lit[24:232, 24:232] = True
    region[40:216, 40:216] = True
    truth = np.where(lit, siemens_star((256, 256)), 0)
    estimate = np.where(lit, 0.1 * shift_image(truth, (1.3, -0.6)), 1.0)
    assert registered_error(estimate, truth, region) < 0.05  # measured 0.039: Fourier-shift ringing off the lit edge


def test_find_shift_looks_no_further_than_max_shift(truth):
    moved = shift_image(truth, (-20.0, 3.0))
    assert np.abs(find_shift(moved, truth)[0]) == pytest.approx(20, abs=0.06)
    assert np.abs(find_shift(moved, truth, max_shift=5)).max() <= 5 + 1.5  # + the sub-pixel search window


def test_frc_of_an_image_with_itself_is_one_on_every_ring(truth):
    _, frc, _ = fourier_ring_correlation(np.abs(truth), np.abs(truth))
    np.testing.assert_allclose(frc, 1.0, atol=1e-12)


def test_frc_of_independent_noise_stays_within_three_sigma():
    rng = np.random.default_rng(5)
    _, frc, pixels = fourier_ring_correlation(rng.normal(size=(128, 128)), rng.normal(size=(128, 128)))
    assert np.all(np.abs(frc[2:]) < 3 / np.sqrt(pixels[2:]))  # var(FRC) = 1/n for uncorrelated rings


def test_frc_resolution_of_a_lowpassed_copy_is_its_cut_off():
    """Two images sharing only the frequencies below 20 cycles, independent noise above."""
    rng = np.random.default_rng(6)
    shared = np.fft.fft2(rng.normal(size=(128, 128)))
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(128) * 128, np.fft.fftfreq(128) * 128, indexing='ij'))
    low = np.where(radius < 20, shared, 0)
    a = np.real(np.fft.ifft2(low + np.where(radius >= 20, np.fft.fft2(rng.normal(size=(128, 128))), 0)))
    b = np.real(np.fft.ifft2(low + np.where(radius >= 20, np.fft.fft2(rng.normal(size=(128, 128))), 0)))
    assert frc_resolution(a, b) in (20, 21)


def test_half_bit_threshold_matches_van_heel_and_schatz():
    assert half_bit_threshold(np.array([1e12]))[0] == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    assert half_bit_threshold(np.array([1]))[0] == pytest.approx((0.2071 + 1.9102) / (1.2071 + 0.9102))


def test_psnr_against_its_closed_form(truth):
    noise = 0.01 * np.exp(1j * np.arange(truth.size).reshape(truth.shape))  # |noise| = 0.01 everywhere
    expected = 10 * np.log10(np.max(np.abs(truth)) ** 2 / 1e-4)
    assert psnr(truth + noise, truth) == pytest.approx(expected, rel=1e-9)
    assert psnr(truth, truth) == float('inf')


def test_ssim_of_constant_images_is_its_luminance_closed_form():
    """Flat images have no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2."""
    a, b, data_range = 0.8, 0.5, 1.0
    expected = (2 * a * b + (0.01 * data_range) ** 2) / (a ** 2 + b ** 2 + (0.01 * data_range) ** 2)
    assert ssim(np.full((32, 32), a), np.full((32, 32), b), data_range) == pytest.approx(expected, rel=1e-9)


def test_ssim_is_one_for_identical_images_and_falls_with_noise(truth):
    rng = np.random.default_rng(7)
    amplitude = np.abs(truth)
    scores = [ssim(amplitude + sigma * rng.normal(size=truth.shape), amplitude) for sigma in (0, 0.05, 0.2)]
    assert scores[0] == pytest.approx(1.0, abs=1e-12)
    assert scores[0] > scores[1] > scores[2]


def test_score_object_sees_through_shift_ramp_and_global_factor(truth):
    transformed = 1.7 * np.exp(0.9j) * shift_image(truth, (1.3, -2.4)) * phase_ramp(truth.shape, (0.03, -0.02))
    region = np.zeros(truth.shape, bool)
    region[16:80, 16:80] = True
    scores = score_object(transformed, truth, region)
    assert scores['object_error'] < 2e-3
    assert scores['ssim_amplitude'] > 0.999 and scores['ssim_phase'] > 0.999
    assert scores['psnr_db'] > 50
    assert scores['frc_half_period_px'] == 1.0  # correlated up to Nyquist


def test_frc_between_two_half_reconstructions_finds_their_shared_band():
    """Two 'reconstructions' share the frequencies below 16 cycles and differ above; one is moved and
    rephased. Half-period resolution: 128 / (2 * 16) = 4 px, within a ring either way of the window."""
    rng = np.random.default_rng(8)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(128) * 128, np.fft.fftfreq(128) * 128, indexing='ij'))
    shared = np.where(radius < 16, np.fft.fft2(rng.normal(size=(128, 128))), 0)

    def reconstruction():
        return np.real(np.fft.ifft2(shared + np.where(radius >= 16, np.fft.fft2(rng.normal(size=(128, 128))), 0)))

    a = reconstruction()
    b = np.exp(0.4j) * shift_image(reconstruction(), (2.0, -3.0))
    assert 128 / (2 * 17) <= frc_between(a, b, np.ones((128, 128), bool)) <= 128 / (2 * 15)
