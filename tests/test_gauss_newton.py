"""The written-out Gauss-Newton product of the data term against finite differences of a numpy forward
model, and its Hutchinson estimate against the exact diagonal."""
import numpy as np
import pytest
from mindspore import Tensor

from ptypy_npu.objective import GaussNewtonProduct, PhysicsObjective, parameter_pair
from ptypy_npu.physics import LOSS_CURVATURE, centred_fft_factors
from ptypy_npu.simulate import far_field_intensity

RNG = np.random.default_rng(11)
H, SIDE = 8, 12
POSITIONS = np.array([[0, 0], [3, 4]])
INDICES = ((POSITIONS[:, 0, None, None] + np.arange(H)[None, :, None]) * SIDE
           + POSITIONS[:, 1, None, None] + np.arange(H)[None, None, :]).astype(np.int32)


def problem(loss):
    obj = 1 + 0.3 * RNG.normal(size=(SIDE, SIDE)) + 0.3j * RNG.normal(size=(SIDE, SIDE))
    probe = (RNG.normal(size=(1, H, H)) + 1j * RNG.normal(size=(1, H, H))) * 3
    measured = RNG.poisson(far_field_intensity(probe, obj.ravel()[INDICES]) * 1.3).astype(np.float32)
    mask = (RNG.uniform(size=measured.shape) > 0.1).astype(np.float32)
    objective = PhysicsObjective(parameter_pair(obj.reshape(-1), 'o'), parameter_pair(probe, 'p'),
                                 centred_fft_factors((H, H)), loss)
    return obj, probe, measured, mask, objective


def flat(obj, probe):
    """The real parameter vector (object re, im, probe re, im) as the product orders it."""
    return np.concatenate([obj.real.ravel(), obj.imag.ravel(), probe.real.ravel(), probe.imag.ravel()])


def unflat(theta, probe_shape):
    n = SIDE * SIDE
    obj = (theta[:n] + 1j * theta[n:2 * n]).reshape(SIDE, SIDE)
    m = int(np.prod(probe_shape))
    return obj, (theta[2 * n:2 * n + m] + 1j * theta[2 * n + m:]).reshape(probe_shape)


def model_intensities(theta, probe_shape):
    obj, probe = unflat(theta, probe_shape)
    return far_field_intensity(probe, obj.ravel()[INDICES])


def product(cell, vector, measured, mask, probe_shape):
    """G v from the written-out product (a GaussNewtonProduct ``cell``), as a flat vector."""
    n = SIDE * SIDE
    m = int(np.prod(probe_shape))
    parts = [vector[:n], vector[n:2 * n], vector[2 * n:2 * n + m].reshape(probe_shape),
             vector[2 * n + m:].reshape(probe_shape)]
    cell.set_vectors([Tensor(p.astype(np.float32)) for p in parts])
    out = cell(Tensor(np.zeros((2, 1, H, H), np.float32)), Tensor(measured), Tensor(mask), Tensor(INDICES))
    return np.concatenate([o.asnumpy().ravel() for o in out]).astype(np.float64)


@pytest.mark.parametrize('loss', ['gaussian', 'poisson'])
def test_gauss_newton_product_matches_finite_differences(loss):
    """<u, G v> = 2 sum mask (J_A u)(J_A v) (Gaussian, A the model amplitudes) or
    sum mask (J_I u)(J_I v) / I (Poisson, I the intensities), J by central differences in numpy."""
    obj, probe, measured, mask, objective = problem(loss)
    theta = flat(obj, probe)
    u, v = RNG.normal(size=(2, theta.size))
    h = 1e-5

    def derivative(direction, function):
        return (function(theta + h * direction) - function(theta - h * direction)) / (2 * h)

    intensity = model_intensities(theta, probe.shape)
    if loss == 'gaussian':
        def measure(t):
            return np.sqrt(model_intensities(t, probe.shape))
        expected = 2 * np.sum(mask * derivative(u, measure) * derivative(v, measure))
    else:
        def measure(t):
            return model_intensities(t, probe.shape)
        expected = np.sum(mask * derivative(u, measure) * derivative(v, measure) / intensity)
    cell = GaussNewtonProduct(objective)
    ours = float(u @ product(cell, v, measured, mask, probe.shape))
    assert ours == pytest.approx(expected, rel=2e-3)
    symmetric = float(v @ product(cell, u, measured, mask, probe.shape))
    assert symmetric == pytest.approx(ours, rel=2e-3)


def test_hutchinson_mean_of_the_gauss_newton_product_approaches_its_exact_diagonal():
    """Exact diagonal: G's columns e_i one by one; the Hutchinson mean of v * G v over 400 Rademacher
    draws lands within 4 standard errors of it (the draws' own spread)."""
    obj, probe, measured, mask, objective = problem('gaussian')
    size, cell = flat(obj, probe).size, GaussNewtonProduct(objective)
    exact = np.array([product(cell, np.eye(1, size, i)[0], measured, mask, probe.shape)[i] for i in range(size)])
    draws = np.array([v * product(cell, v, measured, mask, probe.shape)
                      for v in RNG.choice([-1.0, 1.0], size=(400, size))])
    mean, error = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    lit = exact > 1e-3 * exact.max()
    assert np.all(np.abs(mean - exact)[lit] <= 4 * error[lit] + 1e-4 * exact.max())
    assert np.all(exact >= -1e-6 * exact.max())  # positive semi-definite: a non-negative diagonal


@pytest.mark.parametrize('loss', ['gaussian', 'poisson'])
def test_exact_gauss_newton_diagonal_is_half_the_loss_curvature_times_the_illumination_on_average(loss):
    """What AdaHessian's image variant takes where no refresh has measured the curvature: per object pixel,
    ``LOSS_CURVATURE / 2 * sum_j |P|^2`` for each of re and im. A unitary propagator spreads a pixel over
    every detector pixel, and the model's phase there splits it between re and im (cos^2 and sin^2):
    their exact diagonals (columns e_i; one probe mode, no mask) sum to ``LOSS_CURVATURE * sum_j |P|^2``
    exactly, and each part lies near half of it (measured 0.72-1.28 of it where well lit)."""
    obj, probe, measured, mask, objective = problem(loss)
    mask = np.ones_like(mask)
    size, cell = flat(obj, probe).size, GaussNewtonProduct(objective)
    n = SIDE * SIDE
    exact = np.array([product(cell, np.eye(1, size, i)[0], measured, mask, probe.shape)[i] for i in range(2 * n)])
    illumination = np.zeros(n)
    np.add.at(illumination, INDICES.ravel(), np.tile(np.sum(np.abs(probe) ** 2, axis=0).ravel(), len(INDICES)))
    expected = 0.5 * LOSS_CURVATURE[loss] * illumination
    np.testing.assert_allclose(exact[:n] + exact[n:], 2 * expected, rtol=1e-3, atol=1e-4 * expected.max())
    lit = np.concatenate([expected, expected]) > 0.2 * expected.max()
    ratio = exact[lit] / np.concatenate([expected, expected])[lit]
    assert np.all((ratio > 0.6) & (ratio < 1.4))
