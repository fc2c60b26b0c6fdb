"""One optimisation step: gradients, their sum over the processes, step directions and lengths, updates.

A step (:class:`Update`) turns a minibatch's gradients into updates:

1. **Directions.** Object and probe gradients are divided by the illumination they saw in the batch
   (``sum |P|^2`` per object pixel, ``sum |O_j|^2`` per probe pixel, plus
   ``illumination_regularisation`` times its maximum), the step normalisation of ePIE/LSQML: a
   unit step along them is a projection-like update whatever the photon count. Second-order
   optimizers bring their own curvature and get the plain gradients.
2. **Lengths.** With ``optimal_steps`` (optimizer ``sgd``), the object and probe steps are scaled by
   the lengths that minimise the data term's quadratic model along the two directions, as LSQML
   (Odstrcil et al., Opt. Express 26, 3108 (2018)) does: the exit-wave changes ``v_O = P dO_j`` and
   ``v_P = dP O_j`` are fitted to the residual ``r = -dL/dpsi`` the data ask for,
   ``min_a sum_j |r_j / c - a_O v_O - a_P v_P|^2`` with c the data term's curvature, plus the
   object prior's own quadratic term. A 2 x 2 system per batch; lengths clipped to
   ``[0, MAX_STEP_LENGTH]``. No learning rate to tune: the rate scales the optimal length.
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
from mindspore import nn, ops

from . import physics
from .distributed import allreduce_tensors
from .objective import ObjectiveLoss
from .optim import HessianVectorProduct, rademacher_like

#: The longest step, in units of the normalised (projection-like) step.
MAX_STEP_LENGTH = 4.0


def clipped(length):
    """A step length limited to [0, MAX_STEP_LENGTH]."""
    return ops.clip_by_value(length, 0.0, MAX_STEP_LENGTH)


class Update(nn.Cell):
    """Directions, step lengths and optimizer steps of one minibatch (module docstring).

    ``objective`` supplies the exit-wave changes of unit steps (``step_products``); ``optimizers``
    are the object's, the probe's and the network's (or None); ``optimal_steps`` turns on the
    step lengths of the groups whose optimizer takes them (``takes_step_lengths``).
    """

    def __init__(self, objective, optimizers, regularisation, curvature, optimal_steps=True):
        super().__init__()
        self.objective = objective
        self.object_optimizer, self.probe_optimizer, network_optimizer = optimizers
        self.network_optimizers = nn.CellList([network_optimizer] if network_optimizer is not None else [])
        self.regularisation = regularisation
        self.curvature = curvature
        # second-order optimizers bring their own curvature: no illumination normalisation for them
        self.normalise_object = not getattr(self.object_optimizer, 'needs_hessian', False)
        self.normalise_probe = not getattr(self.probe_optimizer, 'needs_hessian', False)
        self.object_lengths = optimal_steps and getattr(self.object_optimizer, 'takes_step_lengths', False)
        self.probe_lengths = optimal_steps and getattr(self.probe_optimizer, 'takes_step_lengths', False)

    @property
    def optimizers(self):
        return [self.object_optimizer, self.probe_optimizer] + list(self.network_optimizers)

    def directions(self, grads, object_illumination, patch_power, probe_on):
        """The gradients the optimizers take: object and probe ones normalised (module docstring), the
        probe's times ``probe_on`` (float 0/1: probe refinement switched without recompiling)."""
        object_scale = 1.0
        if self.normalise_object:
            object_scale = physics.inverse_illumination(object_illumination, self.regularisation, self.curvature)
        probe_scale = probe_on
        if self.normalise_probe:
            probe_scale = physics.inverse_illumination(patch_power, self.regularisation, self.curvature,
                                                       robust=True) * probe_on
        return (grads[0] * object_scale, grads[1] * object_scale, grads[2] * probe_scale,
                grads[3] * probe_scale) + grads[4:]

    def step_terms(self, directions, residual, prior, indices):
        """This process's sums of the step-length system, (5,): ``c <v_O, v_O> + 2 <dO, dO>_w``,
        ``c <v_O, v_P>``, ``c <v_P, v_P>``, ``<r, v_O> + 2 <prior, dO>_w``, ``<r, v_P>``; ``prior`` is
        ``(N - O re, im, weight)`` of the object's prior (zero without one)."""
        if not (self.object_lengths or self.probe_lengths):
            return ops.zeros(5, ms.float32)
        object_direction = (-directions[0], -directions[1])
        (object_re, object_im), (probe_re, probe_im) = self.objective.step_products(
            indices, object_direction, (-directions[2], -directions[3]))
        change_re, change_im = ops.gather(object_direction[0], indices, 0), ops.gather(object_direction[1], indices, 0)
        prior_re, prior_im, weight = prior
        c = self.curvature
        return ops.stack([
            c * (ops.square(object_re) + ops.square(object_im)).sum()
            + 2.0 * (weight * (ops.square(change_re) + ops.square(change_im))).sum(),
            c * (object_re * probe_re + object_im * probe_im).sum(),
            c * (ops.square(probe_re) + ops.square(probe_im)).sum(),
            (residual[0] * object_re + residual[1] * object_im).sum()
            + 2.0 * (weight * (prior_re * change_re + prior_im * change_im)).sum(),
            (residual[0] * probe_re + residual[1] * probe_im).sum()])

    def lengths(self, terms):
        """Step lengths (object, probe) from the summed ``terms``, clipped to [0, MAX_STEP_LENGTH]: both
        from the 2 x 2 system, or one with the other group's length 1, or 1 for a group that takes none."""
        a, b, d, u, v = terms[0], terms[1], terms[2], terms[3], terms[4]
        damping = 1e-6 * (a + d) + 1e-30  # keeps the system regular when the probe is held fixed (d = 0)
        a, d = a + damping, d + damping
        if self.object_lengths and self.probe_lengths:
            determinant = a * d - b * b
            return clipped((u * d - v * b) / determinant), clipped((a * v - b * u) / determinant)
        if self.object_lengths:
            return clipped((u - b) / a), 1.0
        if self.probe_lengths:
            return 1.0, clipped((v - b) / d)
        return 1.0, 1.0

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
        return super().directions(grads[:4] + network, object_illumination, patch_power, probe_on)

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


