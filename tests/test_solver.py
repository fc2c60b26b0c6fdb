"""The joint solver on scans simulated with numpy, and its refusal of bad input."""
import dataclasses

import numpy as np
import pytest
from helpers import PHYSICS_ONLY, SMALL_NETWORK, make_solver, patch_errors
import mindspore as ms
from mindspore import Tensor, ops

from ptypy_npu import settings
from ptypy_npu.metrics import illuminated_region, registered_error
from ptypy_npu.plugins import build_solver
from ptypy_npu.scan import illumination
from ptypy_npu.solver import MAX_REGULARISATION
from ptypy_npu.simulate import simulate_scan


@pytest.fixture(scope='module')
def scan():
    return simulate_scan(frame_size=64, count=64, photons=1e6, seed=0)


def ground_truth_error(solver, scan):
    data, truth = scan
    return registered_error(solver.object, truth, illuminated_region(data.probe, data.positions, truth.shape))


def test_physics_only_solver_reconstructs_a_simulated_scan(scan):
    data, truth = scan
    solver = make_solver(data, PHYSICS_ONLY)
    initial = ground_truth_error(solver, scan)
    first = solver.run(5)
    last = solver.run(25)
    assert initial > 0.35
    assert ground_truth_error(solver, scan) < 0.1
    # Fourier error toward its Poisson floor (~0.25 per pixel at sqrt(I)): measured 0.88 -> 0.44
    assert last[:, 0].mean() < 0.6 * first[:, 0].mean()
    assert np.all(last[:, 2] == 0)  # no network, no exit-wave mismatch
    np.testing.assert_array_equal(data.obj, 1)  # the caller's arrays are never written


def test_joint_solver_with_network_reconstructs(scan):
    """The object converges with the network on; the small network's own patches are not yet
    better than flat ones after 20 epochs of one 64-frame scan (measured 0.37 vs 0.36), so that
    is reported by the benchmarks, not asserted here."""
    data, truth = scan
    solver = make_solver(data, {**SMALL_NETWORK, 'network.start': 5})
    errors = solver.run(20)
    assert ground_truth_error(solver, scan) < 0.15
    assert np.all(errors[:, 2] > 0)
    network_error, flat_error = patch_errors(solver, truth, [10, 20, 30, 40, 50])
    assert network_error < 1.2 * flat_error  # no collapse of the network's predictions


def test_network_joins_after_the_physics_only_epochs(scan):
    """Until network_start the object follows the physics-only solver exactly, the network untouched."""
    data, _ = scan
    physics_only = make_solver(data, PHYSICS_ONLY)
    physics_only.run(3)
    joint = make_solver(data, {**SMALL_NETWORK, 'network.start': 3})
    initial = [p.asnumpy().copy() for p in joint.network.trainable_params()]
    assert np.all(joint.run(3)[:, 2] == 0)
    np.testing.assert_allclose(joint.object, physics_only.object, rtol=1e-5, atol=1e-5)  # CPU threads: last bits
    assert all(np.array_equal(a, p.asnumpy()) for a, p in zip(initial, joint.network.trainable_params()))
    assert np.all(joint.run(1)[:, 2] > 0)
    assert not all(np.array_equal(a, p.asnumpy()) for a, p in zip(initial, joint.network.trainable_params()))


def test_solver_is_deterministic_for_a_seed(scan):
    data, _ = scan
    objects = []
    for _ in range(2):
        solver = make_solver(data, {**SMALL_NETWORK, 'seed': 7})
        solver.run(2)
        objects.append(solver.object)
    np.testing.assert_array_equal(objects[0], objects[1])


def with_data(**changes):
    def change(data):
        return dataclasses.replace(data, **{k: v(data) for k, v in changes.items()})
    return change


def mask_frame_three(data):
    mask = np.ones(data.intensities.shape, bool)
    mask[3] = False
    return mask


def darken_frame_five(data):
    intensities = data.intensities.copy()
    intensities[5] = 0
    return intensities


