"""Joint physics-informed solver: network weights, object and probe trained together.

The core of ptypy-npu. It takes plain arrays (no PtyPy import), so it runs and is
tested where PtyPy is absent; the PtyPy engine (:mod:`ptypy_npu.engine`) and the CLI
translate their inputs into a :class:`ScanData`.

Per minibatch of frames the compiled step evaluates

* the data term of the object: ``ell(I_j, |F(P O_j)|^2)`` for each frame j, where O_j is
  the object patch under frame j and ``ell`` is the Gaussian-amplitude or Poisson loss;
* with a network N (after ``network_start`` epochs of physics-only refinement): its own
  data term ``ell(I_j, |F(P N(d_j))|^2)`` on the patch it predicts from the diffraction
  amplitude d_j, and two terms on the squared exit-wave difference ``D_j = sum |P (N(d_j) - O_j)|^2``:
  ``network_consistency * D_j`` (photons) pulls the network toward the object, which teaches
  it what one frame cannot fix; ``consistency * D_j / max|P|^2`` (object units) pulls the
  object toward the network, a prior that regularises low-dose scans and fades at high dose;

then one optimizer step per parameter group. Object and probe gradients are divided by
the illumination they saw in the batch (``sum |P|^2`` per object pixel, ``sum |O_j|^2``
per probe pixel, plus ``illumination_regularisation`` times the maximum), the step
normalisation of ePIE/LSQML; with plain SGD and learning rate ~1 this is a projection-like
update independent of the photon count (DESIGN.md section 2b).
"""
import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from . import physics, plugins
from .distributed import SingleProcess
from .networks import network_input, predict_patches, set_compute_precision
from .optim import HessianVectorProduct, rademacher_like

DEVICES = ('CPU', 'GPU', 'Ascend')
#: Compute precisions of the network; the physics (FFTs, losses) and all weights stay float32.
PRECISIONS = {'float32': ms.float32, 'float16': ms.float16, 'bfloat16': ms.bfloat16}
#: Dynamic loss scaling of float16 training: initial scale, factor, overflow-free steps before it grows
#: (the defaults of PyTorch's GradScaler; MindSpore's DynamicLossScaler runs it)
LOSS_SCALE = (2.0 ** 16, 2, 2000)


@dataclasses.dataclass
class ScanData:
    """One ptychographic scan as arrays.

    intensities : (N, H, W) float, measured photons per pixel, zero frequency in the
        frame centre (PtyPy's convention).
    positions : (N, 2) int, top-left object pixel (row, column) of each frame's patch.
    probe : (M, H, W) complex, probe modes; scaled so ``|F(P O)|^2`` is in photons.
    obj : (Ho, Wo) complex, initial object.
    mask : (N, H, W) bool or None (all valid); False marks dead or saturated pixels.
    propagator : (pre, post) complex (H, W) phase factors (PtyPy's ``pre_fft``,
        ``post_fft``), or None for the centred FFT.
    geometry : dict of what is known of ``wavelength``, ``distance`` (sample-detector),
        ``detector_pixel`` and ``object_pixel``, all in metres; empty when unknown.
    """
    intensities: np.ndarray
    positions: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    mask: np.ndarray = None
    propagator: tuple = None
    geometry: dict = dataclasses.field(default_factory=dict)

    def validate(self):
        """Raise ``ValueError`` naming the array and what was expected; return self."""
        intensities = np.asarray(self.intensities)
        if intensities.ndim != 3 or intensities.shape[0] == 0:
            raise ValueError(f"intensities must be a non-empty (N, H, W) stack, got shape {intensities.shape}")
        n, h, w = intensities.shape
        if not np.all(np.isfinite(intensities)) or intensities.min() < 0:
            raise ValueError("intensities must be finite and >= 0 (photon counts)")
        mask = np.ones_like(intensities, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool)
        if mask.shape != intensities.shape:
            raise ValueError(f"mask must have the shape of the intensities {intensities.shape}, got {mask.shape}")
        empty = np.flatnonzero(mask.sum(axis=(1, 2)) == 0)
        if empty.size:
            raise ValueError(f"mask: frames {empty[:10].tolist()} are entirely masked; drop them from the scan")
        dark = np.flatnonzero((intensities * mask).sum(axis=(1, 2)) == 0)
        if dark.size:
            raise ValueError(f"intensities: frames {dark[:10].tolist()} hold no photons; drop them from the scan")
        probe = np.asarray(self.probe)
        if probe.ndim == 2:
            probe = probe[None]
        if probe.ndim != 3 or probe.shape[1:] != (h, w):
            raise ValueError(f"probe must be (modes, {h}, {w}) to match the frames, got shape {np.shape(self.probe)}")
        obj = np.asarray(self.obj)
        if obj.ndim != 2 or obj.shape[0] < h or obj.shape[1] < w:
            raise ValueError(f"obj must be a 2D array at least one frame ({h} x {w}) large, got shape {obj.shape}")
        positions = np.asarray(self.positions)
        if positions.shape != (n, 2) or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be ({n}, 2) integer object pixels, got {positions.shape} {positions.dtype}")
        outside = np.flatnonzero((positions < 0).any(1) | (positions[:, 0] + h > obj.shape[0])
                                 | (positions[:, 1] + w > obj.shape[1]))
        if outside.size:
            raise ValueError(f"positions: frames {outside[:10].tolist()} reach outside the object {obj.shape}")
        pre, post = physics.centred_fft_factors((h, w)) if self.propagator is None else self.propagator
        if np.shape(pre) != (h, w) or np.shape(post) != (h, w):
            raise ValueError(f"propagator factors must be ({h}, {w}), got {np.shape(pre)} and {np.shape(post)}")
        return dataclasses.replace(self, intensities=intensities.astype(np.float32), mask=mask, probe=probe,
                                   obj=obj, positions=positions.astype(np.int64), propagator=(pre, post))


