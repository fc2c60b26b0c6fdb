"""Optimizers against numpy implementations of their papers, HVPs against finite differences."""
import dataclasses

import numpy as np
import mindspore as ms
import pytest
from mindspore import Parameter, Tensor, nn, ops
from scipy.optimize import minimize

from helpers import PHYSICS_ONLY, SMALL_NETWORK, make_solver

from ptypy_npu import checkpoints, plugins, settings
from ptypy_npu.plugins import build_solver
from ptypy_npu.optim import AdaHessian, AdamW, HessianVectorProduct, Lion
from ptypy_npu.objective import PhysicsObjective, parameter_pair
from ptypy_npu.physics import centred_fft_factors
from ptypy_npu.step import COUPLING_DAMPING, MAX_STEP_LENGTH, Update, diagonal_estimate, regularisation_parameter
from ptypy_npu.simulate import simulate_scan

RNG = np.random.default_rng(5)
SHAPES = [(3, 2, 3, 3), (4, 5)]  # a convolution kernel and a matrix


def parameters(values):
    return [Parameter(Tensor(v.astype(np.float32)), name=f'p{k}') for k, v in enumerate(values)]


def run_steps(optimizer, params, gradient_sequence, before_step=None):
    for t, grads in enumerate(gradient_sequence):
        if before_step is not None:
            before_step(t)
        optimizer(tuple(Tensor(g.astype(np.float32)) for g in grads))
    return [p.asnumpy() for p in params]


@pytest.fixture
def problem():
    start = [RNG.normal(size=s) for s in SHAPES]
    grads = [[RNG.normal(size=s) for s in SHAPES] for _ in range(6)]
    return start, grads


def test_lion_matches_the_paper(problem):
    start, grads = problem
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.1
    params = parameters(start)
    ours = run_steps(Lion(params, lr, (b1, b2), wd), params, grads)
    for k, p in enumerate(start):
        m = np.zeros_like(p)
        for step in grads:
            g = step[k]
            p = p - lr * (np.sign(b1 * m + (1 - b1) * g) + wd * p)
            m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(ours[k], p, rtol=1e-5, atol=1e-6)


def test_lazy_lion_leaves_elements_without_gradient_alone(problem):
    """Sparse gradients (object pixels no frame lit): zero-gradient elements keep value and moment."""
    start, grads = problem
    masks = [[RNG.random(size=s) < 0.5 for s in SHAPES] for _ in grads]
    sparse = [[g * mask for g, mask in zip(step, step_masks)] for step, step_masks in zip(grads, masks)]
    lr, (b1, b2), wd = 0.01, (0.9, 0.95), 0.1
    params = parameters(start)
    ours = run_steps(Lion(params, lr, (b1, b2), wd, lazy=True), params, sparse)
    for k, p in enumerate(start):
        m = np.zeros_like(p)
        for step in sparse:
            g = step[k]
            lit = g != 0
            p = np.where(lit, p - lr * (np.sign(b1 * m + (1 - b1) * g) + wd * p), p)
            m = np.where(lit, b2 * m + (1 - b2) * g, m)
        np.testing.assert_allclose(ours[k], p, rtol=1e-5, atol=1e-6)


