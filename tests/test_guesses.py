"""Probe guesses from the data against what the simulation knows."""
import numpy as np
import pytest

from ptypy_npu.guesses import defocus_candidates, pupil_amplitude, rms_radius, scan_step
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
