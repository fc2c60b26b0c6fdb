"""One optimisation step: gradients, their sum over the processes, the optimizers' updates.

How the processes' gradients are summed is chosen once, by :func:`make_step`, from the
communicator (:mod:`.distributed`):

* one process: :class:`CompiledStep`, gradient and update in one graph;
* MindSpore's collectives (``msrun``; HCCL, NCCL, mccl): :class:`CompiledStep` with the sums inside
  that graph, so on a device the gradients never leave it;
* MPI (``mpiexec``): :class:`HostSummedStep`, the gradient graph, one host allreduce, the update graph.

Every step is called as ``step(amplitudes, intensities, mask, indices, probe_on)`` and returns the
loss of the global batch and the per-frame errors ``(fourier, photon, exit)`` of this process's
frames, before the step.
"""
import mindspore as ms
from mindspore import nn, ops

from . import physics
from .distributed import allreduce_tensors
from .objective import Gradient, ObjectiveLoss
from .optim import HessianVectorProduct, rademacher_like


class Update(nn.Cell):
    """One optimizer step per parameter group from (global) gradients and illumination.

    ``construct(grads, object_illumination, patch_power, probe_on)`` as :class:`~.objective.Gradient`
    returns them: object gradients (first two) are divided by the batch illumination and probe
    gradients (next two) by the batch object power (the ePIE/LSQML step normaliser), unless their
    optimizer is second-order; ``probe_on`` (float 0/1) switches probe refinement without
    recompiling; the network's optimizer, if any, takes the rest.
    """

    def __init__(self, object_optimizer, probe_optimizer, network_optimizer, regularisation, curvature):
        super().__init__()
        self.object_optimizer, self.probe_optimizer = object_optimizer, probe_optimizer
        self.network_optimizers = nn.CellList([network_optimizer] if network_optimizer is not None else [])
        self.regularisation = regularisation
        self.curvature = curvature
        # second-order optimizers bring their own curvature: no illumination normalisation for them
        self.normalise_object = not getattr(object_optimizer, 'needs_hessian', False)
        self.normalise_probe = not getattr(probe_optimizer, 'needs_hessian', False)

    @property
    def optimizers(self):
        return [self.object_optimizer, self.probe_optimizer] + list(self.network_optimizers)

    def construct(self, grads, object_illumination, patch_power, probe_on):
        object_scale = 1.0
        if self.normalise_object:
            object_scale = physics.inverse_illumination(object_illumination, self.regularisation, self.curvature)
        probe_scale = probe_on
        if self.normalise_probe:
            probe_scale = physics.inverse_illumination(patch_power, self.regularisation, self.curvature,
                                                       robust=True) * probe_on
        self.object_optimizer((grads[0] * object_scale, grads[1] * object_scale))
        self.probe_optimizer((grads[2] * probe_scale, grads[3] * probe_scale))
        for optimizer in self.network_optimizers:
            optimizer(grads[4:])
        return True


class ScaledUpdate(Update):
    """:class:`Update` of gradients scaled by a ``mindspore.amp.DynamicLossScaler`` and ``1 / loss_unit``
    (float16): they are unscaled first; when any overflowed, nothing moves and the scale shrinks.
    The scale and its step counter are attributes of the cell, so checkpoints hold them."""

    def __init__(self, optimizers, regularisation, curvature, loss_scaler, loss_unit):
        super().__init__(*optimizers, regularisation, curvature)
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit
        self.loss_scale, self.loss_scale_steps = loss_scaler.scale_value, loss_scaler.counter

    def construct(self, grads, object_illumination, patch_power, probe_on):
        grads = self.loss_scaler.unscale(grads)
        finite = ms.amp.all_finite(grads)
        self.loss_scaler.adjust(finite)
        if finite:
            super().construct(tuple(g * self.loss_unit for g in grads), object_illumination, patch_power, probe_on)
        return finite


class CompiledStep(nn.Cell):
    """:class:`~.objective.Gradient` then :class:`Update` in one graph; given the ``summed_weights``
    (processes launched by ``msrun``), loss, gradients and illumination are summed over the ranks
    inside it by MindSpore's collectives."""

    def __init__(self, gradient, update, summed_weights=None):
        super().__init__()
        self.gradient = gradient
        self.update = update
        self.sum_over_ranks = summed_weights is not None
        if self.sum_over_ranks:
            self.sum_gradients = nn.DistributedGradReducer(summed_weights, mean=False)
            self.sum = ops.AllReduce()

    def construct(self, amplitudes, intensities, mask, indices, probe_on):
        outputs, grads, object_illumination, patch_power = self.gradient(amplitudes, intensities, mask, indices)
        if self.sum_over_ranks:
            grads = self.sum_gradients(grads)
            object_illumination, patch_power = self.sum(object_illumination), self.sum(patch_power)
            outputs = (self.sum(outputs[0]),) + outputs[1:]
        self.update(grads, object_illumination, patch_power, probe_on)
        return outputs


class HostSummedStep(nn.Cell):
    """The gradient graph, one allreduce on the host (MPI, through ``communicator``), the update graph."""

    def __init__(self, gradient, update, communicator):
        super().__init__()
        self.gradient = gradient
        self.update = update
        self.communicator = communicator

    def __call__(self, amplitudes, intensities, mask, indices, probe_on):
        (loss, fourier, photon, exit_error), grads, object_illumination, patch_power = self.gradient(
            amplitudes, intensities, mask, indices)
        loss, *grads, object_illumination, patch_power = allreduce_tensors(
            self.communicator, (loss,) + tuple(grads) + (object_illumination, patch_power))
        # mutable: a tuple argument is otherwise a constant of the graph, recompiled for every new value
        self.update(ms.mutable(tuple(grads)), object_illumination, patch_power, probe_on)
        return loss, fourier, photon, exit_error


def make_step(objective, optimizers, settings, communicator, loss_scaler=None, loss_unit=1.0):
    """The step of ``objective`` with ``optimizers`` (object, probe, network or None), its gradients
    summed over the processes as ``communicator`` does it (module docstring)."""
    weights = ms.ParameterTuple([p for optimizer in optimizers if optimizer is not None for p in optimizer.parameters])
    gradient = Gradient(objective, weights, loss_scaler, loss_unit)
    curvature = physics.LOSS_CURVATURE[settings.loss]
    if loss_scaler is None:
        update = Update(*optimizers, settings.illumination_regularisation, curvature)
    else:
        update = ScaledUpdate(optimizers, settings.illumination_regularisation, curvature, loss_scaler, loss_unit)
    if communicator.size > 1 and not communicator.sums_in_graph:
        return HostSummedStep(gradient, update, communicator)
    return CompiledStep(gradient, update, weights if communicator.size > 1 else None)


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
        self.product = (HessianVectorProduct(ObjectiveLoss(step.gradient.objective), self.parameters)
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
