"""One optimisation step: gradients, their sum over the processes, step directions and lengths, updates.

A step (:class:`Update`) turns a minibatch's gradients into updates:

1. **Directions.** Object and probe gradients are divided by the illumination they saw in the batch
   (``sum |P|^2`` per object pixel, ``sum |O_j|^2`` per probe pixel, plus
   ``illumination_regularisation`` times its maximum), the step normalisation of ePIE/LSQML: a
   unit step along them is a projection-like update whatever the photon count. Second-order
   optimizers bring their own curvature and get the plain gradients.
2. **Lengths.** With ``optimal_steps`` (optimizers ``sgd`` and AdaHessian's image variant, along its
   preconditioned directions), the object and probe steps are scaled by
   the lengths that minimise the data term's quadratic model along the two directions, as LSQML
   (Odstrcil et al., Opt. Express 26, 3108 (2018)) does: the exit-wave changes ``v_O = P dO_j`` and
   ``v_P = dP O_j`` are fitted to the residual ``r = -dL/dpsi`` the data ask for,
   ``min_a sum_j |r_j / c - a_O v_O - a_P v_P|^2`` with c the data term's curvature, plus the
   object prior's own quadratic term. A 2 x 2 system per batch, its object-probe coupling damped
   (:data:`COUPLING_DAMPING`) and minimised over lengths >= 0 (when one group's optimizer has its own step
   rule, the other's 1-D optimum); lengths at most ``MAX_STEP_LENGTH``. No learning rate to tune: the rate
   scales the optimal length.
3. **Updates.** Every group's optimizer takes its direction times its length.

How the processes' sums are formed is chosen once, by :func:`make_step`, from the communicator
(:mod:`.distributed`): one process, one graph (:class:`CompiledStep`); MindSpore's collectives
(``msrun``), one graph with the sums inside (HCCL, NCCL, mccl: on a device the gradients never
leave it); MPI (``mpiexec``), three graphs with the sums on the host between them
(:class:`HostSummedStep`). Every step is called as ``step(amplitudes, intensities, mask, indices,
probe_on)`` and returns the loss of the global batch and the per-frame errors ``(fourier,
photon, exit)`` of this process's frames, before the step.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from scipy.ndimage import uniform_filter

from . import physics
from .distributed import allreduce_tensors
from .objective import GaussNewtonProduct, ObjectiveLoss
from .optim import HessianVectorProduct, rademacher_like

#: The longest step, in units of the normalised (projection-like) step.
MAX_STEP_LENGTH = 4.0

#: The step-length system's object-probe coupling is scaled by ``1 - COUPLING_DAMPING``. Within one frame a
#: normalised object step and a normalised probe step change the exit wave alike (both about the residual
#: where the frame is bright), so for a batch of one frame, or of frames that barely overlap, the 2 x 2
#: system is singular and its exact solution is rounding noise (one group driven to 0, the other to the
#: clip). Damped, a singular system splits the step evenly; an uncoupled one (b = 0) is solved exactly.
COUPLING_DAMPING = 0.05


def clipped(length):
    """A step length limited to [0, MAX_STEP_LENGTH]."""
    return ops.clip_by_value(length, 0.0, MAX_STEP_LENGTH)


class Update(nn.Cell):
    """Directions, step lengths and optimizer steps of one minibatch (module docstring).

    ``objective`` supplies the exit-wave changes of unit steps (``step_products``); ``optimizers``
    are the object's, the probe's and the network's (or None); ``regularisation`` is the
    normaliser's delta, a float32 scalar Parameter (:func:`regularisation_parameter`) that the
    solver may raise between epochs without recompiling; ``optimal_steps`` turns on the step
    lengths of the groups whose optimizer takes them (``takes_step_lengths``).
    """

    def __init__(self, objective, optimizers, regularisation, curvature, optimal_steps=True):
        super().__init__()
        self.objective = objective
        self.object_optimizer, self.probe_optimizer, network_optimizer = optimizers
        self.network_optimizers = nn.CellList([network_optimizer] if network_optimizer is not None else [])
        self.regularisation = regularisation
        self.curvature = curvature
        # optimizers that precondition (AdaHessian's image variant) make the directions, and the step lengths
        # are those along them
        self.preconditions_object = getattr(self.object_optimizer, 'preconditions', False)
        self.preconditions_probe = getattr(self.probe_optimizer, 'preconditions', False)
        # second-order optimizers bring their own curvature: no illumination normalisation for them
        self.normalise_object = not (getattr(self.object_optimizer, 'needs_hessian', False) or self.preconditions_object)
        self.normalise_probe = not (getattr(self.probe_optimizer, 'needs_hessian', False) or self.preconditions_probe)
        if getattr(network_optimizer, 'preconditions', False):
            raise ValueError("network_update.options: lazy=True is AdaHessian's image variant, for the object and "
                             "the probe; the network takes the paper's (lazy=False)")
        # a group with its own step rule (Adam, Lion, the paper's AdaHessian) keeps it (length 1)
        self.object_lengths, self.probe_lengths = (optimal_steps and getattr(o, 'takes_step_lengths', False)
                                                   for o in (self.object_optimizer, self.probe_optimizer))
        self.optimal_steps = self.object_lengths or self.probe_lengths

    @property
    def optimizers(self):
        return [self.object_optimizer, self.probe_optimizer] + list(self.network_optimizers)

    def directions(self, grads, object_illumination, patch_power, probe_on):
        """The directions the optimizers take: object and probe gradients normalised (module docstring), or
        preconditioned by their AdaHessian, the probe's times ``probe_on`` (float 0/1: probe refinement
        switched without recompiling); the network's gradients as they are."""
        object_direction = grads[:2]  # as they are for an optimizer with its own curvature: no product with 1
        if self.normalise_object:
            object_scale = physics.inverse_illumination(object_illumination, self.regularisation, self.curvature)
            object_direction = (grads[0] * object_scale, grads[1] * object_scale)
        probe_scale = probe_on
        if self.normalise_probe:
            probe_scale = physics.inverse_illumination(patch_power, self.regularisation, self.curvature,
                                                       robust=True) * probe_on
        probe_direction = (grads[2] * probe_scale, grads[3] * probe_scale)
        # the Gauss-Newton diagonal in closed form, per re or im part: exact for one probe mode (re + im =
        # curvature x illumination); with several modes it bounds the object's from above and gives each probe
        # mode the whole patch power (AdaHessian's 'gauss_newton' curvature measures them where it refreshed)
        if self.preconditions_object:
            expected = 0.5 * self.curvature * object_illumination
            object_direction = self.object_optimizer.precondition(object_direction, (expected,))
        if self.preconditions_probe:
            expected = 0.5 * self.curvature * patch_power
            probe_direction = self.probe_optimizer.precondition(probe_direction, (expected,))
        return object_direction + probe_direction + grads[4:]

    def step_terms(self, directions, residual, prior, indices):
        """This process's sums of the step-length system, (5,): ``c <v_O, v_O> + 2 <dO, dO>_w``,
        ``c <v_O, v_P>``, ``c <v_P, v_P>``, ``<r, v_O> + 2 <prior, dO>_w``, ``<r, v_P>``; ``prior`` is
        ``(N - O re, im, weight)`` of the object's prior (zero without one). The steps go against the
        directions (``dO = -direction``); the products are linear in them, so they are formed along the
        directions and the two cross terms with ``r`` change sign (no object-sized negation)."""
        if not self.optimal_steps:
            return ops.zeros(5, ms.float32)
        (object_re, object_im), (probe_re, probe_im) = self.objective.step_products(indices, directions[:2],
                                                                                    directions[2:4])
        change_re, change_im = ops.gather(directions[0], indices, 0), ops.gather(directions[1], indices, 0)
        prior_re, prior_im, weight = prior
        c = self.curvature
        total = physics.total
        return ops.stack([
            c * total(ops.square(object_re) + ops.square(object_im))
            + 2.0 * total(weight * (ops.square(change_re) + ops.square(change_im))),
            c * total(object_re * probe_re + object_im * probe_im),
            c * total(ops.square(probe_re) + ops.square(probe_im)),
            -total(residual[0] * object_re + residual[1] * object_im)
            - 2.0 * total(weight * (prior_re * change_re + prior_im * change_im)),
            -total(residual[0] * probe_re + residual[1] * probe_im)])

    def lengths(self, terms):
        """Step lengths (object, probe) minimising the quadratic model of the summed ``terms`` over lengths
        >= 0, or one group's 1-D optimum when the other keeps its own step (length 1); at most MAX_STEP_LENGTH.
        The 2 x 2 system's coupling is damped (:data:`COUPLING_DAMPING`)."""
        if not self.optimal_steps:
            return 1.0, 1.0
        a, b, d, u, v = terms[0], terms[1], terms[2], terms[3], terms[4]
        tiny = 1e-6 * (a + d) + 1e-30  # keeps the system regular when the probe is held fixed (d = 0)
        a, d, b = a + tiny, d + tiny, b * (1.0 - COUPLING_DAMPING)
        object_alone, probe_alone = ops.maximum(u / a, 0.0), ops.maximum(v / d, 0.0)
        if not self.probe_lengths:
            return clipped(object_alone), 1.0
        if not self.object_lengths:
            return 1.0, clipped(probe_alone)
        determinant = a * d - b * b
        object_length, probe_length = (u * d - v * b) / determinant, (a * v - b * u) / determinant
        # a negative length: the optimum lies on an edge of the quadrant, the other length's 1-D optimum
        inside = ops.logical_and(object_length >= 0, probe_length >= 0)
        object_edge = ops.logical_and(ops.logical_not(inside), u * object_alone >= v * probe_alone)
        probe_edge = ops.logical_and(ops.logical_not(inside), ops.logical_not(object_edge))
        object_length = ops.select(object_edge, object_alone, ops.select(probe_edge, ops.zeros_like(u), object_length))
        probe_length = ops.select(probe_edge, probe_alone, ops.select(object_edge, ops.zeros_like(v), probe_length))
        return clipped(object_length), clipped(probe_length)

    def apply(self, directions, terms):
        """Each optimizer steps along its direction times its length."""
        object_length, probe_length = self.lengths(terms)
        self.object_optimizer((directions[0] * object_length, directions[1] * object_length))
        self.probe_optimizer((directions[2] * probe_length, directions[3] * probe_length))
        for optimizer in self.network_optimizers:
            optimizer(directions[4:])
        return True