def adam_reference(p, grads_k, curvatures_k, lr, b1, b2, eps, wd, power):
    m = np.zeros_like(p)
    s = np.zeros_like(p)
    for t, (g, c) in enumerate(zip(grads_k, curvatures_k), start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * c * c
        p = p - lr * (m / (1 - b1 ** t)) / ((s / (1 - b2 ** t)) ** (power / 2) + eps) - lr * wd * p
    return p


def test_adamw_matches_the_paper_with_bias_correction_and_decoupled_decay(problem):
    start, grads = problem
    params = parameters(start)
    ours = run_steps(AdamW(params, 0.01, (0.9, 0.999), 1e-8, 0.05), params, grads)
    for k, p in enumerate(start):
        gk = [step[k] for step in grads]
        np.testing.assert_allclose(ours[k], adam_reference(p, gk, gk, 0.01, 0.9, 0.999, 1e-8, 0.05, 1.0),
                                   rtol=1e-5, atol=1e-6)


def test_adahessian_matches_the_paper_with_kernel_averaging_and_hessian_power(problem):
    start, grads = problem
    hvps = [[RNG.normal(size=s) for s in SHAPES] for _ in grads]
    probes = [[RNG.choice([-1.0, 1.0], size=s) for s in SHAPES] for _ in grads]
    params = parameters(start)
    optimizer = AdaHessian(params, 0.05, (0.9, 0.99), 1e-4, 0.01, hessian_power=0.5)

    def refresh(t):
        optimizer.refresh_hessian([diagonal_estimate(Tensor(h.astype(np.float32)), Tensor(v.astype(np.float32)))
                                   for h, v in zip(hvps[t], probes[t])])

    ours = run_steps(optimizer, params, grads, before_step=refresh)
    for k, p in enumerate(start):
        diagonals = []
        for t in range(len(grads)):
            d = np.abs(hvps[t][k] * probes[t][k])
            if d.ndim == 4:  # spatial averaging over the kernel window
                d = np.broadcast_to(d.mean(axis=(2, 3), keepdims=True), d.shape)
            diagonals.append(d)
        expected = adam_reference(p, [step[k] for step in grads], diagonals, 0.05, 0.9, 0.99, 1e-4, 0.01, 0.5)
        np.testing.assert_allclose(ours[k], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('hessian_power, curvature', [(1.0, 'gauss_newton'), (0.5, 'gauss_newton'),
                                                      (0.5, 'illumination')])
def test_lazy_adahessian_moves_each_complex_pixel_on_its_own_count(hessian_power, curvature):
    """The image variant on (real, imaginary) pairs: a complex pixel's moments and bias corrections advance
    only when its gradient is non-zero in either part; the pair shares one curvature (the mean of its parts'
    estimates), its second moment and corrections, and each part keeps its first moment; measured
    curvatures persist where a refresh saw nothing, and the closed-form curvature stands in where none was
    measured yet (with ``curvature='illumination'`` it is the curvature: nothing is measured);
    ``regularisation`` adds its multiple of the largest curvature; the optimizer then steps along the
    directions ``precondition`` made (here scaled by a step length of 0.7)."""
    shapes = [(6, 7), (6, 7), (2, 3, 3), (2, 3, 3)]  # two complex images as (re, im) pairs
    start = [RNG.normal(size=s) for s in shapes]
    grads = [[RNG.normal(size=s) * (RNG.random(size=s) < 0.6) for s in shapes] for _ in range(6)]
    seen = [[RNG.random(size=s) < 0.3 for s in shapes[0::2]] for _ in grads]
    measured = [[mask * RNG.uniform(0.5, 2.0, size=mask.shape) * (curvature == 'gauss_newton')
                 for mask in masks for _ in range(2)] for masks in seen]
    expected = [[RNG.uniform(0.5, 2.0, size=s) for s in shapes[0::2]] for _ in grads]
    lr, (b1, b2), eps, delta, decay, length = 0.05, (0.5, 0.9), 1e-4, 0.1, 0.01, 0.7
    params = parameters(start)
    optimizer = AdaHessian(params, lr, (b1, b2), eps, decay, hessian_power, lazy=True, curvature=curvature,
                           regularisation=delta, step_lengths=True)
    assert optimizer.needs_hessian == (curvature == 'gauss_newton')  # whether the solver refreshes it
    for t, step in enumerate(grads):
        if optimizer.needs_hessian:
            optimizer.refresh_hessian([Tensor(d.astype(np.float32)) for d in measured[t]])
        directions = optimizer.precondition(tuple(Tensor(g.astype(np.float32)) for g in step),
                                            tuple(Tensor(e.astype(np.float32)) for e in expected[t]))
        optimizer(tuple(d * length for d in directions))
    for k in (0, 1):
        pair = start[2 * k:2 * k + 2]
        m, s, count, stored = [np.zeros_like(pair[0])] * 2, *(np.zeros_like(pair[0]) for _ in range(3))
        for t, step in enumerate(grads):
            new = (measured[t][2 * k] + measured[t][2 * k + 1]) / 2
            stored = np.where(new > 0, new, stored)
            moving = (step[2 * k] != 0) | (step[2 * k + 1] != 0)
            count = count + moving
            diagonal = np.where(stored > 0, stored, expected[t][k])
            curvature = diagonal + delta * diagonal.max()
            s = np.where(moving, b2 * s + (1 - b2) * curvature ** 2, s)
            n = np.maximum(count, 1)
            root = (s / (1 - b2 ** n)) ** (hessian_power / 2)
            m = [np.where(moving, b1 * m[j] + (1 - b1) * step[2 * k + j], m[j]) for j in (0, 1)]
            pair = [np.where(moving, p - lr * length * ((m[j] / (1 - b1 ** n)) / (root + eps) + decay * p), p)
                    for j, p in enumerate(pair)]
        for j in (0, 1):
            np.testing.assert_allclose(params[2 * k + j].asnumpy(), pair[j], rtol=1e-4, atol=1e-6)


def test_lazy_adahessian_takes_real_and_imaginary_pairs():
    with pytest.raises(ValueError, match=r"lazy=True is AdaHessian's image variant, for complex images as "
                                         r"\(real, imaginary\) pairs of equal shape"):
        AdaHessian(parameters([np.ones((4, 5)), np.ones((4, 6))]), lazy=True, curvature='gauss_newton')
    with pytest.raises(ValueError, match="curvature 'illumination' is the image variant's"):
        AdaHessian(parameters([np.ones((4, 5)), np.ones((4, 5))]), curvature='illumination')


@pytest.mark.parametrize('curvature', ['gauss_newton', 'illumination'])
def test_the_step_preconditions_unmeasured_pixels_with_the_expected_gauss_newton_curvature(curvature):
    """Before any refresh, a lazy AdaHessian's first direction is ``g / (E + delta max E)^k`` where the
    gradient is non-zero (bias-corrected moments of one step: m^ = g, s^ = curvature^2) and 0 elsewhere,
    with E half the loss curvature times the batch's illumination (object) or patch power (each probe
    mode); and when only the object's optimizer takes step lengths, it gets its 1-D optimum u / a."""
    side, h, modes, delta, power = 12, 8, 2, 0.1, 0.5
    objective = PhysicsObjective(parameter_pair(np.ones(side * side, complex), 'o'),
                                 parameter_pair(np.ones((modes, h, h), complex), 'p'), centred_fft_factors((h, h)),
                                 'gaussian')

    def adahessian(params, step_lengths=True):
        return AdaHessian(params, 1.0, (0.5, 0.9), 1e-12, hessian_power=power, lazy=True, curvature=curvature,
                          regularisation=delta, step_lengths=step_lengths)
    update = Update(objective, (adahessian([objective.object_re, objective.object_im]),
                                adahessian([objective.probe_re, objective.probe_im]), None),
                    regularisation_parameter(0.5), 2.0)
    grads = [RNG.normal(size=s) * (RNG.random(size=s) < 0.7) for s in [(side * side,)] * 2 + [(modes, h, h)] * 2]
    illumination, patch_power = RNG.uniform(0.5, 3.0, size=side * side), RNG.uniform(0.5, 3.0, size=(h, h))
    directions = update.directions(tuple(Tensor(g.astype(np.float32)) for g in grads),
                                   Tensor(illumination.astype(np.float32)), Tensor(patch_power.astype(np.float32)),
                                   Tensor(np.float32(1.0)))
    object_curvature = illumination + delta * illumination.max()  # E = 2 / 2 * illumination
    probe_curvature = np.broadcast_to(patch_power + delta * patch_power.max(), (modes, h, h))
    for direction, grad, diagonal in zip(directions, grads, [object_curvature] * 2 + [probe_curvature] * 2):
        np.testing.assert_allclose(direction.asnumpy(), grad / diagonal ** power, rtol=1e-5, atol=1e-7)
    one_sided = Update(objective, (adahessian([objective.object_re, objective.object_im]),
                                   AdaHessian([objective.probe_re, objective.probe_im], 0.1), None),
                       regularisation_parameter(0.5), 2.0)
    object_length, probe_length = one_sided.lengths(Tensor(np.array([2.0, 0.5, 3.0, 1.5, 7.0], np.float32)))
    assert float(object_length.asnumpy()) == pytest.approx(1.5 / 2.0, rel=1e-4) and probe_length == 1.0


def sgd_update():
    """The step of a small objective whose object and probe both take sgd with step lengths."""
    objective = PhysicsObjective(parameter_pair(np.ones(16, complex), 'o'),
                                 parameter_pair(np.ones((1, 4, 4), complex), 'p'), centred_fft_factors((4, 4)),
                                 'gaussian')
    sgd = plugins.optimizer_factory('sgd')
    return Update(objective, (sgd([objective.object_re, objective.object_im], 1.0),
                              sgd([objective.probe_re, objective.probe_im], 1.0), None),
                  regularisation_parameter(0.5), 2.0)


@pytest.mark.parametrize('terms', [
    (2.0, 0.5, 3.0, 1.5, 7.0),     # the optimum inside the quadrant
    (3.0, -1.0, 1.0, 2.0, -0.5),   # inside, with a negative coupling and v < 0
    (2.0, 1.8, 3.0, 0.2, 4.0),     # the unconstrained object length is negative: the probe's edge
    (3.0, 1.0, 1.0, 2.0, -0.5),    # the unconstrained probe length is negative: the object's edge
    (1.0, -0.9, 1.0, 0.1, -1.0),   # both unconstrained lengths negative, u > 0: the object's edge
    (1.0, 0.9, 1.0, -0.1, -0.2),   # u, v <= 0: no step
    (1.0, 0.0, 4.0, 1.0, 2.0),     # uncoupled: the two 1-D optima
    (2.0, 2.0, 2.0, 2.0, 2.0),     # singular (one frame's collinear steps): an even split
    (1e-3, 0.0, 1.0, 1.0, 0.1),    # beyond the longest step
])
def test_step_lengths_minimise_the_damped_quadratic_model_over_non_negative_lengths(terms):
    """The lengths minimise ``q(x) = x.A x / 2 - (u, v).x`` over x >= 0, A = [[a, s b], [s b, d]] with
    s = 1 - COUPLING_DAMPING, and are clipped to MAX_STEP_LENGTH; the reference is scipy's bounded minimiser."""
    a, b, d, u, v = terms
    update = sgd_update()
    matrix = np.array([[a, (1 - COUPLING_DAMPING) * b], [(1 - COUPLING_DAMPING) * b, d]])
    reference = minimize(lambda x: x @ matrix @ x / 2 - x @ (u, v), np.ones(2), jac=lambda x: matrix @ x - (u, v),
                         bounds=[(0, None)] * 2, method='L-BFGS-B', options={'ftol': 1e-15, 'gtol': 1e-12}).x
    lengths = [float(x.asnumpy()) for x in update.lengths(Tensor(np.array(terms, np.float32)))]
    np.testing.assert_allclose(lengths, np.minimum(reference, MAX_STEP_LENGTH), rtol=1e-4, atol=1e-6)
    if terms == (2.0, 2.0, 2.0, 2.0, 2.0):
        assert lengths == pytest.approx([1 / (2 - COUPLING_DAMPING)] * 2, rel=1e-5)


def test_step_lengths_with_the_probe_held_still_are_the_objects_1d_optimum():
    """While the probe is held (``probe_on`` 0: its direction, and so d, b and v, are zero) the object takes
    u / a and the probe 0, the system kept regular by its tiny diagonal term."""
    update = sgd_update()
    lengths = [float(x.asnumpy()) for x in update.lengths(Tensor(np.array([2.0, 0.0, 0.0, 1.5, 0.0], np.float32)))]
    assert lengths == pytest.approx([0.75, 0.0], rel=1e-5, abs=1e-9)


def test_the_image_adahessian_is_refused_on_the_network_by_name():
    """Its construct moves along directions the step makes for the object and probe only: on the network it
    would be plain SGD."""
    data, _ = simulate_scan(frame_size=32, count=16, photons=1e5)
    chosen = settings.make({**SMALL_NETWORK, 'network_update.optimizer': 'adahessian'})
    chosen.network_update = dataclasses.replace(chosen.network_update, options={'lazy': True})
    with pytest.raises(ValueError, match="network_update.options: lazy=True is AdaHessian's image variant"):
        build_solver(data, chosen)


def test_the_networks_adahessian_measures_its_curvature_on_its_phases_first_step():
    """The network joins at epoch 1, between refreshes (interval 1000): it refreshes first anyway, and
    its diagonal is measured (non-zero) before it ever steps, so no step divides by ``eps``."""
    data, _ = simulate_scan(frame_size=32, count=16, photons=1e5)
    solver = make_solver(data, {**SMALL_NETWORK, 'network_update.optimizer': 'adahessian', 'network.start': 1,
                                'hessian_interval': 1000, 'batch_size': 4})
    network_optimizer = solver.optimizers[2]
    solver.run(1)
    assert all(float(np.abs(d.asnumpy()).max()) == 0 for d in network_optimizer.hessian_diagonal)
    solver.run(1)
    assert all(float(np.abs(d.asnumpy()).max()) > 0 for d in network_optimizer.hessian_diagonal)
    assert solver.steps_taken == 8  # no refresh on steps 4-7 but the phase's first


def test_mindspore_adam_through_the_hook_matches_kingma_and_ba(problem):
    """MindSpore's Adam uses the paper's efficient form: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)."""
    start, grads = problem
    params = parameters(start)
    ours = run_steps(plugins.optimizer_factory('adam')(params, 0.01), params, grads)
    for k, p in enumerate(start):
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, step in enumerate(grads, start=1):
            g = step[k]
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(ours[k], p, rtol=1e-4, atol=1e-6)


class _SmallW1NetLayers(nn.Cell):
    """W1Net's layer types: strided conv, BatchNorm, transposed conv, tanh.

    A smooth activation stands in for LeakyReLU, whose Hessian is zero almost everywhere
    and whose kinks break finite differences (the symmetry test in test_networks covers
    W1Net itself). float32: MindSpore's CPU convolutions have no float64 kernels.
    """

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 2, 3, stride=2, pad_mode='same', has_bias=False)
        self.norm = nn.BatchNorm2d(2)
        self.act = nn.Tanh()
        self.up = nn.Conv2dTranspose(2, 1, 4, stride=2, pad_mode='same', has_bias=False)

    def construct(self, x, target):
        y = ops.tanh(self.up(self.act(self.norm(self.down(x)))))
        return ((y - target) ** 2).sum()


def test_hessian_vector_products_match_finite_differences_and_are_symmetric():
    net = _SmallW1NetLayers()
    net.set_train(False)
    weights = net.trainable_params()
    x = Tensor(RNG.normal(size=(2, 1, 8, 8)).astype(np.float32))
    target = Tensor(RNG.normal(size=(2, 1, 8, 8)).astype(np.float32))
    v = tuple(Tensor(RNG.choice([-1.0, 1.0], size=p.shape).astype(np.float32)) for p in weights)
    u = tuple(Tensor(RNG.choice([-1.0, 1.0], size=p.shape).astype(np.float32)) for p in weights)
    hvp = HessianVectorProduct(net, weights)
    hvp.set_vectors(v)
    hv = [h.asnumpy() for h in hvp(x, target)]
    hvp.set_vectors(u)
    hu = [h.asnumpy() for h in hvp(x, target)]
    gradient = ms.grad(net, grad_position=None, weights=net.trainable_params())
    original = [p.asnumpy().copy() for p in weights]
    h = 1e-3  # small enough not to cross LeakyReLU kinks, large enough for float32

    def grads_at(sign):
        for p, p0, d in zip(weights, original, v):
            ops.assign(p, Tensor((p0 + sign * h * d.asnumpy()).astype(np.float32)))  # set_data: stale in graphs
        return [g.asnumpy().astype(np.float64) for g in gradient(x, target)]

    numeric = [(a - b) / (2 * h) for a, b in zip(grads_at(+1), grads_at(-1))]
    for p, p0 in zip(weights, original):
        ops.assign(p, Tensor(p0))
    for a, b in zip(hv, numeric):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max())
    u_hv = sum(float((a.asnumpy().astype(np.float64) * b).sum()) for a, b in zip(u, hv))
    v_hu = sum(float((a.asnumpy().astype(np.float64) * b).sum()) for a, b in zip(v, hu))
    assert u_hv == pytest.approx(v_hu, rel=1e-4)


