"""Probe guesses from the data against what the simulation knows."""
import numpy as np
import pytest

from ptypy_npu.guesses import (ESTIMATE_REGULARISATION, defocus_candidates, patch_estimates, propagate,
                               pupil_amplitude, rms_radius, scan_step)
from ptypy_npu.simulate import focused_probe, simulate_scan


def test_scan_step_is_the_median_nearest_neighbour_distance():
    positions = np.array([[0, 0], [0, 3], [4, 0], [4, 3], [20, 20]])
    assert scan_step(positions) == pytest.approx(3.0)  # 3, 3, 3, 3 and 16.03 to their nearest
    with pytest.raises(ValueError, match='fewer than two'):
        scan_step(positions[:1])


def test_rms_radius_of_a_uniform_disc_is_its_radius_over_root_two():
    yy, xx = np.indices((128, 128)) - 63.5
    assert rms_radius((np.hypot(yy, xx) <= 20).astype(complex)) == pytest.approx(20 / np.sqrt(2), rel=0.02)


def test_defocus_guesses_carry_the_photons_and_the_size_the_scan_asks_for():
    data, _ = simulate_scan(frame_size=64, count=80, photons=1e6, seed=4)
    candidates = defocus_candidates(data.intensities, data.positions)
    step = scan_step(data.positions)
    for probe in candidates:
        assert np.sum(np.abs(probe) ** 2) == pytest.approx(data.intensities.sum((1, 2)).mean(), rel=1e-4)  # Parseval
        assert rms_radius(probe) == pytest.approx(step, rel=0.1)
    # the two signs: mirror curvatures, one far field
    far = [np.abs(np.fft.fft2(np.fft.ifftshift(p[0]))) for p in candidates]
    np.testing.assert_allclose(far[0], far[1], rtol=1e-4, atol=1e-4 * far[0].max())
    assert not np.allclose(candidates[0], candidates[1])


def test_the_pupil_amplitude_is_the_probes_far_field_for_a_flat_object():
    probe = focused_probe(32)[0] * 10
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe), norm='ortho'))
    frames = np.repeat(np.abs(far)[None] ** 2, 3, axis=0)
    mask = np.ones(frames.shape, bool)
    mask[:, 5, 7] = False  # a dead pixel takes the mean of the valid frames (here: none)
    amplitude = pupil_amplitude(frames, mask)
    np.testing.assert_allclose(np.delete(amplitude.ravel(), 5 * 32 + 7), np.delete(np.abs(far).ravel(), 5 * 32 + 7),
                               rtol=1e-6, atol=1e-9)


def centred_dft(psi):
    """The unitary 2-D DFT with zero frequency and the origin at the frame centre, as a matrix product."""
    n = psi.shape[-1]
    k = np.arange(n) - n // 2
    matrix = np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)
    return matrix @ psi @ matrix.T


def test_propagation_is_the_centred_dft_or_ptypys_factored_fft_and_inverts():
    rng = np.random.default_rng(1)
    psi = rng.normal(size=(2, 16, 16)) + 1j * rng.normal(size=(2, 16, 16))
    np.testing.assert_allclose(propagate(psi), centred_dft(psi), atol=1e-12)
    pre, post = np.exp(1j * rng.uniform(0, 6, (16, 16))), np.exp(1j * rng.uniform(0, 6, (16, 16)))
    np.testing.assert_allclose(propagate(psi, (pre, post)), post * np.fft.fft2(pre * psi) / 16, atol=1e-12)
    for factors in (None, (pre, post)):
        np.testing.assert_allclose(propagate(propagate(psi, factors), factors, inverse=True), psi, atol=1e-12)


def test_patch_estimates_of_a_flat_object_are_one_whatever_the_probe_units():
    probe = focused_probe(32)
    frames = np.abs(propagate(np.repeat(probe, 3, axis=0))) ** 2 * 1e4
    np.testing.assert_allclose(patch_estimates(frames, probe * 1e-3), 1.0, atol=1e-5)


def test_patch_estimate_of_a_weak_object_is_half_its_departure_plus_the_twin():
    """First order in d for O = 1 + d: with A = F(P), u = A / |A| (0 where A is), B = F(P d), the measured
    amplitude is |A| + Re(conj(u) B), so the estimate departs by
    conj(P) F^-1[|u|^2 B + u^2 conj(B)] / 2 / (|P|^2 + r max|P|^2): half the object, plus its twin.
    (d has no mean departure, so the photon rescaling is exact; the frames are the first-order ones, as
    the focused probe's band-limited far field has zeros, where the expansion does not hold.)"""
    rng = np.random.default_rng(2)
    probe = focused_probe(32)[0] * 30
    power = np.abs(probe) ** 2
    d = 1e-4 * (rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32)))
    d -= np.sum(power * d.real) / np.sum(power)
    far = propagate(probe)
    u = np.where(np.abs(far) > 0, far / np.maximum(np.abs(far), 1e-300), 0)
    scattered = propagate(probe * d)
    frames = (np.abs(far) + (np.conj(u) * scattered).real) ** 2
    halves = propagate(np.abs(u) ** 2 * scattered + u ** 2 * np.conj(scattered), inverse=True) / 2
    expected = np.conj(probe) * halves / (power + ESTIMATE_REGULARISATION * power.max())
    estimate = patch_estimates(frames[None], probe[None])[0]
    np.testing.assert_allclose(estimate - 1, expected, atol=1e-3 * np.abs(expected).max())  # second order: d^2