def test_a_batch_of_one_frame_moves_the_object(scan):
    """Within one frame the normalised object and probe steps change the exit wave alike, so the step-length
    system of a one-frame batch is singular: undamped, its solution held the object still (measured: the flat
    start's error for 20 epochs on 64-px scans at 1e7 photons, and on this scan after 3)."""
    data, _ = scan
    solver = make_solver(data, {**PHYSICS_ONLY, 'batch_size': 1})
    initial = ground_truth_error(solver, scan)
    solver.run(3)
    assert ground_truth_error(solver, scan) < 0.75 * initial


@pytest.mark.parametrize('change,message', [
    (with_data(probe=lambda d: d.probe[:, :32]), 'probe must be'),
    (with_data(mask=mask_frame_three), r'mask: frames \[3\] are entirely masked'),
    (with_data(intensities=darken_frame_five), r'intensities: frames \[5\] hold no photons'),
    (with_data(positions=lambda d: d.positions + 1000), 'positions: frames'),
    (with_data(obj=lambda d: d.obj[:10]), 'obj must be'),
    (with_data(intensities=lambda d: d.intensities[0]), 'intensities must be'),
])
def test_bad_scan_data_is_refused_naming_the_array(scan, change, message):
    with pytest.raises(ValueError, match=message):
        make_solver(change(scan[0]), PHYSICS_ONLY)