class ScaledUpdate(Update):
    """:class:`Update` whose network gradients come scaled by a ``mindspore.amp.DynamicLossScaler`` and
    ``1 / loss_unit`` (float16 networks): they are unscaled first; when any overflowed, nothing moves
    and the scale shrinks. The scale and its step counter are attributes of the cell, so checkpoints
    hold them."""

    def __init__(self, objective, optimizers, regularisation, curvature, optimal_steps, loss_scaler, loss_unit):
        super().__init__(objective, optimizers, regularisation, curvature, optimal_steps)
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit
        self.loss_scale, self.loss_scale_steps = loss_scaler.scale_value, loss_scaler.counter

    def directions(self, grads, object_illumination, patch_power, probe_on):
        network = tuple(g * self.loss_unit for g in self.loss_scaler.unscale(grads[4:]))
        # a step skipped for overflow leaves the object's and probe's optimizer states too (a lazy AdaHessian's
        # moments stand still where the gradient is zero)
        finite = ops.cast(ms.amp.all_finite(network), grads[0].dtype)
        return super().directions(tuple(g * finite for g in grads[:4]) + network, object_illumination, patch_power,
                                  probe_on)

    def apply(self, directions, terms):
        finite = ms.amp.all_finite(directions[4:])
        self.loss_scaler.adjust(finite)
        if finite:
            super().apply(directions, terms)
        return finite