def make_step(objective, optimizers, settings, communicator, loss_scaler=None, loss_unit=1.0):
    """The step of ``objective`` with ``optimizers`` (object, probe, network or None), its sums over the
    processes formed as ``communicator`` does it (module docstring)."""
    options = (settings.illumination_regularisation, physics.LOSS_CURVATURE[settings.loss], settings.optimal_steps)
    if loss_scaler is None:
        update = Update(objective, optimizers, *options)
    else:
        update = ScaledUpdate(objective, optimizers, *options, loss_scaler, loss_unit)
    if communicator.size > 1 and not communicator.sums_in_graph:
        return HostSummedStep(update, communicator)
    weights = ms.ParameterTuple([p for optimizer in update.optimizers for p in optimizer.parameters])
    return CompiledStep(update, weights if communicator.size > 1 else None)


class HessianRefresh:
    """New Hutchinson estimates of the Hessian diagonal for a step's second-order optimizers.

    ``refresh(inputs, rng)`` draws Rademacher vectors v, computes ``H v`` of the step's loss on
    ``inputs`` (summed over the processes) and hands each optimizer its part. Does nothing when
    the step has no optimizer with ``needs_hessian``.
    """

    def __init__(self, step, communicator):
        self.optimizers = [o for o in step.update.optimizers if getattr(o, 'needs_hessian', False)]
        self.parameters = [p for o in self.optimizers for p in o.parameters]
        self.communicator = communicator
        self.product = (HessianVectorProduct(ObjectiveLoss(step.objective), self.parameters)
                        if self.optimizers else None)

    def refresh(self, inputs, rng):
        if self.product is None:
            return
        probes = rademacher_like(self.parameters, rng)
        self.product.set_vectors(probes)
        products = allreduce_tensors(self.communicator, self.product(*inputs))
        first = 0
        for optimizer in self.optimizers:
            count = len(optimizer.parameters)
            optimizer.refresh_hessian(products[first:first + count], probes[first:first + count])
            first += count
