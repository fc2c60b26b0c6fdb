"""The joint solver: network weights, object and probe trained together on minibatches of frames.

The core of ptypy-npu. It takes a :class:`~ptypy_npu.scan.ScanData` (plain arrays), a
:class:`~ptypy_npu.settings.Settings` and the :class:`Factories` its names resolve to (the plugin
host's :func:`ptypy_npu.plugins.build_solver` does both), and imports neither PtyPy nor the plugin
host. What a step computes is in :mod:`.objective` and :mod:`.step` (where object and probe steps
are normalised by the illumination, as ePIE/LSQML do); see docs/ARCHITECTURE.md.
"""
import dataclasses
import logging
import math
import time
import typing
import warnings

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from . import physics
from .device import COMPUTE_TYPES, select_device
from .batches import Shards
from .distributed import SingleProcess, allreduce_tensors
from .gauge import fixed_gauge, probe_offset
from .networks import NetworkExport, PatchPredictor, inputs_for, set_compute_precision
from .objective import JointObjective, PhysicsObjective, parameter_pair
from .scan import illumination, patch_indices
from .step import EpochMomentum, HessianRefresh, make_step, regularisation_parameter

logger = logging.getLogger(__name__)

#: Dynamic loss scaling of float16 training: initial scale, factor, overflow-free steps before it grows
#: (the defaults of PyTorch's GradScaler; MindSpore's DynamicLossScaler runs it)
LOSS_SCALE = (2.0 ** 16, 2, 2000)

#: An epoch whose mean Fourier error rises above this multiple of the lowest before it has diverged.
DIVERGENCE_FACTOR = 10.0

#: When the mean Fourier error has set no new low (by 0.1 %) for this many epochs, the normaliser's delta
#: (when left to the data) doubles, up to :data:`MAX_REGULARISATION`.
REGULARISATION_PATIENCE = 3
MAX_REGULARISATION = 3.0
#: Once delta has reached :data:`MAX_REGULARISATION`, each further such stall halves the object's and the
#: probe's learning rates, down to this fraction of their start: six times the epochs then end at or below the
#: default count's error on the low-dose scans of the robustness family (1e4: 0.1343 against 0.1352, where the
#: rates left as they were drifted 0.1356 -> 0.1383).
MIN_RATE_FRACTION = 1 / 8

#: What the first epoch of each step announces: it compiles the step's graphs first.
COMPILING = {False: "compiling the object and probe step (a few seconds)",
             True: "compiling the step with the network (a few seconds); once it joins, its epochs cost several "
                   "times the physics-only ones"}


class Phase(typing.NamedTuple):
    """The compiled step the solver takes from epoch ``start`` on, and its Hessian refresher."""
    start: int
    step: nn.Cell
    hessian: HessianRefresh


@dataclasses.dataclass
class Factories:
    """What the solver builds its parts with: ``network(frame_size, **settings.network.options())``
    returns an ``nn.Cell`` (None: no network), ``optimizers[group](params, learning_rate, **options)``
    an ``nn.Optimizer`` for each group ('network_update', 'object_update', 'probe_update')."""
    network: typing.Optional[typing.Callable]
    optimizers: dict