@pytest.mark.parametrize('overrides,message', [
    ({'network.name': 'NoSuchNet'}, "network.name names an unknown network 'NoSuchNet'; available: .*W1Network"),
    ({'object_update.optimizer': 'nosuch', 'object_update.learning_rate': 1.0},
     "object_update.optimizer names an unknown optimizer"),
    ({'probe_update.learning_rate': -1.0}, "probe_update.learning_rate must be a finite number >= 0 or None"),
    ({'device': 'TPU'}, "device must be one of CPU, GPU, Ascend"),
    ({'batch_size': 1000}, "batch_size 1000 exceeds the 64 frames"),
    ({'loss': 'l1'}, "loss must be one of gaussian, poisson"),
    ({'network.depth': 7}, r"network.depth=7 .* multiple of binning \* 2\*\*depth"),
    ({'precision': 'float64'}, "precision must be one of float32, float16, bfloat16"),
    ({'precision': 'bfloat16'}, "precision 'bfloat16' needs device 'Ascend' or 'GPU'"),
    ({'network.name': None, 'precision': 'float16'}, "precision 'float16' sets the network's arithmetic"),
    ({'precision': 'float16', 'network_update.optimizer': 'adahessian'},
     "precision 'float16' with network_update.optimizer 'adahessian'"),
    ({'network_update.optimizer': 'sgd'},
     "network_update.learning_rate must be given: optimizer 'sgd' has no default rate for this group"),
    ({'network.binning': 3}, "network.binning must be 1, 2 or 4, got 3"),
    ({'object_update.optimizer': 'adahessian', 'optimal_steps': False},
     "optimal_steps False leaves object_update.optimizer 'adahessian' without the step lengths"),
    ({'optimal_steps': False}, "optimal_steps False leaves probe_update.optimizer 'adahessian' without the step "
                               "lengths its rate scales; keep it True, set probe_update.optimizer 'sgd'"),
    ({'numiter': 0}, "numiter must be an integer >= 1, got 0"),
    ({'object_update.momentum': 1.0}, r"object_update.momentum must be a finite number >= 0 and <= 0.99 or None"),
])
def test_bad_settings_are_refused_naming_the_setting(scan, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_solver(scan[0], overrides)


def test_a_group_without_a_rate_takes_its_optimizers_documented_default(scan):
    solver = make_solver(scan[0], {'network_update.optimizer': 'lion', 'object_update.optimizer': 'lion',
                                   'probe_update.optimizer': 'adam'})
    objects, probes, networks = solver.optimizers
    rates = [float(o.learning_rate.asnumpy()) for o in (networks, objects, probes)]
    assert rates == pytest.approx([2e-4, 0.01, 3.0])  # README's table of measured defaults
    # Lion on the object runs lazy with betas (0.5, 0.9) (README); on the network, the paper's Lion
    assert (objects.lazy, objects.beta1, objects.beta2) == (True, 0.5, 0.9)
    assert (networks.lazy, networks.beta1) == (False, 0.9)


def test_a_groups_own_options_override_the_defaults_it_does_not_name(scan):
    chosen = settings.make({'network.name': None, 'object_update.optimizer': 'lion'})
    chosen.object_update.options = {'betas': (0.8, 0.95)}
    optimizer = build_solver(scan[0], chosen).optimizers[0]
    assert (optimizer.lazy, optimizer.beta1, optimizer.beta2) == (True, 0.8, 0.95)


def test_the_normalisers_delta_doubles_when_the_fourier_error_stalls(scan):
    data, _ = scan
    solver = make_solver(data, PHYSICS_ONLY)
    start = float(solver.regularisation.asnumpy())
    assert start == pytest.approx(solver.settings.illumination_regularisation)
    deltas = []
    for fourier in [1.0, 0.9, 0.95, 0.9, 0.8999, 0.7, 0.71, 0.72, 0.73] + [0.8] * 30:
        solver._adapt_regularisation(fourier)
        deltas.append(float(solver.regularisation.asnumpy()))
    # lows at 1.0, 0.9, 0.7; 0.8999 is no new low (within 0.1 %); three epochs without one double delta
    np.testing.assert_allclose(deltas[:9], [start] * 4 + [2 * start] + [2 * start] * 3 + [4 * start], rtol=1e-6)
    assert deltas[-1] == pytest.approx(MAX_REGULARISATION)
    given = make_solver(data, {**PHYSICS_ONLY, 'illumination_regularisation': 0.2})
    for fourier in [1.0] * 10:
        given._adapt_regularisation(fourier)
    assert float(given.regularisation.asnumpy()) == pytest.approx(0.2)  # the user's delta is kept


def test_stalls_at_the_largest_delta_halve_the_object_and_probe_rates_down_to_an_eighth(scan):
    data, _ = scan
    solver = make_solver(data, PHYSICS_ONLY)
    ops.assign(solver.regularisation, Tensor(np.float32(MAX_REGULARISATION)))
    starts = [float(o.learning_rate.asnumpy()) for o in solver.optimizers]
    rates = []
    for fourier in [1.0, 1.0, 1.0, 1.0, 0.5] + [0.6] * 12:
        solver._adapt_regularisation(fourier)
        rates.append([float(o.learning_rate.asnumpy()) / start for o, start in zip(solver.optimizers, starts)])
    # a stall of three epochs after the low at 1.0 halves both; the new low 0.5 restarts the count; two more
    # stalls reach 1/8, and the stalls after that leave the rates there
    expected = [1, 1, 1, 0.5, 0.5] + [0.5, 0.5, 0.25, 0.25, 0.25, 0.125] + [0.125] * 6
    np.testing.assert_allclose(np.array(rates), np.repeat(np.array(expected)[:, None], 2, 1), rtol=1e-6)
    assert float(solver.regularisation.asnumpy()) == pytest.approx(MAX_REGULARISATION)
    given = make_solver(data, {**PHYSICS_ONLY, 'illumination_regularisation': MAX_REGULARISATION})
    for fourier in [1.0] * 10:
        given._adapt_regularisation(fourier)
    assert [float(o.learning_rate.asnumpy()) for o in given.optimizers] == pytest.approx(starts)  # the user's delta


def test_the_compiled_step_reads_the_normalisers_delta_as_it_changes(scan):
    """The object's change of one sgd step (unit length) is -g / (c (w + delta max w)): two deltas on the
    same batch give changes in the ratio that the batch's illumination w, summed in numpy, predicts."""
    data, _ = scan
    solver = make_solver(data, {**PHYSICS_ONLY, 'optimal_steps': False, 'batch_size': 4, 'probe_update.optimizer': 'sgd'})
    solver.compile()
    batch = solver.shards.in_order(len(data.positions), 4)[0]
    inputs, start, changes = solver._inputs(batch), solver.state(), []
    for delta in (0.1, 2.0):
        solver.restore(start)
        ops.assign(solver.regularisation, Tensor(np.float32(delta)))
        before = solver.object
        solver.phase.step(*inputs, Tensor(np.float32(0.0)))
        changes.append(solver.object - before)
    w = illumination(solver.probe, data.positions[batch], data.obj.shape)
    lit = w > 0.05 * w.max()
    expected = (w + 2.0 * w.max()) / (w + 0.1 * w.max())
    np.testing.assert_allclose(np.abs(changes[0][lit]), (expected * np.abs(changes[1]))[lit],
                               rtol=1e-3, atol=1e-6 * np.abs(changes[0]).max())


def test_compiling_takes_a_step_and_a_curvature_refresh_and_leaves_the_solver_as_it_was(scan):
    """compile() runs AdaHessian's refresh too (its graph compiles there, not inside the first timed epoch),
    then restores every parameter, optimizer state and the random generator: the epochs after it are
    those of a solver that compiles inside run()."""
    data, _ = scan
    estimated = {'curvature': 'gauss_newton'}  # a Hutchinson estimate, refreshed (the default is closed-form)
    overrides = {**PHYSICS_ONLY, 'object_update.optimizer': 'adahessian', 'probe_update.optimizer': 'adahessian',
                 'object_update.options': estimated, 'probe_update.options': estimated}
    solver, fresh = make_solver(data, overrides), make_solver(data, overrides)
    solver.compile()
    vectors = [v.asnumpy() for v in solver.phases[0].hessian.gauss_newton_product.vectors]
    assert any(np.abs(v).max() == 1 for v in vectors)  # a Rademacher vector was drawn: the refresh ran
    before, after = fresh.state(), solver.state()
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert solver.rng.bit_generator.state == fresh.rng.bit_generator.state
    assert solver.phases[0].hessian.refreshes == 0
    np.testing.assert_array_equal(solver.run(2), fresh.run(2))


def test_a_diverging_epoch_is_rolled_back_with_halved_rates(scan):
    data, _ = scan
    solver = make_solver(data, PHYSICS_ONLY)
    solver.run(1)
    phase, calls = solver.phases[0], []

    def step_that_blows_up_once(*inputs):
        out = phase.step(*inputs)
        calls.append(1)
        if len(calls) == 2:  # the object turns to NaN mid-epoch
            ops.assign(solver.objective.object_re, solver.objective.object_re * np.float32('nan'))
            return (Tensor(np.float32('nan')),) + tuple(out[1:])
        return out

    solver.phases[0] = phase._replace(step=step_that_blows_up_once)
    with pytest.warns(RuntimeWarning, match='rolled back to the epoch.s start and halved every learning rate'):
        solver.run(1)
    assert solver.epoch == 2 and np.isfinite(solver.object).all()
    objects, probes = solver.optimizers
    assert float(objects.learning_rate.asnumpy()) == pytest.approx(1.0 / 2)
    assert float(probes.learning_rate.asnumpy()) == pytest.approx(1.0 / 2)


def test_repeated_divergence_stops_with_the_last_good_state(scan):
    data, _ = scan
    solver = make_solver(data, {**PHYSICS_ONLY, 'object_update.learning_rate': 1e30, 'max_divergences': 2})
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match='diverged in epoch 0 3 times'):
        solver.run(1)
    np.testing.assert_array_equal(solver.object, data.obj)
    # the probe as the solver started with it: scaled to the measured photons (sums taken in float32)
    np.testing.assert_allclose(solver.probe, data.photon_scaled_probe(), rtol=1e-6)