#: Learning rate of each built-in optimizer per parameter group, the best of sweeps on
#: MoonFlowerScan (``benchmarks/optimizers.py``); a group whose ``learning_rate`` is None
#: takes its optimizer's. Object and probe rates act on illumination-normalised gradients
#: (except AdaHessian's); Lion's sign steps want rates 3-10x smaller than Adam's.
DEFAULT_LEARNING_RATES = {
    'network_group': {'adam': 2e-3, 'adamw': 2e-3, 'lion': 2e-4, 'adahessian': 0.5},
    'object_group': {'sgd': 1.5, 'adam': 0.03, 'adamw': 0.02, 'lion': 0.01, 'adahessian': 0.1},
    'probe_group': {'sgd': 1.0, 'adam': 3.0, 'adamw': 2.0, 'lion': 1.0, 'adahessian': 0.1},
}


#: Options of a built-in optimizer on a group that differ from the optimizer's own defaults,
#: the measured best on MoonFlowerScan (benchmarks/optimizers.py); a group's own options override them.
#: Lion on the object: a batch lights few pixels, so Lion leaves the others (zero gradient) alone,
#: and a shorter moment memory suits pixels whose moment is updated only when lit.
DEFAULT_OPTIONS = {'object_group': {'lion': {'lazy': True, 'betas': (0.5, 0.9)}}}


@dataclasses.dataclass
class GroupSettings:
    """Optimizer of one parameter group: a name from the optimizer plugins, its rate (None: the
    optimizer's entry in :data:`DEFAULT_LEARNING_RATES`), its options (over those in
    :data:`DEFAULT_OPTIONS`)."""
    optimizer: str
    learning_rate: float = None
    options: dict = dataclasses.field(default_factory=dict)

    def rate(self, group):
        """The learning rate of this optimizer on ``group`` ('object_group', ...)."""
        if self.learning_rate is not None:
            return self.learning_rate
        try:
            return DEFAULT_LEARNING_RATES[group][self.optimizer]
        except KeyError:
            raise ValueError(f"{group}.learning_rate: optimizer {self.optimizer!r} has no default rate for this "
                             f"group (defaults: {DEFAULT_LEARNING_RATES[group]}); give one") from None

    def optimizer_options(self, group):
        """The options this optimizer is built with on ``group``: the group's defaults, then ours."""
        return {**DEFAULT_OPTIONS.get(group, {}).get(self.optimizer, {}), **self.options}


def _default_network():
    return {'name': 'W1Net', 'depth': 3, 'width': 8, 'binning': 2}