def steps_to_converge(optimizer_factory, scales, steps=2000, tolerance=1e-4):
    """Steps until an ill-conditioned quadratic 0.5 sum(scales x^2) falls below tolerance * start."""
    x = Parameter(Tensor(np.ones_like(scales)), name='x')
    quadratic = Tensor(scales)
    optimizer = optimizer_factory([x])
    start = 0.5 * float((scales * 1.0).sum())
    for step in range(1, steps + 1):
        if getattr(optimizer, 'needs_hessian', False):
            probe = Tensor(RNG.choice([-1.0, 1.0], size=scales.shape).astype(np.float32))
            optimizer.refresh_hessian([diagonal_estimate(quadratic * probe, probe)])  # from H v of the quadratic
        optimizer((quadratic * x,))
        value = 0.5 * float((scales * x.asnumpy() ** 2).sum())
        if value < tolerance * start:
            return step
    return steps + 1


def test_lion_and_adahessian_beat_sgd_on_an_ill_conditioned_quadratic():
    scales = np.logspace(0, 3, 20).astype(np.float32)  # condition number 1000
    sgd = steps_to_converge(lambda p: nn.SGD(p, learning_rate=1.9 / scales.max()), scales)
    adahessian = steps_to_converge(lambda p: AdaHessian(p, 0.5, betas=(0.5, 0.5), eps=1e-8), scales)
    lion = steps_to_converge(lambda p: Lion(p, 0.02, betas=(0.5, 0.9)), scales)
    assert adahessian < sgd / 10  # measured: SGD 480 steps, AdaHessian 9, Lion 50
    assert lion < sgd / 3