class JointSolver:
    """Reconstructs a :class:`~ptypy_npu.scan.ScanData` by training network, object and probe jointly.

    >>> solver = plugins.build_solver(data, settings.make({'network.name': None}))
    >>> solver.run(epochs=20)           # per-frame errors (N, 3) of the last epoch, as PtyPy's:
    >>> solver.object, solver.probe     # Fourier, photon, exit; complex (Ho, Wo), (M, H, W)

    Distributed: every rank builds a solver of its own frames with the same object, probe, settings,
    seed and a ``communicator`` (:mod:`.distributed`); the steps sum over the ranks, which so keep
    identical weights, object and probe; ``shard_sizes`` makes one process take the same steps
    (:class:`~ptypy_npu.batches.Shards`). ``input_scale``: a trained model's input normalisation.
    """

    def __init__(self, data, settings, factories, input_scale=None, communicator=None, shard_sizes=None):
        self.factories = factories
        self.communicator = communicator or SingleProcess()
        self.data = data.validate()
        n, h, w = self.data.intensities.shape
        self.shards = Shards(n, self.communicator, shard_sizes)
        counts, pixels = self.communicator.allreduce(np.array([np.sum(self.data.intensities * self.data.mask),
                                                               np.sum(self.data.mask)], np.float32))
        self.adapts_regularisation = settings.illumination_regularisation is None
        self.settings = settings = settings.validate(self.shards.total, len(self.shards.sizes)).adapted_to_dose(
            counts / pixels, self.shards.total, h * w, len(self.shards.sizes))
        logger.info(f"{counts / pixels:.3g} photons per detector pixel: batch_size {settings.batch_size}, "
                    f"illumination_regularisation {settings.illumination_regularisation:.3g}")
        select_device(settings.device)
        ms.set_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed)
        self.object_shape = self.data.obj.shape
        self.indices = patch_indices(self.data.positions, (h, w), self.object_shape)
        brightest = self.communicator.allreduce(np.array([self.data.intensities.max()], np.float32), op='max')
        self.input_scale = float(input_scale or np.log1p(float(brightest[0])))
        self.mask = self.data.mask.astype(np.float32)
        probe = self.data.photon_scaled_probe(self.communicator.allreduce(np.array(self.data.photon_sums(), np.float32)))
        self.probe_power = float(np.sum(np.abs(probe) ** 2))  # photons per frame at transmission 1
        object_pair, probe_pair = parameter_pair(self.data.obj.reshape(-1), 'object'), parameter_pair(probe, 'probe')
        propagator = self.data.propagator or physics.centred_fft_factors((h, w))
        self.optimizers = [self._optimizer(object_pair, 'object_update'), self._optimizer(probe_pair, 'probe_update')]
        self.regularisation = regularisation_parameter(settings.illumination_regularisation)
        physics_step = make_step(PhysicsObjective(object_pair, probe_pair, propagator, settings.loss),
                                 self.optimizers + [None], settings, self.communicator, self.regularisation)
        self.phases = [Phase(0, physics_step, HessianRefresh(physics_step, self.communicator, self.object_shape))]
        self.network, self.loss_scaler, self.statistics, self.predictor = None, None, [], None
        if factories.network is not None:
            self.network = self._network(factories.network, h)
            self.network.set_train(True)
            self.statistics = [p for p in self.network.get_parameters() if not p.requires_grad]  # BatchNorm's
            self.optimizers.append(self._optimizer(self.network.trainable_params(), 'network_update'))
            if settings.precision == 'float16':
                self.loss_scaler = ms.amp.DynamicLossScaler(*LOSS_SCALE)
            loss_unit = self.probe_power * settings.batch_size
            objective = JointObjective(object_pair, probe_pair, propagator, settings.loss, self.network,
                                       settings.consistency, settings.network_consistency, self.loss_scaler, loss_unit)
            joint_step = make_step(objective, self.optimizers, settings, self.communicator, self.regularisation,
                                   self.loss_scaler, loss_unit)
            refresh = HessianRefresh(joint_step, self.communicator, self.object_shape)
            self.phases.append(Phase(settings.network.start, joint_step, refresh))
        self.amplitudes = inputs_for(self.network, self.data.intensities, self.input_scale, probe, self.data.propagator)
        self.objective = physics_step.objective  # object and probe live here
        self.momentum = EpochMomentum(self.object_shape[0] * self.object_shape[1],
                                      settings.object_update.epoch_momentum)
        self.momentum.begin(self.objective.object_re, self.objective.object_im)  # the first push follows epoch 2
        # names every parameter and state
        self.parts = nn.CellList([phase.step for phase in self.phases] + [self.momentum])
        self._compiled = set()
        self.lowest_fourier = math.inf
        self.lowest_fourier_since_regularised = math.inf
        self.epochs_without_low = 0
        self.steps_taken = 0
        self.epoch = 0
        self.errors = np.zeros((n, 3))
        self.history = []

    def _network(self, factory, frame_size):
        try:
            network = factory(frame_size, **self.settings.network.options())
        except TypeError as error:  # an option the network does not take
            raise ValueError(f"network: {error}") from error
        if self.settings.precision != 'float32':
            set_compute_precision(network, COMPUTE_TYPES[self.settings.precision])
        return network

    def _optimizer(self, params, group):
        update = getattr(self.settings, group)
        try:
            return self.factories.optimizers[group](list(params), update.rate(group), **update.optimizer_options(group))
        except (TypeError, ValueError) as error:  # an option the optimizer does not take, or out of range
            raise ValueError(f"{group}.options: {error}") from error

    @property
    def phase(self):
        """The :class:`Phase` of the current epoch: the last begun."""
        return [phase for phase in self.phases if self.epoch >= phase.start][-1]

    def run(self, epochs=1, report=None):
        """Train for ``epochs`` passes over all frames; returns the (N, 3) errors of the last.

        Divergence guard: an epoch whose loss or parameters become NaN or Inf, or whose mean Fourier
        error exceeds :data:`DIVERGENCE_FACTOR` times the lowest of the epochs before, is rolled
        back to the state before it, every learning rate is halved, a warning says so, and the
        epoch runs again; after ``max_divergences`` such rollbacks in a row the last good state is
        restored and ``FloatingPointError`` raised. ``report(solver)`` is called after every epoch.
        """
        self.compile()
        for _ in range(epochs):
            good = self.state()
            for attempt in range(self.settings.max_divergences + 1):
                losses = self._epoch()
                diverged, fourier = self._diverged(losses)
                if not diverged:
                    self._accelerate()
                    self.lowest_fourier = min(self.lowest_fourier, fourier)
                    self._adapt_regularisation(fourier)
                    break
                self.restore(good)
                self.momentum.stop()
                if attempt == self.settings.max_divergences:
                    raise FloatingPointError(
                        f"the loss diverged in epoch {self.epoch} {attempt + 1} times in a row, halving the "
                        "learning rates each time; object and probe hold the last good state. Lower the "
                        "learning rates or raise illumination_regularisation")
                for optimizer in self.optimizers:
                    ops.assign(optimizer.learning_rate, optimizer.learning_rate * 0.5)
                warnings.warn(f"epoch {self.epoch} diverged (loss {losses[-1]:.4g}, Fourier error {fourier:.4g}): "
                              "rolled back to the epoch's start and halved every learning rate", RuntimeWarning)
            self._fix_gauge()
            self.momentum.begin(self.objective.object_re, self.objective.object_im)
            self._average_network_statistics()
            self.epoch += 1
            self.history.append({'epoch': self.epoch, 'time': time.perf_counter(), 'loss': float(np.sum(losses)),
                                 'error': self.errors.mean(0)})
            if report is not None:
                report(self)
        return self.errors.copy()

    def _adapt_regularisation(self, fourier):
        """Double the normaliser's delta (when left to the data) once the mean Fourier error has set no new
        low for :data:`REGULARISATION_PATIENCE` epochs: the steps then stir noise, or overshoot where a
        batch lights the object weakly (noisy scans of sparse overlap), more than they fit the data. Once
        delta is at its cap, such a stall halves the object's and probe's rates instead (:meth:`_cut_rates`)."""
        if fourier < 0.999 * self.lowest_fourier_since_regularised:
            self.lowest_fourier_since_regularised, self.epochs_without_low = fourier, 0
            return
        self.epochs_without_low += 1
        if not (self.adapts_regularisation and self.epochs_without_low >= REGULARISATION_PATIENCE):
            return
        delta = float(self.regularisation.asnumpy())
        if delta < MAX_REGULARISATION:
            delta = min(2 * delta, MAX_REGULARISATION)
            ops.assign(self.regularisation, Tensor(np.float32(delta)))
            logger.info(f"epoch {self.epoch}: the Fourier error set no new low for {REGULARISATION_PATIENCE} "
                        f"epochs ({fourier:.4g}); illumination_regularisation raised to {delta:.3g}")
        elif not self._cut_rates():
            return
        self.lowest_fourier_since_regularised, self.epochs_without_low = fourier, 0

    def _cut_rates(self):
        """Halve the object's and the probe's learning rates, each down to :data:`MIN_RATE_FRACTION` of its
        start (the data are fitted down to their noise: smaller steps stir less of it); False if both are there."""
        cut = []
        for optimizer, group in zip(self.optimizers[:2], ('object_update', 'probe_update')):
            floor = MIN_RATE_FRACTION * getattr(self.settings, group).rate(group)
            rate = float(optimizer.learning_rate.asnumpy())
            if rate > 1.001 * floor:
                rate = max(rate / 2, floor)
                ops.assign(optimizer.learning_rate, Tensor(np.float32(rate)))
                cut.append(f"{group} learning rate {rate:.3g}")
        if cut:
            logger.info(f"epoch {self.epoch}: the Fourier error stalls at the largest illumination_regularisation; "
                        + ', '.join(cut))
        return bool(cut)

    def _accelerate(self):
        """The object's momentum after an epoch (:class:`~ptypy_npu.step.EpochMomentum`), from the second on;
        stopped once the normaliser's delta, left to the data, has reached :data:`MAX_REGULARISATION`: the
        Fourier error then stalls on noise, and momentum would carry the noise-fitting steps further."""
        if self.momentum.eta == 0 or self.epoch == 0:
            return
        if self.adapts_regularisation and float(self.regularisation.asnumpy()) >= MAX_REGULARISATION:
            self.momentum.stop()
            return
        lit = illumination(self.probe, self.data.positions, self.object_shape).ravel()
        self.momentum.push(self.objective.object_re, self.objective.object_im,
                           self.communicator.allreduce(lit.astype(np.float32)))

    def _epoch(self):
        """One pass over the frames in a new random order; returns the losses of its steps."""
        start = self.settings.probe_update.start
        probe_on = Tensor(np.float32(start is not None and self.epoch >= start))
        phase = self.phase
        losses = []
        unmeasured = phase.hessian.unmeasured()  # a phase's first epoch: its network AdaHessian has no D yet
        for batch in self.shards.epoch(self.settings.batch_size, self.rng):
            inputs = self._inputs(batch)
            if unmeasured or self.steps_taken % self.settings.hessian_interval == 0:
                phase.hessian.refresh(inputs, self.rng)
                unmeasured = False
            loss, fourier, photon, exit_error = phase.step(*inputs, probe_on)
            self.steps_taken += 1
            self.errors[batch] = np.stack([fourier.asnumpy(), photon.asnumpy(), exit_error.asnumpy()], 1)
            losses.append(float(loss.asnumpy()))
            if not math.isfinite(losses[-1]):
                break
        return losses

    def compile(self):
        """Compile every phase's step and its curvature refresh (a few seconds each; announced): one step
        (and refresh, with second-order optimizers) on the first frames, then every parameter, state and
        the random generator back as they were. :meth:`run` does it first; a caller timing the epochs
        (the PtyPy engine's ``prepare``) does it before."""
        probe_on = Tensor(np.float32(0.0))
        for phase in self.phases:
            if phase.start not in self._compiled:
                logger.info(COMPILING[phase is not self.phases[0]])
                state, random_state = self.state(), self.rng.bit_generator.state
                inputs = self._inputs(self.shards.in_order(len(self.indices), self.settings.batch_size)[0])
                phase.hessian.refresh(inputs, self.rng)  # nothing without a second-order optimizer
                phase.hessian.refreshes = 0
                phase.step(*inputs, probe_on)
                self.restore(state)
                self.rng.bit_generator.state = random_state
                self._compiled.add(phase.start)

    def _inputs(self, batch):
        return (Tensor(self.amplitudes[batch]), Tensor(self.data.intensities[batch]), Tensor(self.mask[batch]),
                Tensor(self.indices[batch]))

    def _average_network_statistics(self):
        """Average the network's BatchNorm running statistics over the ranks. Each rank normalises its
        own part of the batch (data-parallel training without synchronised BatchNorm), so they drift
        apart; being exponential averages, linear in the batch statistics, averaging them once an
        epoch equals averaging every step."""
        if self.communicator.size == 1 or not self.statistics:
            return
        for param, total in zip(self.statistics, allreduce_tensors(self.communicator, self.statistics)):
            ops.assign(param, total / self.communicator.size)

    def _fix_gauge(self):
        """Hold the probe's power and centre (:func:`~ptypy_npu.gauge.fixed_gauge`), which the data cannot fix."""
        o = self.objective
        if any(probe_offset(self.probe, self.settings.probe_update.centre_tolerance)):
            self.momentum.stop()  # the object moves under its velocity
        probe, obj = fixed_gauge(o.probe_re.asnumpy() + 1j * o.probe_im.asnumpy(),
                                 o.object_re.asnumpy() + 1j * o.object_im.asnumpy(), self.object_shape,
                                 self.probe_power, self.settings.probe_update.centre_tolerance)
        for param, value in ((o.probe_re, probe.real), (o.probe_im, probe.imag), (o.object_re, obj.real),
                             (o.object_im, obj.imag)):
            ops.assign(param, Tensor(np.ascontiguousarray(value, np.float32)))

    def named_parameters(self):
        """{name: Parameter} of everything the steps hold (weights, object, probe, optimizer states),
        named by attribute path: stable, while MindSpore renames Parameters as graphs compile."""
        return dict(self.parts.parameters_and_names())

    def state(self):
        """Copies of every parameter and optimizer state, by name."""
        return {name: p.asnumpy().copy() for name, p in self.named_parameters().items()}

    def restore(self, state):
        """Set every parameter and optimizer state from :meth:`state`'s copies."""
        for name, param in self.named_parameters().items():
            ops.assign(param, Tensor(state[name]))

    def _diverged(self, losses):
        """(whether the last epoch diverged (:meth:`run`), its mean Fourier error over all processes)."""
        trained = sum(float(ops.square(p).sum().asnumpy()) for optimizer in self.optimizers for p in optimizer.parameters)
        total, count = self.communicator.allreduce(np.array([self.errors[:, 0].sum(), len(self.errors)], np.float32))
        fourier = float(total / count)
        return not (all(map(math.isfinite, losses + [trained])) and fourier <= DIVERGENCE_FACTOR * self.lowest_fourier), \
            fourier

    def evaluate(self):
        """PtyPy's per-frame errors (N, 3) of the current object and probe, without a step (exit error 0)."""
        objective = self.objective
        errors = np.zeros((len(self.indices), 3))
        for batch in self.shards.in_order(len(self.indices), self.settings.batch_size):  # the steps' batch shape
            _, fourier, photon, _ = objective(*self._inputs(batch))
            errors[batch, 0], errors[batch, 1] = fourier.asnumpy(), photon.asnumpy()
        return errors

    @property
    def object(self):
        """Current object, complex (Ho, Wo)."""
        o = self.objective
        return (o.object_re.asnumpy() + 1j * o.object_im.asnumpy()).reshape(self.object_shape)

    @property
    def probe(self):
        """Current probe modes, complex (M, H, W)."""
        o = self.objective
        return o.probe_re.asnumpy() + 1j * o.probe_im.asnumpy()

    def _require_network(self):
        if self.network is None:
            raise ValueError("network.name is None: the physics-only solver has no network")
        return self.network

    def predict_patches(self, frames=None, batch_size=64):
        """The network's object patches, complex (N, H, W), for frames ``frames`` (default all)."""
        frames = np.arange(len(self.amplitudes)) if frames is None else np.asarray(frames)
        if self.predictor is None:
            self.predictor = PatchPredictor(self._require_network())
        return self.predictor(self.amplitudes[frames], batch_size)

    def export_network(self):
        """The trained network as a :class:`NetworkExport` (for :func:`ptypy_npu.models.save_model`)."""
        settings = {'name': self.settings.network.name, **self.settings.network.options()}
        dose = float(np.mean(self.data.intensities.sum(axis=(1, 2))))  # mean photons per frame
        return NetworkExport(self._require_network(), settings, self.data.frame_shape, self.input_scale, self.probe,
                             dict(self.data.geometry), {'frames': int(len(self.indices)), 'epochs': self.epoch,
                                                        'loss': self.settings.loss, 'photons_per_frame': [dose, dose]})