def test_float16_network_trains_as_float32_does(scan):
    """Mixed precision: the network computes in float16, its weights stay float32, and the steps
    (loss in batch photons, dynamic scale 2**16) follow float32's: epoch losses within 1 %. (float16's
    rounding passes on through the optimal step lengths: over 6 epochs the two runs' losses differed by up
    to 0.65 %, and by up to 0.86 % before the step-length system was damped, when epoch 3 happened to agree
    within 0.3 %.)"""
    data, _ = scan
    runs = {}
    for precision in ('float32', 'float16'):
        solver = make_solver(data, {**SMALL_NETWORK, 'network.start': 1, 'precision': precision})
        solver.run(3)
        runs[precision] = solver
    half = runs['float16']
    assert [o.dtype for o in half.network(Tensor(half.amplitudes[:4]))] == [ms.float16, ms.float16]
    assert all(p.dtype == ms.float32 for p in half.network.get_parameters())
    assert float(half.loss_scaler.scale_value.asnumpy()) == 2.0 ** 16  # no overflow in 32 steps
    np.testing.assert_allclose([h['loss'] for h in half.history], [h['loss'] for h in runs['float32'].history],
                               rtol=1e-2)


def test_float16_steps_that_overflow_are_skipped_and_halve_the_loss_scale(scan):
    data, _ = scan
    solver = make_solver(data, {**SMALL_NETWORK, 'network.start': 0, 'precision': 'float16', 'batch_size': 4})
    ops.assign(solver.loss_scaler.scale_value, Tensor(2.0 ** 120, ms.float32))  # float16 overflows at 2**16
    before = solver.state()
    solver.run(1)  # 16 steps of 4 frames, every one overflowing
    assert float(solver.loss_scaler.scale_value.asnumpy()) == 2.0 ** (120 - 16)
    after = solver.state()
    for name, value in before.items():  # nothing moved, no NaN (BatchNorm's statistics follow the forward pass)
        if 'loss_scale' not in name and 'moving_' not in name:
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_a_handed_over_object_takes_its_typical_transmission_only_where_the_scan_lights_it_weakly():
    """Weakly lit pixels take the median amplitude of the well-lit ones with the phase of their sum, here
    0.8 exp(-2.5i) (PtyPy's default start has a phase of its own), not the noise a projection engine left."""
    from ptypy_npu.scan import WEAKLY_LIT, neutral_where_weakly_lit
    probe = np.zeros((1, 4, 4), complex)
    probe[0, 1:3, 1:3] = 10.0  # 100 per lit pixel and frame
    probe[0, 0, 0] = 0.5  # 0.25: below 1 % of the brightest sum (200) where only this corner lights
    positions = np.array([[0, 0], [0, 1], [5, 5]])
    lit = np.zeros((10, 10))
    for row, col in positions:  # the summed probe intensity, written out
        lit[row:row + 4, col:col + 4] += np.abs(probe[0]) ** 2
    weak = (lit > 0) & (lit < WEAKLY_LIT * lit.max())
    typical = 0.8 * np.exp(-2.5j)
    obj = np.full((10, 10), typical)
    obj[weak] = 50.0 * np.exp(1j * np.arange(weak.sum()))  # amplified noise where the data barely reach
    obj[1, 1] = obj[6, 6] = 5.0 * np.exp(-2.5j)  # two bright well-lit pixels: the median ignores them
    made, count = neutral_where_weakly_lit(obj, lit)
    assert lit.max() == 200 and count == weak.sum() == 3  # the three frames' corners (0, 0), (0, 1), (5, 5)
    np.testing.assert_allclose(made[weak], typical, rtol=1e-6)
    np.testing.assert_array_equal(made[~weak], obj[~weak])
    np.testing.assert_array_equal(illumination(probe, positions, (10, 10)), lit)