@dataclasses.dataclass
class SolverSettings:
    """Settings of :class:`JointSolver`; the PtyPy engine's parameter tree mirrors them.

    network : dict with ``name`` and the network's settings, or None for the
        physics-only solver (object and probe refined, no network: the ablation).
    network_start : epochs of physics-only refinement before the network joins; the
        network then learns from a sensible object instead of the initial guess, and
        the first epochs cost what the physics-only solver costs.
    batch_size : frames per step; the last batch of an epoch is filled up with frames
        from the start of the shuffled order, so every step has the same shape.
    loss : 'gaussian' (amplitude) or 'poisson'.
    consistency : weight of the prior tying object and network patches,
        ``consistency * sum |P|^2 |N(d_j) - O_j|^2 / max |P|^2``, in object units (the
        data terms are in photons, so the prior matters at low dose and fades at high dose).
    network_consistency : weight of the same squared difference in photons (like the data
        terms) acting on the network only: the object's patches teach the network, which
        its own single-frame data term cannot (one frame does not fix the phase).
    probe_update_start : epochs before the probe starts to be refined (None: never).
    illumination_regularisation : delta in the step normaliser ``1/(w + delta max w)``.
    hessian_interval : steps between refreshes of the Hessian-diagonal estimate of
        second-order optimizers (AdaHessian); each refresh costs about 4 gradients, so
        refreshing every step (the paper's setting) makes a step ~5x Adam's and every 10th step
        ~1.5-2x; a stale estimate can make object steps diverge.
    max_divergences : rollbacks (NaN/Inf loss, learning rates halved) in a row before
        :meth:`JointSolver.run` gives up.
    precision : 'float32', or mixed precision: the network computes in 'float16' or
        'bfloat16' while its weights (the optimizers' master copies), the object, the
        probe and the physics stay float32. float16 adds dynamic loss scaling
        (:data:`LOSS_SCALE`): a step whose gradients overflow is skipped and the scale
        halved. bfloat16 has float32's range and needs none; MindSpore's CPU kernels
        lack it (Ascend and GPU have it).
    """
    network: dict = dataclasses.field(default_factory=_default_network)
    network_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('adam'))
    object_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('sgd'))
    probe_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('sgd'))
    network_start: int = 30
    batch_size: int = 4
    loss: str = 'gaussian'
    consistency: float = 4.0
    network_consistency: float = 1.0
    probe_update_start: int = 0
    illumination_regularisation: float = 0.1
    hessian_interval: int = 1
    max_divergences: int = 3
    seed: int = 0
    device: str = 'CPU'
    precision: str = 'float32'

    def validate(self, n_frames=None):
        """Raise ``ValueError`` naming the setting and the accepted values."""
        from .optim import check_learning_rate
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.loss not in physics.LOSSES:
            raise ValueError(f"loss must be one of {', '.join(physics.LOSSES)}, got {self.loss!r}")
        for name, minimum in (('batch_size', 1), ('max_divergences', 0), ('hessian_interval', 1),
                              ('network_start', 0), ('seed', 0), ('probe_update_start', 0)):
            value = getattr(self, name)
            if name == 'probe_update_start' and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}"
                                 f"{' or None' if name == 'probe_update_start' else ''}, got {value!r}")
        if n_frames is not None and self.batch_size > n_frames:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {n_frames} frames of the scan")
        for name in ('consistency', 'network_consistency', 'illumination_regularisation'):
            check_learning_rate(name, getattr(self, name))  # the same rule: a finite number >= 0
        for group in ('network_group', 'object_group', 'probe_group'):
            settings = getattr(self, group)
            if not isinstance(settings, GroupSettings) or not isinstance(settings.options, dict):
                raise ValueError(f"{group} must be GroupSettings(optimizer, learning_rate, options dict), "
                                 f"got {settings!r}")
            plugins.optimizer_factory(settings.optimizer, parameter=f"{group}.optimizer")
            check_learning_rate(f"{group}.learning_rate", settings.rate(group))
        if self.network is not None:
            if not isinstance(self.network, dict) or 'name' not in self.network:
                raise ValueError("network must be a dict naming the network ('name') and its settings, "
                                 f"or None for the physics-only solver; got {self.network!r}")
            plugins.network_factory(self.network['name'])
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision != 'float32' and self.network is None:
            raise ValueError(f"precision {self.precision!r} sets the network's arithmetic, but network is None; "
                             "use precision 'float32'")
        if self.precision == 'bfloat16' and self.device == 'CPU':
            raise ValueError("precision 'bfloat16' needs device 'Ascend' or 'GPU': MindSpore's CPU kernels have "
                             "no bfloat16 convolution (use 'float16' or 'float32' on the CPU)")
        if self.precision == 'float16' and self.network_group.optimizer == 'adahessian':
            raise ValueError("precision 'float16' with network_group.optimizer 'adahessian': the Hessian-vector "
                             "products are not loss-scaled; use precision 'float32' or 'bfloat16'")


def select_device(device):
    """Point MindSpore at ``device`` in graph mode; ``ValueError`` if it cannot be used."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    ms.set_context(mode=ms.GRAPH_MODE)
    if ms.get_context('device_target') == device:
        return  # already there; MindSpore refuses set_device once its runtime has started
    try:
        ms.set_device(device)
    except Exception as error:
        raise ValueError(f"device {device!r} cannot be used by MindSpore here "
                         f"(it runs on {ms.get_context('device_target')}): {error}") from error


def patch_indices(positions, frame_shape, object_shape):
    """Flat object indices (N, H, W) int32 of the pixels each frame illuminates."""
    h, w = frame_shape
    rows = positions[:, 0, None, None] + np.arange(h)[None, :, None]
    cols = positions[:, 1, None, None] + np.arange(w)[None, None, :]
    return (rows * object_shape[1] + cols).astype(np.int32)


def _pair(array, name):
    return (Parameter(Tensor(np.ascontiguousarray(array.real, dtype=np.float32)), name=f"{name}_re"),
            Parameter(Tensor(np.ascontiguousarray(array.imag, dtype=np.float32)), name=f"{name}_im"))


class JointObjective(nn.Cell):
    """Loss of one minibatch and PtyPy's per-frame errors of the object's model.

    ``construct(amplitudes, intensities, mask, indices)`` with amplitudes (B, 1, H, W)
    network input, intensities and mask (B, H, W), indices (B, H, W) int32 flat object
    pixels; returns ``(loss, fourier_error, photon_error, exit_error)``, the errors (B,).
    The object (flat, Ho * Wo) and probe (M, H, W) are real/imag Parameter pairs, shared
    by the objectives with and without network.
    """

    def __init__(self, object_pair, probe_pair, propagator, network, loss, consistency=0.0, network_consistency=0.0):
        super().__init__()
        self.object_re, self.object_im = object_pair
        self.probe_re, self.probe_im = probe_pair
        self.forward_model = physics.PtychoForward(physics.FarfieldPropagator(*propagator))
        self.data_term = physics.LOSSES[loss]
        self.amplitude_loss = loss == 'gaussian'  # its data term is the Fourier error's numerator
        self.network = network
        self.use_network = network is not None
        self.consistency = consistency
        self.network_consistency = network_consistency

    def patches(self, indices):
        """Object patches (B, H, W) as a real/imag pair."""
        return ops.gather(self.object_re, indices, 0), ops.gather(self.object_im, indices, 0)

    def network_patches(self, amplitudes):
        """The network's object patches (B, H, W) as a float32 real/imag pair, whatever its precision."""
        log_amplitude, phase = self.network(amplitudes)
        log_amplitude, phase = log_amplitude.astype(ms.float32), phase.astype(ms.float32)
        amplitude = ops.exp(log_amplitude)
        return amplitude * ops.cos(phase), amplitude * ops.sin(phase)

    def construct(self, amplitudes, intensities, mask, indices):
        patch_re, patch_im = self.patches(indices)
        model = self.forward_model(self.probe_re, self.probe_im, patch_re, patch_im)
        data_term = self.data_term(model, intensities, mask)
        loss = data_term.sum()
        misfit = data_term if self.amplitude_loss else None
        fourier, photon = physics.fourier_and_photon_errors(model, intensities, mask, misfit)
        exit_error = ops.zeros_like(fourier)
        if self.use_network:
            # the probe is refined by the object's data term alone: a half-trained network must not bend it
            probe_re = ops.stop_gradient(self.probe_re)
            probe_im = ops.stop_gradient(self.probe_im)
            net_re, net_im = self.network_patches(amplitudes)
            net_model = self.forward_model(probe_re, probe_im, net_re, net_im)
            # |P (N - O)|^2 summed over modes = sum_m |P_m|^2 |N - O|^2: no exit waves needed
            illumination = (ops.square(probe_re) + ops.square(probe_im)).sum(axis=0)
            # network <- object, in photons like the data terms: the object's patches teach the network
            teach_re, teach_im = net_re - ops.stop_gradient(patch_re), net_im - ops.stop_gradient(patch_im)
            exit_error = (illumination * (ops.square(teach_re) + ops.square(teach_im))).sum(axis=(1, 2))
            # object <- network, in object units: a prior whose pull fades against the data term as the dose rises
            prior_re, prior_im = ops.stop_gradient(net_re) - patch_re, ops.stop_gradient(net_im) - patch_im
            prior = (illumination * (ops.square(prior_re) + ops.square(prior_im))).sum() / illumination.max()
            loss = loss + self.data_term(net_model, intensities, mask).sum() \
                + self.network_consistency * exit_error.sum() + self.consistency * prior
            exit_error = exit_error / (intensities.shape[-1] * intensities.shape[-2])
        return loss, fourier, photon, exit_error