class CompiledStep(nn.Cell):
    """Gradients, directions, lengths and updates in one graph; given the ``summed_weights``
    (processes launched by ``msrun``), loss, gradients, illumination and step-length sums are summed
    over the ranks inside it by MindSpore's collectives."""

    def __init__(self, update, summed_weights=None):
        super().__init__()
        self.update = update
        self.objective = update.objective
        self.sum_over_ranks = summed_weights is not None
        if self.sum_over_ranks:
            self.sum_gradients = nn.DistributedGradReducer(summed_weights, mean=False)
            self.sum = ops.AllReduce()

    def construct(self, amplitudes, intensities, mask, indices, probe_on):
        loss, errors, grads, residual, prior = self.objective.gradients(amplitudes, intensities, mask, indices)
        object_illumination, patch_power = self.objective.illuminations(indices)
        if self.sum_over_ranks:
            grads = self.sum_gradients(grads)
            loss, object_illumination, patch_power = self.sum(loss), self.sum(object_illumination), self.sum(patch_power)
        directions = self.update.directions(grads, object_illumination, patch_power, probe_on)
        terms = self.update.step_terms(directions, residual, prior, indices)
        if self.sum_over_ranks:
            terms = self.sum(terms)
        self.update.apply(directions, terms)
        return (loss,) + errors