def test_epoch_momentum_moves_the_object_by_its_decaying_velocity_weighted_by_the_illumination():
    """Three epochs' changes c of a four-pixel object, written out: velocity v = c + eta v, each epoch's push
    eta * w / (w + 0.1 max w) * v, with max w = 10 here; stopped, the velocity starts again from 0."""
    from ptypy_npu.step import EpochMomentum
    eta, lit = 0.8, np.array([10.0, 5.0, 1.0, 0.0])
    weight = lit / (lit + 1.0)
    momentum = EpochMomentum(4, eta)
    parts = [ms.Parameter(Tensor(np.ones(4, np.float32)), name='re'),
             ms.Parameter(Tensor(np.zeros(4, np.float32)), name='im')]
    rng = np.random.default_rng(0)
    expected, velocity = np.ones(4, complex), np.zeros(4, complex)
    for stop in (False, False, True):
        if stop:
            momentum.stop()
            velocity = 0.0
        momentum.begin(*parts)
        change = rng.normal(size=4) + 1j * rng.normal(size=4)  # what the epoch's steps did
        for part, value in zip(parts, ((expected + change).real, (expected + change).imag)):
            ops.assign(part, Tensor(value.astype(np.float32)))
        momentum.push(*parts, lit)
        velocity = change + eta * velocity
        expected = expected + change + eta * weight * velocity
        np.testing.assert_allclose(parts[0].asnumpy() + 1j * parts[1].asnumpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\)'):
        EpochMomentum(4, 1.0)