class _ObjectiveLoss(nn.Cell):
    """The scalar loss of a :class:`JointObjective`, for double backpropagation."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        return self.objective(amplitudes, intensities, mask, indices)[0]


class _ScaledObjective(nn.Cell):
    """The objective's outputs led by the value to differentiate: its loss in units of
    ``loss_unit`` photons, times the loss scale."""

    def __init__(self, objective, loss_scaler, loss_unit):
        super().__init__()
        self.objective = objective
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit

    def construct(self, amplitudes, intensities, mask, indices):
        loss, fourier, photon, exit_error = self.objective(amplitudes, intensities, mask, indices)
        return self.loss_scaler.scale(loss / self.loss_unit), loss, fourier, photon, exit_error


class JointGradient(nn.Cell):
    """Gradients of one minibatch and the illumination it brought, before any step.

    ``construct(amplitudes, intensities, mask, indices)`` returns ``(outputs, grads,
    object_illumination, patch_power)``: the objective's outputs (loss and per-frame
    errors), the gradients of ``weights`` (object re/im, probe re/im, then the network's),
    ``sum_frames |P|^2`` on each flat object pixel (Ho*Wo,) and ``sum_frames |O_j|^2`` on
    each probe pixel (H, W). All but the errors are sums over frames, so a distributed
    run adds them up over its ranks to obtain those of the global batch. With a
    ``loss_scaler`` (float16) the gradients are those of ``loss / loss_unit * scale``; the
    update undoes both factors. The loss is in photons, 1e5-1e9 per batch, and its
    gradients would overflow float16 (largest 65504) even unscaled: ``loss_unit``, the
    photons of a batch, brings it to order 1 before the dynamic scale takes over.
    """

    def __init__(self, objective, weights, loss_scaler=None, loss_unit=1.0):
        super().__init__()
        self.objective = objective
        self.scaled = loss_scaler is not None
        differentiated = _ScaledObjective(objective, loss_scaler, loss_unit) if self.scaled else objective
        self.grad_fn = ms.value_and_grad(differentiated, None, weights, has_aux=True)
        self.object_pixels = objective.object_re.shape[0]

    def construct(self, amplitudes, intensities, mask, indices):
        outputs, grads = self.grad_fn(amplitudes, intensities, mask, indices)
        if self.scaled:
            outputs = outputs[1:]
        objective = self.objective
        probe_power = (ops.square(objective.probe_re) + ops.square(objective.probe_im)).sum(axis=0)
        object_illumination = physics.scatter_add_patches(
            ops.tile(probe_power.expand_dims(0), (indices.shape[0], 1, 1)), indices, self.object_pixels)
        patch_re, patch_im = objective.patches(indices)
        patch_power = (ops.square(patch_re) + ops.square(patch_im)).sum(axis=0)
        return outputs, grads, object_illumination, patch_power


class JointUpdate(nn.Cell):
    """One optimizer step per parameter group from (global) gradients and illumination.

    ``construct(grads, object_illumination, patch_power, probe_on)`` as returned by
    :class:`JointGradient`; object and probe gradients are divided by the illumination
    (the step normaliser) unless their optimizer is second-order; ``probe_on`` (float
    0/1) switches probe refinement without recompiling. With a ``loss_scaler``
    (``mindspore.amp.DynamicLossScaler``) the gradients are unscaled first, and when any
    overflowed no parameter moves and the scale shrinks; it returns whether the step was taken.
    """

    def __init__(self, optimizers, use_network, regularisation, curvature, loss_scaler=None, loss_unit=1.0):
        super().__init__()
        self.object_optimizer, self.probe_optimizer, self.network_optimizer = optimizers
        self.use_network = use_network
        self.regularisation = regularisation
        self.curvature = curvature
        # second-order optimizers bring their own curvature: no illumination normalisation for them
        self.normalise_object = not getattr(self.object_optimizer, 'needs_hessian', False)
        self.normalise_probe = not getattr(self.probe_optimizer, 'needs_hessian', False)
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit
        if loss_scaler is not None:  # attributes of the cell, so checkpoints hold them
            self.loss_scale, self.loss_scale_steps = loss_scaler.scale_value, loss_scaler.counter

    def construct(self, grads, object_illumination, patch_power, probe_on):
        if self.loss_scaler is None:
            self.apply(grads, object_illumination, patch_power, probe_on)
            return True
        grads = self.loss_scaler.unscale(grads)
        finite = ms.amp.all_finite(grads)
        self.loss_scaler.adjust(finite)
        if finite:
            grads = tuple(g * self.loss_unit for g in grads)
            self.apply(grads, object_illumination, patch_power, probe_on)
        return finite

    def apply(self, grads, object_illumination, patch_power, probe_on):
        """The optimizer steps from unscaled gradients."""
        object_scale = 1.0
        if self.normalise_object:
            object_scale = physics.inverse_illumination(object_illumination, self.regularisation, self.curvature)
        probe_scale = probe_on
        if self.normalise_probe:
            probe_scale = physics.inverse_illumination(patch_power, self.regularisation, self.curvature,
                                                       robust=True) * probe_on
        self.object_optimizer((grads[0] * object_scale, grads[1] * object_scale))
        self.probe_optimizer((grads[2] * probe_scale, grads[3] * probe_scale))
        if self.use_network:
            self.network_optimizer(grads[4:])


class JointStep(nn.Cell):
    """One compiled optimisation step of network, object and probe on a minibatch.

    :class:`JointGradient` then :class:`JointUpdate` in one graph (one process). With
    ``sum_over_ranks`` (MindSpore's data parallel, processes launched by ``msrun``) the
    loss, gradients and illumination are summed over the ranks inside that graph by
    MindSpore's collectives; an MPI run instead calls the two halves itself and sums
    between them. ``construct(amplitudes, intensities, mask, indices, probe_on)`` returns
    the loss (of the global batch) and the per-frame errors of the object's model before the step.
    """

    def __init__(self, objective, optimizers, regularisation, curvature, sum_over_ranks=False, loss_scaler=None,
                 loss_unit=1.0):
        super().__init__()
        self.objective = objective
        self.object_optimizer, self.probe_optimizer, self.network_optimizer = optimizers
        self.use_network = objective.use_network
        weights = list(self.object_optimizer.parameters) + list(self.probe_optimizer.parameters)
        if self.use_network:
            weights += list(self.network_optimizer.parameters)
        self.gradient = JointGradient(objective, ms.ParameterTuple(weights), loss_scaler, loss_unit)
        self.update = JointUpdate(optimizers, self.use_network, regularisation, curvature, loss_scaler, loss_unit)
        self.sum_over_ranks = sum_over_ranks
        if sum_over_ranks:
            self.sum_gradients = nn.DistributedGradReducer(weights, mean=False)
            self.sum = ops.AllReduce()

    def construct(self, amplitudes, intensities, mask, indices, probe_on):
        outputs, grads, object_illumination, patch_power = self.gradient(amplitudes, intensities, mask, indices)
        if self.sum_over_ranks:
            grads = self.sum_gradients(grads)
            object_illumination, patch_power = self.sum(object_illumination), self.sum(patch_power)
            outputs = (self.sum(outputs[0]),) + outputs[1:]
        self.update(grads, object_illumination, patch_power, probe_on)
        return outputs


class JointSolver:
    """Reconstructs a :class:`ScanData` by training network, object and probe jointly.

    >>> solver = JointSolver(data, SolverSettings(network=None))
    >>> solver.run(epochs=20)           # returns per-frame errors of the last epoch
    >>> solver.object, solver.probe     # complex numpy arrays (Ho, Wo), (M, H, W)

    Errors follow PtyPy: ``errors`` is (N, 3) with Fourier magnitude error, photon error
    and exit error (network/object exit-wave mismatch, 0 without a network) per frame.
    """

    def __init__(self, data, settings=None, input_scale=None, communicator=None, shard_sizes=None):
        """``input_scale``: the network input normalisation of a trained model (default: this scan's).

        Distributed (MPI or MindSpore's collectives): every rank builds a solver from its own
        frames (``data``) with the same object, probe, settings and seed, and a ``communicator``
        (:mod:`.distributed`).
        Each step then takes ``batch_size / ranks`` frames from every rank and sums the
        gradients and the batch illumination over the ranks, so all ranks keep identical
        weights, object and probe. ``shard_sizes`` (frame counts, the data holding the
        shards' frames one after another) makes a single process compose its batches in
        the same way from shards, and so take the steps of a distributed run over them.
        """
        self.settings = settings or SolverSettings()
        self.data = data.validate()
        self.communicator = communicator or SingleProcess()
        n, h, w = self.data.intensities.shape
        if self.communicator.size > 1:
            if shard_sizes is not None:
                raise ValueError("shard_sizes: a distributed solver takes the ranks' frame counts from its communicator")
            self.shard_sizes = self.communicator.allgather(n)
            self.shard_offsets = {self.communicator.rank: 0}
        else:
            self.shard_sizes = [n] if shard_sizes is None else list(shard_sizes)
            if sum(self.shard_sizes) != n or min(self.shard_sizes) < 1:
                raise ValueError(f"shard_sizes must be frame counts >= 1 adding up to the {n} frames, got {shard_sizes}")
            self.shard_offsets = dict(enumerate(np.cumsum([0] + self.shard_sizes[:-1]).tolist()))
        self.settings.validate(n_frames=sum(self.shard_sizes))
        if self.settings.batch_size % len(self.shard_sizes):
            raise ValueError(f"batch_size {self.settings.batch_size} must be a multiple of the {len(self.shard_sizes)} "
                             "ranks: every step takes batch_size / ranks frames from each rank")
        select_device(self.settings.device)
        ms.set_seed(self.settings.seed)
        self.rng = np.random.default_rng(self.settings.seed)
        self.object_shape = self.data.obj.shape
        self.indices = patch_indices(self.data.positions, (h, w), self.object_shape)
        brightest = self.communicator.allreduce(np.array([self.data.intensities.max()], np.float32), op='max')[0]
        self.input_scale = float(input_scale or np.log1p(float(brightest)))
        self.amplitudes = network_input(self.data.intensities, self.input_scale)
        self.mask = self.data.mask.astype(np.float32)
        self.network = self._build_network(h)
        object_pair, probe_pair = _pair(self.data.obj.reshape(-1), 'object'), _pair(self.data.probe, 'probe')
        s = self.settings
        self.objective = JointObjective(object_pair, probe_pair, self.data.propagator, self.network, s.loss,
                                        s.consistency, s.network_consistency)
        optimizers = self._build_optimizers()
        curvature = physics.LOSS_CURVATURE[s.loss]
        #: the step of all parameters; with a network, a second graph without it runs the first epochs
        in_graph = self.communicator.sums_in_graph
        self.probe_power = float(np.sum(np.abs(self.data.probe) ** 2))  # photons per frame (ScanData)
        self.loss_scaler = ms.amp.DynamicLossScaler(*LOSS_SCALE) if s.precision == 'float16' else None
        self.step = JointStep(self.objective, optimizers, s.illumination_regularisation, curvature, in_graph,
                              self.loss_scaler, loss_unit=self.probe_power * s.batch_size)
        self.physics_step = self.step
        if self.network is not None:  # float32 throughout: no loss scaling
            physics_objective = JointObjective(object_pair, probe_pair, self.data.propagator, None, s.loss)
            self.physics_step = JointStep(physics_objective, optimizers, s.illumination_regularisation, curvature,
                                          in_graph)
        self._hessian_products = {}
        self.steps_taken = 0
        self.epoch = 0
        self.errors = np.zeros((n, 3))
        self.history = []

    @property
    def network_active(self):
        """Whether the network takes part in the current epoch (``network_start`` passed)."""
        return self.network is not None and self.epoch >= self.settings.network_start

    def _build_network(self, frame_size):
        if self.settings.network is None:
            return None
        options = {k: v for k, v in self.settings.network.items() if k != 'name'}
        factory = plugins.network_factory(self.settings.network['name'])
        try:
            network = factory(frame_size, **options)
        except TypeError as error:  # an option the network does not take
            raise ValueError(f"network: {error}") from error
        if self.settings.precision != 'float32':
            set_compute_precision(network, PRECISIONS[self.settings.precision])
        return network

    def _build_optimizers(self):
        objective, s = self.objective, self.settings
        groups = [((objective.object_re, objective.object_im), s.object_group, 'object_group'),
                  ((objective.probe_re, objective.probe_im), s.probe_group, 'probe_group')]
        if self.network is not None:
            groups.append((self.network.trainable_params(), s.network_group, 'network_group'))
        optimizers = []
        for params, group, label in groups:
            factory = plugins.optimizer_factory(group.optimizer, parameter=f"{label}.optimizer")
            try:
                optimizers.append(factory(list(params), group.rate(label), **group.optimizer_options(label)))
            except (TypeError, ValueError) as error:  # an option the optimizer does not take, or out of range
                raise ValueError(f"{label}.options: {error}") from error
        if self.network is None:
            optimizers.append(None)
        return optimizers

    def _epoch_batches(self):
        """This process's frames for every step of one epoch, (steps, local batch) indices into its data.

        Every shard (rank) is shuffled and cut into rows of ``batch_size / shards`` frames,
        filled up to the longest shard's number of steps; each process draws the order of
        every shard, so the shared RNG stays equal on all ranks.
        """
        per_shard = self.settings.batch_size // len(self.shard_sizes)
        steps = -(-max(self.shard_sizes) // per_shard)
        parts = []
        for shard, size in enumerate(self.shard_sizes):
            order = np.resize(self.rng.permutation(size), steps * per_shard).reshape(steps, per_shard)
            if shard in self.shard_offsets:
                parts.append(order + self.shard_offsets[shard])
        return np.concatenate(parts, axis=1)

    def _inputs(self, batch):
        return (Tensor(self.amplitudes[batch]), Tensor(self.data.intensities[batch]), Tensor(self.mask[batch]),
                Tensor(self.indices[batch]))

    def _hessian_product(self, step):
        """(optimizers, parameters, HessianVectorProduct) of ``step``'s second-order optimizers."""
        if step not in self._hessian_products:
            candidates = [step.object_optimizer, step.probe_optimizer] + \
                ([step.network_optimizer] if step.use_network else [])
            optimizers = [o for o in candidates if getattr(o, 'needs_hessian', False)]
            params = [p for o in optimizers for p in o.parameters]
            product = HessianVectorProduct(_ObjectiveLoss(step.objective), params) if optimizers else None
            self._hessian_products[step] = (optimizers, params, product)
        return self._hessian_products[step]

    def _refresh_hessian(self, step, inputs):
        """New Hutchinson estimates of the Hessian diagonal for ``step``'s second-order optimizers."""
        optimizers, params, product = self._hessian_product(step)
        if product is None:
            return
        probes = rademacher_like(params, self.rng)
        product.set_vectors(probes)
        products = product(*inputs)
        if self.communicator.size > 1:
            products = self._allreduce(products)
        first = 0
        for optimizer in optimizers:
            count = len(optimizer.parameters)
            optimizer.refresh_hessian(products[first:first + count], probes[first:first + count])
            first += count

    def run(self, epochs=1):
        """Train for ``epochs`` passes over all frames; returns the (N, 3) errors of the last.

        Divergence guard: an epoch whose loss or parameters become NaN or Inf is rolled back
        to the state before it, every learning rate is halved, a warning says so, and the
        epoch is run again; after ``max_divergences`` such rollbacks in a row the last good
        state is restored and ``FloatingPointError`` raised.
        """
        if self.network is not None:
            self.network.set_train(True)
        for _ in range(epochs):
            good = self._state()
            for attempt in range(self.settings.max_divergences + 1):
                losses = self._epoch()
                if all(math.isfinite(x) for x in losses) and self._parameters_finite():
                    break
                self._restore(good)
                if attempt == self.settings.max_divergences:
                    raise FloatingPointError(
                        f"the loss diverged in epoch {self.epoch} {attempt + 1} times in a row, halving the "
                        "learning rates each time; object and probe hold the last good state. Lower the "
                        "learning rates or raise illumination_regularisation")
                self._halve_learning_rates()
                warnings.warn(f"the loss became {losses[-1]} in epoch {self.epoch}: rolled back to the epoch's "
                              "start and halved every learning rate", RuntimeWarning)
            self._hold_probe_power()
            self._average_network_statistics()
            self.epoch += 1
            self.history.append({'epoch': self.epoch, 'time': time.perf_counter(), 'loss': float(np.sum(losses)),
                                 'error': self.errors.mean(0)})
        return self.errors.copy()

    def _epoch(self):
        """One pass over the frames in a new random order; returns the losses of its steps."""
        start = self.settings.probe_update_start
        probe_on = Tensor(np.float32(start is not None and self.epoch >= start))
        step = self.step if self.network_active else self.physics_step
        losses = []
        for batch in self._epoch_batches():
            inputs = self._inputs(batch)
            if self.steps_taken % self.settings.hessian_interval == 0:
                self._refresh_hessian(step, inputs)
            loss, fourier, photon, exit_error = self._step(step, inputs, probe_on)
            self.steps_taken += 1
            self.errors[batch] = np.stack([fourier.asnumpy(), photon.asnumpy(), exit_error.asnumpy()], 1)
            losses.append(float(loss.asnumpy()))
            if not math.isfinite(losses[-1]):
                break
        return losses

    def _step(self, step, inputs, probe_on):
        """One step on this process's part of the batch: (loss of the global batch, local per-frame errors)."""
        if self.communicator.size == 1 or self.communicator.sums_in_graph:
            return step(*inputs, probe_on)
        (loss, fourier, photon, exit_error), grads, object_illumination, patch_power = step.gradient(*inputs)
        loss, *grads, object_illumination, patch_power = self._allreduce(
            (loss,) + tuple(grads) + (object_illumination, patch_power))
        # mutable: a tuple argument is otherwise a constant of the graph, recompiled for every new value
        step.update(ms.mutable(tuple(grads)), object_illumination, patch_power, probe_on)
        return loss, fourier, photon, exit_error

    def _allreduce(self, tensors):
        """float32 ``tensors`` summed over the ranks, through one buffer (one MPI call)."""
        arrays = [t.asnumpy() for t in tensors]
        buffer = self.communicator.allreduce(np.concatenate([a.ravel() for a in arrays], dtype=np.float32))
        bounds = np.cumsum([0] + [a.size for a in arrays])
        return [Tensor(buffer[lo:hi].reshape(a.shape)) for a, lo, hi in zip(arrays, bounds[:-1], bounds[1:])]

    def _average_network_statistics(self):
        """Average the network's BatchNorm running statistics over the ranks.

        Each rank normalises its own part of the batch (as data-parallel training without
        synchronised BatchNorm does), so its running statistics drift apart; they are
        exponential averages, linear in the batch statistics, so averaging them once an
        epoch equals averaging every step.
        """
        if self.communicator.size == 1 or self.network is None:
            return
        statistics = [p for p in self.network.get_parameters() if not p.requires_grad]
        for param, total in zip(statistics, self._allreduce(statistics)):
            ops.assign(param, total / self.communicator.size)

    def _named_parameters(self):
        """{name: Parameter} of everything the full step holds (weights, object, probe, optimizer
        states), named by attribute path: stable, while MindSpore renames Parameters as graphs compile."""
        return dict(self.step.parameters_and_names())

    def _state(self):
        """Copies of every parameter and optimizer state, by name."""
        return {name: p.asnumpy().copy() for name, p in self._named_parameters().items()}

    def _restore(self, state):
        for name, param in self._named_parameters().items():
            ops.assign(param, Tensor(state[name]))

    def _parameters_finite(self):
        o = self.objective
        total = sum(float(ops.square(p).sum().asnumpy()) for p in (o.object_re, o.object_im, o.probe_re, o.probe_im))
        return math.isfinite(total)

    def _halve_learning_rates(self):
        for optimizer in (self.step.object_optimizer, self.step.probe_optimizer, self.step.network_optimizer):
            if optimizer is not None:
                ops.assign(optimizer.learning_rate, optimizer.learning_rate * 0.5)

    def evaluate(self):
        """PtyPy's per-frame errors (N, 3) of the current object and probe, without a step.

        Fourier and photon errors as in :meth:`run`; the exit error (a training quantity) is 0.
        """
        errors = np.zeros((len(self.indices), 3))
        n, size = len(self.indices), self.settings.batch_size // len(self.shard_sizes) * len(self.shard_offsets)
        for batch in np.resize(np.arange(n), -(-n // size) * size).reshape(-1, size):  # the step's batch shape
            _, fourier, photon, _ = self.physics_step.objective(*self._inputs(batch))
            errors[batch, 0], errors[batch, 1] = fourier.asnumpy(), photon.asnumpy()
        return errors

    def _hold_probe_power(self):
        """Undo the drift of the probe/object scale, ``P -> a P``, ``O -> O / a``, so ``sum |P|^2``
        keeps its initial value (photons per frame for a transmission of 1).

        The model ``P O`` is unchanged, but left alone the scale drifts (measured at 1e5
        photons: probe amplitude +30 % in 15 epochs); the object then leaves the transmission
        scale that the initial guess, the unlit border and the network's free-space output share.
        """
        o = self.objective
        power = float((ops.square(o.probe_re).sum() + ops.square(o.probe_im).sum()).asnumpy())
        factor = math.sqrt(self.probe_power / power)
        for param, scale in ((o.probe_re, factor), (o.probe_im, factor), (o.object_re, 1 / factor),
                             (o.object_im, 1 / factor)):
            ops.assign(param, param * scale)

    def save_checkpoint(self, path):
        """Save network, object, probe, every optimizer's state, the epoch and the shuffling RNG state.

        ``path`` must end in ``.ckpt``. Written to a temporary file in the same folder and
        renamed, so a crash while saving never leaves a broken checkpoint behind. In a
        distributed run all ranks hold the same state and rank 0 alone writes it.
        """
        if not str(path).endswith('.ckpt'):
            raise ValueError(f"checkpoint path must end in .ckpt, got {path!r}")
        folder, name = os.path.split(os.path.abspath(path))
        temporary = os.path.join(folder, f".{name[:-5]}.partial.ckpt")
        if self.communicator.rank != 0:
            return
        parameters = [{'name': name, 'data': p} for name, p in self._named_parameters().items()]
        ms.save_checkpoint(parameters, temporary, append_dict={
            'epoch': self.epoch, 'steps_taken': self.steps_taken, 'rng_state': json.dumps(self.rng.bit_generator.state)})
        os.replace(temporary, path)

    def load_checkpoint(self, path):
        """Restore :meth:`save_checkpoint` into this solver; only before it first runs.

        A compiled MindSpore step does not see parameters reloaded after it ran, so
        resuming always starts from a fresh solver built with the same data and settings.
        """
        if self.steps_taken:
            raise RuntimeError("load_checkpoint needs a fresh solver: this one has already run")
        state = ms.load_checkpoint(path)
        parameters = self._named_parameters()
        missing = [name for name in list(parameters) + ['epoch', 'steps_taken', 'rng_state'] if name not in state]
        if missing:
            raise ValueError(f"checkpoint {path} does not match this solver: it lacks {missing[:5]}")
        wrong = [name for name, p in parameters.items() if tuple(state[name].shape) != tuple(p.shape)]
        if wrong:
            raise ValueError(f"checkpoint {path} does not match this solver: shapes of {wrong[:5]} differ")
        for name, param in parameters.items():
            ops.assign(param, state[name])
        self.epoch = int(state['epoch'].asnumpy())
        self.steps_taken = int(state['steps_taken'].asnumpy())
        self.rng.bit_generator.state = json.loads(str(state['rng_state']))

    @property
    def object(self):
        """Current object, complex (Ho, Wo)."""
        o = self.objective
        return (o.object_re.asnumpy() + 1j * o.object_im.asnumpy()).reshape(self.object_shape)

    @property
    def probe(self):
        """Current probe modes, complex (M, H, W)."""
        return self.objective.probe_re.asnumpy() + 1j * self.objective.probe_im.asnumpy()

    def predict_patches(self, frames=None, batch_size=64):
        """The network's object patches, complex (N, H, W), for frames ``frames`` (default all)."""
        if self.network is None:
            raise ValueError("network is None: the physics-only solver has no network to predict with")
        frames = np.arange(len(self.amplitudes)) if frames is None else np.asarray(frames)
        return predict_patches(self.network, self.amplitudes[frames], batch_size)