class _GradientPass(nn.Cell):
    """The first graph of :class:`HostSummedStep`: the objective's gradients and the batch's illumination."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        loss, errors, grads, residual, prior = self.objective.gradients(amplitudes, intensities, mask, indices)
        return (loss, errors, grads, residual, prior) + self.objective.illuminations(indices)


class _DirectionPass(nn.Cell):
    """The second graph of :class:`HostSummedStep`: directions and this process's step-length sums."""

    def __init__(self, update):
        super().__init__()
        self.update = update

    def construct(self, grads, object_illumination, patch_power, probe_on, residual, prior, indices):
        directions = self.update.directions(grads, object_illumination, patch_power, probe_on)
        return directions, self.update.step_terms(directions, residual, prior, indices)


class _ApplyPass(nn.Cell):
    """The third graph of :class:`HostSummedStep`: the updates."""

    def __init__(self, update):
        super().__init__()
        self.update = update

    def construct(self, directions, terms):
        return self.update.apply(directions, terms)


class HostSummedStep(nn.Cell):
    """Three graphs with sums on the host (MPI, through ``communicator``) between them: the
    gradients, then the directions and the step-length sums, then the updates."""

    def __init__(self, update, communicator):
        super().__init__()
        self.update = update
        self.objective = update.objective
        self.gradient_pass = _GradientPass(update.objective)
        self.direction_pass = _DirectionPass(update)
        self.apply_pass = _ApplyPass(update)
        self.communicator = communicator

    def __call__(self, amplitudes, intensities, mask, indices, probe_on):
        loss, errors, grads, residual, prior, object_illumination, patch_power = self.gradient_pass(
            amplitudes, intensities, mask, indices)
        loss, object_illumination, patch_power, *grads = allreduce_tensors(
            self.communicator, (loss, object_illumination, patch_power) + tuple(grads))
        # mutable: a tuple argument is otherwise a constant of the graph, recompiled for every new value
        directions, terms = self.direction_pass(ms.mutable(tuple(grads)), object_illumination, patch_power, probe_on,
                                                residual, prior, indices)
        terms, = allreduce_tensors(self.communicator, (terms,))
        self.apply_pass(ms.mutable(tuple(directions)), terms)
        return (loss,) + tuple(errors)


def regularisation_parameter(value):
    """The normaliser's delta as a scalar Parameter (not trained): steps read it, the solver sets it."""
    return ms.Parameter(Tensor(np.float32(value)), name='illumination_regularisation', requires_grad=False)


