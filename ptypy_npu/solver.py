"""Joint physics-informed solver: network weights, object and probe trained together.

The core of ptypy-npu. It takes plain arrays (no PtyPy import), so it runs and is
tested where PtyPy is absent; the PtyPy engine (:mod:`ptypy_npu.engine`) and the CLI
translate their inputs into a :class:`ScanData`.

Per minibatch of frames the compiled step evaluates

* the data term of the object: ``ell(I_j, |F(P O_j)|^2)`` for each frame j, where O_j is
  the object patch under frame j and ``ell`` is the Gaussian-amplitude or Poisson loss;
* with a network N: its own data term ``ell(I_j, |F(P N(d_j))|^2)`` on the patch it
  predicts from the diffraction amplitude d_j, and a consistency term
  ``consistency * sum |P (N(d_j) - O_j)|^2``, the squared difference of the two exit
  waves in photons, which ties network and object together;

then one optimizer step per parameter group. Object and probe gradients are divided by
the illumination they saw in the batch (``sum |P|^2`` per object pixel, ``sum |O_j|^2``
per probe pixel, plus ``illumination_regularisation`` times the maximum), the step
normalisation of ePIE/LSQML; with plain SGD and learning rate ~1 this is a projection-like
update independent of the photon count (DESIGN.md section 2b).
"""
import dataclasses
import json
import math
import time

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from . import physics, plugins
from .optim import HessianVectorProduct, rademacher_like