def test_the_solver_pushes_the_object_by_its_last_epochs_change_where_the_scan_lights_it(scan):
    """After the second epoch (the first has no change before it to build on) the object moves on by
    0.8 of that epoch's change, weighted by the scan's illumination summed in numpy."""
    data, _ = scan
    solver = make_solver(data, PHYSICS_ONLY)
    assert solver.momentum.eta == 0.8
    solver.run(1)
    momentum, seen = solver.momentum, {}
    push = momentum.push

    def recorded(object_re, object_im, lit):
        seen.update(start=momentum.start_re.asnumpy() + 1j * momentum.start_im.asnumpy(), before=solver.object.ravel(),
                    probe=solver.probe, lit=lit)
        push(object_re, object_im, lit)
        seen['after'] = solver.object.ravel()

    momentum.push = recorded
    solver.run(1)
    w = illumination(seen['probe'], data.positions, data.obj.shape).ravel()
    np.testing.assert_allclose(seen['lit'], w, rtol=1e-5)
    moved = seen['before'] + 0.8 * w / (w + 0.1 * w.max()) * (seen['before'] - seen['start'])
    np.testing.assert_allclose(seen['after'], moved, rtol=1e-5, atol=1e-6)
    assert np.abs(seen['after'] - seen['before']).max() > 1e-3


def test_the_epoch_momentum_stops_once_the_normalisers_delta_has_reached_its_cap(scan):
    """At the cap the data are fitted down to their noise: the velocity is dropped and the object stays."""
    solver = make_solver(scan[0], PHYSICS_ONLY)
    solver.run(2)
    assert np.abs(solver.momentum.velocity_re.asnumpy()).max() > 0
    ops.assign(solver.regularisation, Tensor(np.float32(MAX_REGULARISATION)))
    before = solver.object
    solver._accelerate()
    np.testing.assert_array_equal(solver.object, before)
    assert not solver.momentum.velocity_re.asnumpy().any() and not solver.momentum.velocity_im.asnumpy().any()


@pytest.mark.parametrize('overrides,momentum', [
    ({}, 0.8), ({'object_update.optimizer': 'adahessian'}, 0.8), ({'object_update.optimizer': 'adam'}, 0.0),
    ({'object_update.optimizer': 'lion'}, 0.0), ({'object_update.momentum': 0.5}, 0.5),
    ({'object_update.optimizer': 'adam', 'object_update.momentum': 0.3}, 0.3)])
def test_the_objects_epoch_momentum_is_on_for_sgd_and_adahessian_and_off_for_long_moments(overrides, momentum):
    assert settings.make(overrides).object_update.epoch_momentum == momentum


@pytest.mark.parametrize('overrides', [{'object_update.options': {'curvature': 'gauss_newton'}},
                                       {'object_update': {'options': {'curvature': 'gauss_newton'}}}])
def test_a_groups_options_are_one_setting_dotted_or_nested(overrides):
    chosen = settings.make(overrides)
    assert chosen.object_update.options == {'curvature': 'gauss_newton'}
    assert chosen.object_update.optimizer_options('object_update')['curvature'] == 'gauss_newton'


@pytest.mark.parametrize('photons_per_frame,frames,size,batch', [
    (1e4, 100, 64, 16), (1e6, 100, 64, 16), (1e6, 10, 64, 10), (1e7, 100, 64, 4), (1e9, 100, 64, 4),
    (1e6, 100, 128, 8), (1e7, 100, 128, 8), (1e8, 100, 128, 4), (1e4, 100, 256, 4), (1e4, 100, 96, 8)])
def test_the_batch_follows_the_counts_per_pixel_and_the_frame_size(photons_per_frame, frames, size, batch):
    """4000 / counts per pixel, rounded to a power of two within [4, 16], at most 2^17 detector pixels (the power
    of two below) and the scan's frames. 64 px: 1e6 photons are 244 per pixel, 16.4 frames; 1e7 photons 2440, 1.6,
    so 4. 128 px: 1e6 photons 61 per pixel, 65 frames, at most 8; 1e7 610, 6.6, so 8; 1e8 6100, 0.66, so 4.
    256 px: at most 2 frames, so 4. 96 px: at most 14.2 frames, so 8."""
    chosen = settings.make({}).adapted_to_dose(photons_per_frame / size ** 2, frames, size ** 2)
    assert chosen.batch_size == batch