@pytest.mark.parametrize('name', ['adam', 'adamw', 'lion', 'adahessian', 'sgd'])
def test_each_optimizer_trains_the_network_on_a_physics_loss(name):
    """Object and probe frozen at the truth: the network alone learns, and its exit-wave mismatch with
    the true patches falls (measured after 8 epochs: 0.27-0.6 of the first epoch's, per optimizer)."""
    rates = {'adam': 2e-3, 'adamw': 2e-3, 'lion': 2e-4, 'adahessian': 0.5, 'sgd': 1e-8}
    data, truth = simulate_scan(frame_size=32, count=16, photons=1e5)
    solver = make_solver(dataclasses.replace(data, obj=truth), {
        **SMALL_NETWORK, 'network_update.optimizer': name, 'network_update.learning_rate': rates[name],
        'object_update.learning_rate': 0.0, 'probe_update.learning_rate': 0.0, 'consistency': 0.0,
        'batch_size': 8, 'network.start': 0})
    first = solver.run(1)[:, 2].mean()
    assert solver.run(7)[:, 2].mean() < 0.8 * first


def test_adahessian_refines_the_object_without_illumination_normalisation():
    """The image variant (Gauss-Newton curvature, lazy moments, step lengths) lowers the Fourier error."""
    data, _ = simulate_scan(frame_size=32, count=16, photons=1e5)
    solver = make_solver(data, {'network.name': None, 'object_update.optimizer': 'adahessian',
                                'probe_update.start': None})
    first = solver.run(1)[:, 0].mean()
    assert solver.run(7)[:, 0].mean() < 0.95 * first