DEVICES = ('CPU', 'GPU', 'Ascend')


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
    """
    intensities: np.ndarray
    positions: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    mask: np.ndarray = None
    propagator: tuple = None

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


@dataclasses.dataclass
class GroupSettings:
    """Optimizer of one parameter group: a name from the optimizer plugins, its rate, its options."""
    optimizer: str
    learning_rate: float
    options: dict = dataclasses.field(default_factory=dict)


def _default_network():
    return {'name': 'W1Net', 'depth': 3, 'width': 8, 'binning': 2}


@dataclasses.dataclass
class SolverSettings:
    """Settings of :class:`JointSolver`; the PtyPy engine's parameter tree mirrors them.

    network : dict with ``name`` and the network's settings, or None for the
        physics-only solver (object and probe refined, no network: the ablation).
    batch_size : frames per step; the last batch of an epoch is filled up with frames
        from the start of the shuffled order, so every step has the same shape.
    loss : 'gaussian' (amplitude) or 'poisson'.
    consistency : weight of the network/object exit-wave consistency term.
    probe_update_start : epochs before the probe starts to be refined (None: never).
    illumination_regularisation : delta in the step normaliser ``1/(w + delta max w)``.
    hessian_interval : steps between refreshes of the Hessian-diagonal estimate of
        second-order optimizers (AdaHessian); each refresh costs about 2 gradients.
    """
    network: dict = dataclasses.field(default_factory=_default_network)
    network_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('adam', 2e-3))
    object_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('sgd', 1.5))
    probe_group: GroupSettings = dataclasses.field(default_factory=lambda: GroupSettings('sgd', 1.0))
    batch_size: int = 8
    loss: str = 'gaussian'
    consistency: float = 0.1
    probe_update_start: int = 0
    illumination_regularisation: float = 0.05
    hessian_interval: int = 1
    seed: int = 0
    device: str = 'CPU'

    def validate(self, n_frames=None):
        """Raise ``ValueError`` naming the setting and the accepted values."""
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.loss not in physics.LOSSES:
            raise ValueError(f"loss must be one of {', '.join(physics.LOSSES)}, got {self.loss!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if n_frames is not None and self.batch_size > n_frames:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {n_frames} frames of the scan")
        for name in ('consistency', 'illumination_regularisation'):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.hessian_interval, int) or self.hessian_interval < 1:
            raise ValueError(f"hessian_interval must be an integer >= 1, got {self.hessian_interval!r}")
        if self.probe_update_start is not None and self.probe_update_start < 0:
            raise ValueError(f"probe_update_start must be >= 0 or None, got {self.probe_update_start!r}")
        for group in ('network_group', 'object_group', 'probe_group'):
            settings = getattr(self, group)
            plugins.optimizer_factory(settings.optimizer, parameter=f"{group}.optimizer")
            from .optim import check_learning_rate
            check_learning_rate(f"{group}.learning_rate", settings.learning_rate)
        if self.network is not None:
            if 'name' not in self.network:
                raise ValueError("network must name the network ('name') or be None for the physics-only solver")
            plugins.network_factory(self.network['name'])


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
    """

    def __init__(self, data, network, loss, consistency):
        super().__init__()
        self.object_re, self.object_im = _pair(data.obj.reshape(-1), 'object')
        self.probe_re, self.probe_im = _pair(data.probe, 'probe')
        self.forward_model = physics.PtychoForward(physics.FarfieldPropagator(*data.propagator))
        self.data_term = physics.LOSSES[loss]
        self.network = network
        self.use_network = network is not None
        self.consistency = consistency

    def patches(self, indices):
        """Object patches (B, H, W) as a real/imag pair."""
        return ops.gather(self.object_re, indices, 0), ops.gather(self.object_im, indices, 0)

    def network_patches(self, amplitudes):
        """The network's object patches (B, H, W) as a real/imag pair."""
        log_amplitude, phase = self.network(amplitudes)
        amplitude = ops.exp(log_amplitude)
        return amplitude * ops.cos(phase), amplitude * ops.sin(phase)

    def construct(self, amplitudes, intensities, mask, indices):
        patch_re, patch_im = self.patches(indices)
        model = self.forward_model(self.probe_re, self.probe_im, patch_re, patch_im)
        loss = self.data_term(model, intensities, mask).sum()
        fourier, photon = physics.fourier_and_photon_errors(model, intensities, mask)
        exit_error = ops.zeros_like(fourier)
        if self.use_network:
            # the probe is refined by the object's data term alone: a half-trained network must not bend it
            probe_re = ops.stop_gradient(self.probe_re)
            probe_im = ops.stop_gradient(self.probe_im)
            net_re, net_im = self.network_patches(amplitudes)
            net_model = self.forward_model(probe_re, probe_im, net_re, net_im)
            diff_re, diff_im = self.forward_model.exit_waves(probe_re, probe_im, net_re - patch_re, net_im - patch_im)
            exit_error = (ops.square(diff_re) + ops.square(diff_im)).sum(axis=(1, 2, 3))
            loss = loss + self.data_term(net_model, intensities, mask).sum() + self.consistency * exit_error.sum()
            exit_error = exit_error / (intensities.shape[-1] * intensities.shape[-2])
        return loss, fourier, photon, exit_error