def make_step(objective, optimizers, settings, communicator, regularisation, loss_scaler=None, loss_unit=1.0):
    """The step of ``objective`` with ``optimizers`` (object, probe, network or None) and the normaliser's
    ``regularisation`` Parameter, its sums over the processes formed as ``communicator`` does it
    (module docstring)."""
    options = (regularisation, physics.LOSS_CURVATURE[settings.loss], settings.optimal_steps)
    if loss_scaler is None:
        update = Update(objective, optimizers, *options)
    else:
        update = ScaledUpdate(objective, optimizers, *options, loss_scaler, loss_unit)
    if communicator.size > 1 and not communicator.sums_in_graph:
        return HostSummedStep(update, communicator)
    weights = ms.ParameterTuple([p for optimizer in update.optimizers for p in optimizer.parameters])
    return CompiledStep(update, weights if communicator.size > 1 else None)


def diagonal_estimate(product, probe, window=0, image_shape=None):
    """The Hutchinson estimate ``|v * Cv|`` of a curvature diagonal from a Rademacher ``probe`` v and its
    ``product`` Cv: averaged over the kernel window of a 4-D convolution weight (the paper's spatial
    averaging), or, with ``window`` px, over the neighbourhood of each measured pixel of an image
    (the last two axes, or ``image_shape`` for a flat object), unmeasured (zero) pixels left out."""
    diagonal = np.abs(product.asnumpy() * probe.asnumpy())
    if diagonal.ndim == 4:
        diagonal = np.broadcast_to(diagonal.mean(axis=(2, 3), keepdims=True), diagonal.shape)
    elif window:
        image = diagonal.reshape(image_shape or diagonal.shape)
        size = (1,) * (image.ndim - 2) + (window, window)
        measured = uniform_filter((image > 0).astype(np.float32), size, mode='constant')
        averaged = uniform_filter(image, size, mode='constant')
        diagonal = np.where(image > 0, averaged / np.maximum(measured, 1e-6), 0.0).reshape(diagonal.shape)
    return Tensor(np.ascontiguousarray(diagonal, np.float32))


class HessianRefresh:
    """New Hutchinson estimates of the curvature diagonals for a step's second-order optimizers.

    ``refresh(inputs, rng)`` draws Rademacher vectors v and hands each optimizer the estimates
    :func:`diagonal_estimate` makes from ``C v``, C its curvature summed over the processes: the
    loss's Hessian by double backpropagation (``curvature='hessian'``), or the data term's
    Gauss-Newton matrix written out (``'gauss_newton'``, object and probe only, one of them per refresh
    in turn, each with its own vector: a vector over both would add the noise of their coupling; the
    object, flat, is averaged as an ``object_shape`` image). Does nothing without a second-order
    optimizer.
    """

    def __init__(self, step, communicator, object_shape):
        second_order = [o for o in step.update.optimizers if getattr(o, 'needs_hessian', False)]
        self.exact = [o for o in second_order if o.curvature == 'hessian']
        # object and probe slots (re, im) in the Gauss-Newton product's layout
        slots = {id(step.update.object_optimizer): (0, 1), id(step.update.probe_optimizer): (2, 3)}
        self.gauss_newton = [(o, slots.get(id(o))) for o in second_order if o.curvature == 'gauss_newton']
        if any(slot is None for _, slot in self.gauss_newton):
            raise ValueError("network_update.options: curvature 'gauss_newton' is the data term's, for object and "
                             "probe; the network's AdaHessian takes 'hessian'")
        self.communicator = communicator
        self.image_shapes = (object_shape, object_shape, None, None)
        self.parameters = [p for o in self.exact for p in o.parameters]
        self.product = HessianVectorProduct(ObjectiveLoss(step.objective), self.parameters) if self.exact else None
        self.gauss_newton_product = GaussNewtonProduct(step.objective) if self.gauss_newton else None
        self.refreshes = 0

    def unmeasured(self):
        """Whether a paper's AdaHessian of this step holds no curvature yet (D all zero, as before its first
        refresh): its next step must refresh first, or it would divide by ``eps``. Read from the optimizer
        state, so a resumed run answers as the uninterrupted one."""
        return any(float(ops.abs(d).max().asnumpy()) == 0 for o in self.exact for d in o.hessian_diagonal)

    def refresh(self, inputs, rng):
        if self.product is not None:
            probes = rademacher_like(self.parameters, rng)
            self.product.set_vectors(probes)
            products = allreduce_tensors(self.communicator, self.product(*inputs))
            first = 0
            for optimizer in self.exact:
                count = len(optimizer.parameters)
                optimizer.refresh_hessian([diagonal_estimate(p, v, optimizer.spatial_window) for p, v in
                                           zip(products[first:first + count], probes[first:first + count])])
                first += count
        if self.gauss_newton_product is not None:
            # one group per refresh, in turn: a vector over both would add the object-probe block's noise
            optimizer, slot = self.gauss_newton[self.refreshes % len(self.gauss_newton)]
            self.refreshes += 1
            shapes = self.gauss_newton_product.vectors
            probes = [ops.zeros_like(v) for v in shapes]
            for k, drawn in zip(slot, rademacher_like([shapes[k] for k in slot], rng)):
                probes[k] = drawn
            self.gauss_newton_product.set_vectors(probes)
            products = allreduce_tensors(self.communicator, self.gauss_newton_product(*inputs))
            optimizer.refresh_hessian([diagonal_estimate(products[k], probes[k], optimizer.spatial_window,
                                                         self.image_shapes[k]) for k in slot])