@pytest.mark.parametrize('build,message', [
    (lambda p: Lion(p, -1.0), 'learning_rate must be a finite number >= 0'),
    (lambda p: Lion(p, 1e-4, betas=(0.9, 1.0)), r'betas must be two numbers in \[0, 1\)'),
    (lambda p: AdaHessian(p, hessian_power=1.5), r'hessian_power must be in \(0, 1\]'),
    (lambda p: AdaHessian(p, hessian_power=0.0), r'hessian_power must be in \(0, 1\]'),
    (lambda p: AdamW(p, betas=(-0.1, 0.9)), r'betas must be two numbers in \[0, 1\)'),
    (lambda p: plugins.optimizer_factory('nosuch')(p, 1.0), "optimizer names an unknown optimizer 'nosuch'"),
])
def test_bad_optimizer_settings_name_the_parameter(build, message):
    with pytest.raises(ValueError, match=message):
        build(parameters([np.ones(3)]))


def test_solver_state_with_optimizer_moments_restores_exactly(tmp_path):
    data, _ = simulate_scan(frame_size=32, count=16, photons=1e5)
    overrides = {**SMALL_NETWORK, 'network_update.optimizer': 'lion', 'object_update.optimizer': 'adahessian',
                 'object_update.learning_rate': 0.05,
                 'network.start': 1}  # the resume crosses from the physics-only graph to the joint one
    uninterrupted = make_solver(data, overrides)
    uninterrupted.run(3)
    first = make_solver(data, overrides)
    first.run(2)
    checkpoints.save(first, str(tmp_path / 'state.ckpt'))
    resumed = make_solver(data, overrides)
    checkpoints.resume(resumed, str(tmp_path / 'state.ckpt'))
    assert resumed.epoch == 2
    for name in checkpoints.PROGRESS:  # what the divergence guard and the adaptive normaliser remember
        assert getattr(resumed, name) == pytest.approx(getattr(first, name), rel=1e-6)
    resumed.run(1)
    # equal to the last bits the CPU kernels' threading leaves (measured: 2 of 3422 pixels differ by 4e-12)
    np.testing.assert_allclose(resumed.object, uninterrupted.object, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(resumed.probe, uninterrupted.probe, rtol=1e-6, atol=1e-9)
    with pytest.raises(RuntimeError, match='fresh solver'):
        checkpoints.resume(resumed, str(tmp_path / 'state.ckpt'))


def test_a_checkpoint_of_other_optimizers_is_refused_naming_the_setting_to_give(tmp_path):
    """A checkpoint written with sgd on the probe (the default before 2026-12-01) holds no AdaHessian state:
    resuming it with the default probe optimizer is refused before any step, naming the setting that resumes
    it; with that setting it resumes."""
    data, _ = simulate_scan(frame_size=32, count=16, photons=1e5)
    earlier = {**PHYSICS_ONLY, 'probe_update.optimizer': 'sgd'}
    written = make_solver(data, earlier)
    written.run(1)
    checkpoints.save(written, str(tmp_path / 'state.ckpt'))
    with pytest.raises(ValueError, match="give probe_update.optimizer 'sgd' to resume a checkpoint written with "
                                         "the earlier default"):
        checkpoints.resume(make_solver(data, PHYSICS_ONLY), str(tmp_path / 'state.ckpt'))
    resumed = make_solver(data, earlier)
    checkpoints.resume(resumed, str(tmp_path / 'state.ckpt'))
    np.testing.assert_array_equal(resumed.probe, written.probe)