class _ObjectiveLoss(nn.Cell):
    """The scalar loss of a :class:`JointObjective`, for double backpropagation."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        return self.objective(amplitudes, intensities, mask, indices)[0]


class JointStep(nn.Cell):
    """One compiled optimisation step of network, object and probe on a minibatch.

    ``construct(amplitudes, intensities, mask, indices, probe_on)`` returns the loss and
    the per-frame errors of the object's model before the step; ``probe_on`` (float 0/1)
    switches probe refinement without recompiling.
    """

    def __init__(self, objective, optimizers, regularisation, curvature):
        super().__init__()
        self.objective = objective
        self.object_optimizer, self.probe_optimizer, self.network_optimizer = optimizers
        self.object_params = self.object_optimizer.parameters
        self.probe_params = self.probe_optimizer.parameters
        self.use_network = objective.use_network
        weights = list(self.object_params) + list(self.probe_params)
        if self.use_network:
            weights += list(self.network_optimizer.parameters)
        self.weights = ms.ParameterTuple(weights)
        self.grad_fn = ms.value_and_grad(objective, None, self.weights, has_aux=True)
        self.regularisation = regularisation
        self.curvature = curvature
        self.object_pixels = objective.object_re.shape[0]
        # second-order optimizers bring their own curvature: no illumination normalisation for them
        self.normalise_object = not getattr(self.object_optimizer, 'needs_hessian', False)
        self.normalise_probe = not getattr(self.probe_optimizer, 'needs_hessian', False)

    def construct(self, amplitudes, intensities, mask, indices, probe_on):
        (loss, fourier, photon, exit_error), grads = self.grad_fn(amplitudes, intensities, mask, indices)
        objective = self.objective
        object_scale = 1.0
        if self.normalise_object:
            probe_power = (ops.square(objective.probe_re) + ops.square(objective.probe_im)).sum(axis=0)
            illumination = physics.scatter_add_patches(
                ops.tile(probe_power.expand_dims(0), (indices.shape[0], 1, 1)), indices, self.object_pixels)
            object_scale = physics.inverse_illumination(illumination, self.regularisation, self.curvature)
        probe_scale = probe_on
        if self.normalise_probe:
            patch_re, patch_im = objective.patches(indices)
            patch_power = (ops.square(patch_re) + ops.square(patch_im)).sum(axis=0)
            probe_scale = physics.inverse_illumination(patch_power, self.regularisation, self.curvature) * probe_on
        self.object_optimizer((grads[0] * object_scale, grads[1] * object_scale))
        self.probe_optimizer((grads[2] * probe_scale, grads[3] * probe_scale))
        if self.use_network:
            self.network_optimizer(grads[4:])
        return loss, fourier, photon, exit_error


class JointSolver:
    """Reconstructs a :class:`ScanData` by training network, object and probe jointly.

    >>> solver = JointSolver(data, SolverSettings(network=None))
    >>> solver.run(epochs=20)           # returns per-frame errors of the last epoch
    >>> solver.object, solver.probe     # complex numpy arrays (Ho, Wo), (M, H, W)

    Errors follow PtyPy: ``errors`` is (N, 3) with Fourier magnitude error, photon error
    and exit error (network/object exit-wave mismatch, 0 without a network) per frame.
    """

    def __init__(self, data, settings=None):
        self.settings = settings or SolverSettings()
        self.data = data.validate()
        self.settings.validate(n_frames=self.data.intensities.shape[0])
        select_device(self.settings.device)
        ms.set_seed(self.settings.seed)
        self.rng = np.random.default_rng(self.settings.seed)
        n, h, w = self.data.intensities.shape
        self.object_shape = self.data.obj.shape
        self.indices = patch_indices(self.data.positions, (h, w), self.object_shape)
        compressed = np.log1p(self.data.intensities)
        self.amplitudes = (compressed / compressed.max())[:, None].astype(np.float32)
        self.mask = self.data.mask.astype(np.float32)
        self.network = self._build_network(h)
        self.objective = JointObjective(self.data, self.network, self.settings.loss, self.settings.consistency)
        self.step = JointStep(self.objective, self._build_optimizers(), self.settings.illumination_regularisation,
                              physics.LOSS_CURVATURE[self.settings.loss])
        optimizers = (self.step.object_optimizer, self.step.probe_optimizer, self.step.network_optimizer)
        self.hessian_optimizers = [o for o in optimizers if getattr(o, 'needs_hessian', False)]
        if self.hessian_optimizers:
            self.hessian_params = [p for o in self.hessian_optimizers for p in o.parameters]
            self.hessian_product = HessianVectorProduct(_ObjectiveLoss(self.objective), self.hessian_params)
        self.steps_taken = 0
        self.epoch = 0
        self.errors = np.zeros((n, 3))
        self.history = []

    def _build_network(self, frame_size):
        if self.settings.network is None:
            return None
        options = {k: v for k, v in self.settings.network.items() if k != 'name'}
        factory = plugins.network_factory(self.settings.network['name'])
        return factory(frame_size, **options)

    def _build_optimizers(self):
        objective, s = self.objective, self.settings
        groups = [((objective.object_re, objective.object_im), s.object_group, 'object_group'),
                  ((objective.probe_re, objective.probe_im), s.probe_group, 'probe_group')]
        if self.network is not None:
            groups.append((self.network.trainable_params(), s.network_group, 'network_group'))
        optimizers = []
        for params, group, label in groups:
            factory = plugins.optimizer_factory(group.optimizer, parameter=f"{label}.optimizer")
            optimizers.append(factory(list(params), group.learning_rate, **group.options))
        if self.network is None:
            optimizers.append(None)
        return optimizers

    def _batches(self):
        n, b = len(self.indices), self.settings.batch_size
        order = self.rng.permutation(n)
        padded = np.concatenate([order, order[:(-n) % b]])
        return padded.reshape(-1, b)

    def _refresh_hessian(self, inputs):
        """New Hutchinson estimates of the Hessian diagonal for the second-order optimizers."""
        probes = rademacher_like(self.hessian_params, self.rng)
        self.hessian_product.set_vectors(probes)
        products = self.hessian_product(*inputs)
        first = 0
        for optimizer in self.hessian_optimizers:
            count = len(optimizer.parameters)
            optimizer.refresh_hessian(products[first:first + count], probes[first:first + count])
            first += count

    def run(self, epochs=1):
        """Train for ``epochs`` passes over all frames; returns the (N, 3) errors of the last."""
        start = self.settings.probe_update_start
        if self.network is not None:
            self.network.set_train(True)
        for _ in range(epochs):
            probe_on = Tensor(np.float32(start is not None and self.epoch >= start))
            losses = []
            for batch in self._batches():
                inputs = (Tensor(self.amplitudes[batch]), Tensor(self.data.intensities[batch]),
                          Tensor(self.mask[batch]), Tensor(self.indices[batch]))
                if self.hessian_optimizers and self.steps_taken % self.settings.hessian_interval == 0:
                    self._refresh_hessian(inputs)
                loss, fourier, photon, exit_error = self.step(*inputs, probe_on)
                self.steps_taken += 1
                self.errors[batch] = np.stack([fourier.asnumpy(), photon.asnumpy(), exit_error.asnumpy()], 1)
                losses.append(float(loss.asnumpy()))
            if not all(math.isfinite(x) for x in losses):
                raise FloatingPointError(f"the loss became {losses[-1]} in epoch {self.epoch}: lower the "
                                         "learning rates or raise illumination_regularisation")
            self.epoch += 1
            self.history.append({'epoch': self.epoch, 'time': time.perf_counter(), 'loss': float(np.sum(losses)),
                                 'error': self.errors.mean(0)})
        return self.errors.copy()

    def save_checkpoint(self, path):
        """Save network, object, probe, every optimizer's state, the epoch and the shuffling RNG state."""
        ms.save_checkpoint(self.step, path, append_dict={'epoch': self.epoch, 'steps_taken': self.steps_taken,
                                                         'rng_state': json.dumps(self.rng.bit_generator.state)})

    def load_checkpoint(self, path):
        """Restore :meth:`save_checkpoint` into this solver; only before it first runs.

        A compiled MindSpore step does not see parameters reloaded after it ran, so
        resuming always starts from a fresh solver built with the same data and settings.
        """
        if self.steps_taken:
            raise RuntimeError("load_checkpoint needs a fresh solver: this one has already run")
        state = ms.load_checkpoint(path)
        missing = [p.name for p in self.step.get_parameters() if p.name not in state] + \
            [key for key in ('epoch', 'steps_taken', 'rng_state') if key not in state]
        if missing:
            raise ValueError(f"checkpoint {path} does not match this solver: it lacks {missing[:5]}")
        ms.load_param_into_net(self.step, state, strict_load=True)
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

    def predict_patches(self, frames=None, batch_size=None):
        """The network's object patches, complex (N, H, W), for frames ``frames`` (default all)."""
        if self.network is None:
            raise ValueError("network is None: the physics-only solver has no network to predict with")
        self.network.set_train(False)
        frames = np.arange(len(self.amplitudes)) if frames is None else np.asarray(frames)
        size = batch_size or self.settings.batch_size
        out = []
        for k in range(0, len(frames), size):
            re, im = self.objective.network_patches(Tensor(self.amplitudes[frames[k:k + size]]))
            out.append(re.asnumpy() + 1j * im.asnumpy())
        return np.concatenate(out)