#: Where the scan lights the object below this fraction of its brightest, the epoch momentum fades
#: (weight ``w / (w + MOMENTUM_FADE max w)``), as PtychoShelves' LSQML weighs its momentum.
MOMENTUM_FADE = 0.1


class EpochMomentum(nn.Cell):
    """Momentum of the object over epochs, as mPIE (Maiden, Johnson and Li, Optica 4, 736 (2017)) and
    PtychoShelves' LSQML add it to their step rules: the minibatch steps converge fast on what one batch
    determines and slowly on what only the whole scan does (the low spatial frequencies of a sparse or
    large scan); the epochs' changes add up along those slow directions.

    After each epoch, with ``c`` its change of the object and ``eta`` the momentum,
    ``velocity = c + eta * velocity`` and ``object += eta * weight * velocity``, the weight
    ``w / (w + MOMENTUM_FADE max w)`` of the scan's illumination ``w`` (sum of |P|^2 per object pixel,
    (Ho * Wo,)). The object at the epoch's start and the velocity, float32 (Ho * Wo,) real and imaginary
    parts, are Parameters: rollbacks and checkpoints hold them.
    """

    def __init__(self, size, eta):
        super().__init__()
        if not 0.0 <= eta < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {eta!r}")
        self.eta = eta
        zeros = np.zeros(size, np.float32)
        self.start_re, self.start_im, self.velocity_re, self.velocity_im = (
            ms.Parameter(Tensor(zeros), name=f"momentum_{name}", requires_grad=False)
            for name in ('start_re', 'start_im', 'velocity_re', 'velocity_im'))

    def begin(self, object_re, object_im):
        """Remember the object (flat float32 Parameters) at an epoch's start."""
        ops.assign(self.start_re, object_re)
        ops.assign(self.start_im, object_im)

    def push(self, object_re, object_im, illumination):
        """Move the object on by its momentum after an epoch (class docstring); ``illumination`` (Ho * Wo,)."""
        weight = illumination / (illumination + MOMENTUM_FADE * illumination.max() + 1e-30)
        for part, start, velocity in ((object_re, self.start_re, self.velocity_re),
                                      (object_im, self.start_im, self.velocity_im)):
            now = part.asnumpy().copy()
            speed = now - start.asnumpy() + self.eta * velocity.asnumpy()
            ops.assign(velocity, Tensor(speed.astype(np.float32)))
            ops.assign(part, Tensor((now + self.eta * weight * speed).astype(np.float32)))

    def stop(self):
        """Forget the velocity (the gauge moved the object under it, an epoch was rolled back, or the data are
        fitted down to their noise)."""
        for velocity in (self.velocity_re, self.velocity_im):
            ops.assign(velocity, ops.zeros_like(velocity))
