"""PtyPy engine ``W1Net``: a thin adapter between PtyPy's containers and the solver core.

Registered with PtyPy by the plugin host (``import ptypy_npu``); importing this module
needs PtyPy. Each ``prepare`` turns the active views of the single scan into a
:class:`~ptypy_npu.solver.ScanData` (frames, mask, object positions, probe, object and
the scan's propagator factors); each ``iterate`` trains and writes object and probe back
into PtyPy's storages, so chaining with DM/ePIE/ML, autosave and ``.ptyr`` output work.

Two ways to spread the frames over processes (parameter ``distributed``), ending with the
same network, object and probe on every process:

* ``'mpi'`` (``mpiexec -n N``): each rank trains on the frames PtyPy made active on it and
  the solver sums gradients through PtyPy's communicator (mpi4py), on the host.
* ``'mindspore'`` (``msrun --worker_num=N``, or MindSpore's Ascend launchers): each process
  is a PtyPy run of its own holding all frames; the engine gives process r the r-th block
  of them and the compiled step sums gradients with MindSpore's collectives (HCCL, NCCL,
  mccl), on the device. Only MindSpore's rank 0 writes files (``.ptyr``, autosaves,
  models, checkpoints), and PtyPy's reported errors are those of rank 0's frames.
"""
import dataclasses
import os

import numpy as np
from ptypy.core.manager import BlockFull, BlockVanilla, Full, Vanilla
from ptypy.engines.base import BaseEngine
from ptypy.utils import parallel
from ptypy.utils.verbose import logger

from .distributed import MindSporeCommunicator, communicator
from .networks import copy_weights, network_weights
from .solver import GroupSettings, JointSolver, ScanData, SolverSettings, select_device

__all__ = ['W1Net']

#: Object amplitudes handed over by another engine above this multiple of their median over
#: the scanned region are clipped to it (DM leaves values near 100 at badly lit edges).
HANDOVER_AMPLITUDE_LIMIT = 5.0


class W1Net(BaseEngine):
    """
    Physics-informed neural engine: a network, the object and the probe trained jointly
    on minibatches of frames against the measured intensities (MindSpore).

    Defaults:

    [name]
    default = W1Net
    type = str
    help = Engine name

    [numiter]
    default = 50
    type = int
    lowlim = 1
    help = Number of epochs (passes over all frames)

    [probe_support]
    default = None
    type = float, None
    help = Not applied by this engine (kept None)

    [batch_size]
    default = 4
    type = int
    lowlim = 1
    help = Frames per optimisation step, over all processes (MPI ranks or msrun workers; each takes batch_size / processes); a multiple of the number of processes

    [loss]
    default = gaussian
    type = str
    help = Data term: 'gaussian' (amplitude misfit, as DM) or 'poisson' (negative log-likelihood, as ML)
    choices = ['gaussian', 'poisson']

    [consistency]
    default = 4.0
    type = float
    lowlim = 0.0
    help = Weight of the prior tying object and network patches, in object units (fades at high dose)

    [network_consistency]
    default = 1.0
    type = float
    lowlim = 0.0
    help = Weight of the pull of the network toward the object's patches, in photons (the object teaches the network)

    [illumination_regularisation]
    default = 0.1
    type = float
    lowlim = 0.0
    help = Delta in the object/probe step normaliser 1 / (w + delta max w)

    [network]
    default = Param
    type = Param
    help = Network that maps diffraction amplitudes to object patches

    [network.name]
    default = W1Net
    type = str, None
    help = Network from the loaded plugins (see `ptypy-npu plugins`); None refines object and probe only

    [network.depth]
    default = 3
    type = int
    lowlim = 1
    help = Stride-2 encoder stages

    [network.width]
    default = 8
    type = int
    lowlim = 1
    help = Channels of the first encoder stage

    [network.start]
    default = 30
    type = int
    lowlim = 0
    help = Epochs of physics-only refinement (object and probe) before the network joins

    [network.binning]
    default = 2
    type = int
    lowlim = 1
    uplim = 4
    help = Detector pixels binned per side before the encoder (1, 2 or 4)

    [network_update]
    default = Param
    type = Param
    help = Optimizer of the network weights

    [network_update.optimizer]
    default = adam
    type = str
    help = Optimizer name from the loaded plugins: adam, adamw, sgd, lion, adahessian or a plugin's

    [network_update.weight_decay]
    default = 0.0
    type = float
    lowlim = 0.0
    help = Decoupled weight decay of the network weights (passed to the optimizer only when > 0)

    [network_update.learning_rate]
    default = None
    type = float, None
    lowlim = 0.0
    help = Learning rate; None takes the optimizer's measured default (ptypy_npu.solver.DEFAULT_LEARNING_RATES, README)

    [object_update]
    default = Param
    type = Param
    help = Optimizer of the object; its gradient is divided by the batch illumination (not for adahessian)

    [object_update.optimizer]
    default = sgd
    type = str
    help = Optimizer name from the loaded plugins: adam, adamw, sgd, lion (lazy, betas 0.5/0.9 here), adahessian (stalls on the object: README) or a plugin's

    [object_update.weight_decay]
    default = 0.0
    type = float
    lowlim = 0.0
    help = Decoupled weight decay of the object (passed to the optimizer only when > 0)

    [object_update.learning_rate]
    default = None
    type = float, None
    lowlim = 0.0
    help = Learning rate (with sgd, 1 is a full projection-like step); None takes the optimizer's measured default (ptypy_npu.solver.DEFAULT_LEARNING_RATES, README)

    [probe_update]
    default = Param
    type = Param
    help = Optimizer of the probe; its gradient is divided by the batch object power

    [probe_update.optimizer]
    default = sgd
    type = str
    help = Optimizer name from the loaded plugins: adam, adamw, sgd, lion, adahessian or a plugin's

    [probe_update.weight_decay]
    default = 0.0
    type = float
    lowlim = 0.0
    help = Decoupled weight decay of the probe (passed to the optimizer only when > 0)

    [probe_update.learning_rate]
    default = None
    type = float, None
    lowlim = 0.0
    help = Learning rate (with sgd, 1 is a full projection-like step); None takes the optimizer's measured default (ptypy_npu.solver.DEFAULT_LEARNING_RATES, README)

    [probe_update.start]
    default = 0
    type = int, None
    lowlim = 0
    help = Epochs before the probe is refined; None keeps the probe fixed

    [max_divergences]
    default = 3
    type = int
    lowlim = 0
    help = Rollbacks of a diverging epoch (NaN/Inf; learning rates halved each time) before the engine stops

    [hessian_interval]
    default = 1
    type = int
    lowlim = 1
    help = Steps between Hessian-diagonal refreshes of second-order optimizers (adahessian); keep 1 for adahessian on object or probe, whose estimate must come from the batch it steps on

    [seed]
    default = 0
    type = int
    lowlim = 0
    help = Seed of MindSpore and of the frame shuffling

    [device]
    default = CPU
    type = str
    help = MindSpore device target
    choices = ['CPU', 'GPU', 'Ascend']

    [checkpoint]
    default = Param
    type = Param
    help = Full training state on disk (network, object, probe, optimizer states, epoch, RNG state)

    [checkpoint.path]
    default = None
    type = str, None
    help = File (.ckpt) written atomically every checkpoint.interval epochs; an existing one is never replaced unless resumed from

    [checkpoint.interval]
    default = 10
    type = int
    lowlim = 1
    help = Epochs between checkpoints

    [checkpoint.resume]
    default = False
    type = bool
    help = Start from checkpoint.path when it exists (same scan and settings); the run then ends as an uninterrupted one would

    [precision]
    default = float32
    type = str
    help = Arithmetic of the network: 'float32', or mixed precision 'float16' (dynamic loss scaling; CPU, GPU, Ascend) or 'bfloat16' (GPU, Ascend); weights, object, probe and physics stay float32
    choices = ['float32', 'float16', 'bfloat16']

    [distributed]
    default = mpi
    type = str
    help = How processes share the frames: 'mpi' (launch with mpiexec; PtyPy's ranks, gradients summed by mpi4py on the host) or 'mindspore' (launch with msrun, or MindSpore's Ascend launchers; the engine splits the frames over MindSpore's ranks, gradients summed in the compiled step by HCCL/NCCL/mccl)
    choices = ['mpi', 'mindspore']

    [mode]
    default = train
    type = str
    help = 'train' (the network from scratch or from model.load), 'infer' (stitch the patches a loaded model predicts into the object, no training; one iteration suffices), 'finetune' (load, then train with the network from the first epoch)
    choices = ['train', 'infer', 'finetune']

    [model]
    default = Param
    type = Param
    help = Trained models on disk (directories written by model.save or `ptypy-npu train`)

    [model.load]
    default = None
    type = str, None
    help = Model directory to start from; modes infer and finetune need one

    [model.save]
    default = None
    type = str, None
    help = Model directory to write when the engine finishes; an existing one is never replaced
    """

    SUPPORTED_MODELS = [Full, Vanilla, BlockFull, BlockVanilla]

    def __init__(self, ptycho_parent, pars=None):
        super().__init__(ptycho_parent, pars)
        # BaseEngine merges only the top level: keep defaults inside partly given subtrees
        self.p = self.DEFAULT.copy(99)
        self.p.update(pars, in_place_depth=3)
        self.solver = None
        self.settings = None
        self.model = None
        self._view_ids = None
        self._inferred_errors = None
        self.communicator = communicator(parallel.comm)
        if self.p.distributed == 'mindspore':  # now: PtyPy creates all engines before any runs and saves
            self._start_mindspore_ranks()

    def _solver_settings(self):
        p = self.p
        network = None
        if p.network.name is not None:
            network = {'name': p.network.name, 'depth': p.network.depth, 'width': p.network.width,
                       'binning': p.network.binning}
        def group(tree):
            options = {'weight_decay': tree.weight_decay} if tree.weight_decay > 0 else {}
            return GroupSettings(tree.optimizer, tree.learning_rate, options)

        return SolverSettings(
            network=network, network_start=p.network.start, network_group=group(p.network_update), object_group=group(p.object_update),
            probe_group=group(p.probe_update),
            batch_size=p.batch_size, loss=p.loss, consistency=p.consistency, network_consistency=p.network_consistency,
            probe_update_start=p.probe_update.start,
            illumination_regularisation=p.illumination_regularisation, hessian_interval=p.hessian_interval, max_divergences=p.max_divergences,
            seed=p.seed, device=p.device, precision=p.precision)

    def engine_initialize(self):
        """Check every setting (names, ranges, device) before any container is touched."""
        self.settings = self._solver_settings()
        self.settings.validate()
        select_device(self.settings.device)
        load, save = self.p.model.load, self.p.model.save
        if self.p.mode in ('infer', 'finetune') and load is None:
            raise ValueError(f"mode {self.p.mode!r} needs a trained model: set model.load to a model directory")
        if load is not None:
            from .models import load_model
            try:
                self.model = load_model(load)
            except (OSError, ValueError) as error:
                raise ValueError(f"model.load: {error}") from error
        checkpoint = self.p.checkpoint.path
        if checkpoint is not None and not str(checkpoint).endswith('.ckpt'):
            raise ValueError(f"checkpoint.path must end in .ckpt, got {checkpoint!r}")
        if checkpoint is not None and os.path.exists(checkpoint) and not self.p.checkpoint.resume:
            raise FileExistsError(f"checkpoint.path: {checkpoint} exists; set checkpoint.resume = True to "
                                  "continue from it, or choose another path")
        if save is not None and os.path.exists(save):
            raise FileExistsError(f"model.save: {save} exists; W1Net never replaces a model, choose another path")
        if save is not None and (self.p.mode == 'infer' or self.settings.network is None and load is None):
            raise ValueError("model.save: nothing to save (mode 'infer' or network.name None trains no network)")

    def _start_mindspore_ranks(self):
        """Join MindSpore's collective communication; ranks above 0 stop PtyPy's file output
        (also that of the engines before this one)."""
        select_device(self.p.device)
        if parallel.size > 1:
            raise ValueError(f"distributed = 'mindspore' splits the frames over the processes msrun starts, but "
                             f"PtyPy runs on {parallel.size} MPI ranks: launch with msrun, or set distributed = 'mpi'")
        try:
            self.communicator = MindSporeCommunicator()
        except RuntimeError as error:
            raise ValueError(f"distributed = 'mindspore': {error}") from error
        if self.communicator.rank > 0:  # every process is a PtyPy run of its own: one writes
            io = self.ptycho.p.io
            io.rfile, io.autosave.active = None, False
            logger.info(f"W1Net: MindSpore rank {self.communicator.rank} of {self.communicator.size}: "
                        "PtyPy's .ptyr and autosave files are left to rank 0")

    def _own_views(self, views):
        """The views this process trains on: all PtyPy made active here, or under distributed =
        'mindspore' (where PtyPy makes all active everywhere) the rank's contiguous block of them."""
        if self.p.distributed != 'mindspore':
            return views
        rank, size = self.communicator.rank, self.communicator.size
        if len(views) < size:
            raise ValueError(f"distributed = 'mindspore': {len(views)} frames cannot be shared by {size} processes")
        return views[rank * len(views) // size:(rank + 1) * len(views) // size]

    def _rank0(self, array):
        """Rank 0's copy of the complex ``array`` under distributed = 'mindspore', where every process
        is a PtyPy run of its own and earlier engines (or a randomly seeded simulation) may leave
        it different; the ranks must start alike. As given otherwise (PtyPy's ranks agree)."""
        if self.p.distributed != 'mindspore' or self.communicator.size == 1:
            return array
        own = np.stack([array.real, array.imag]).astype(np.float32) * (self.communicator.rank == 0)
        total = self.communicator.allreduce(own)
        return (total[0] + 1j * total[1]).astype(array.dtype)

    def scan_data(self):
        """The active frames of the single scan as solver arrays, plus their view IDs."""
        if len(self.di.storages) != 1 or len(self.ob.storages) != 1 or len(self.pr.storages) != 1:
            raise NotImplementedError("W1Net handles one scan with one object and one probe storage, found "
                                      f"{len(self.di.storages)} diffraction, {len(self.ob.storages)} object "
                                      f"and {len(self.pr.storages)} probe storages")
        views = self._own_views([v for v in self.di.views.values() if v.active])
        if not views:
            raise ValueError("no active diffraction views on this rank: nothing to reconstruct")
        pods = [v.pod for v in views]
        if any(pod.ob_view.layer != 0 for v in views for pod in v.pods.values()):
            raise NotImplementedError("W1Net supports a single object mode")
        obj_storage = next(iter(self.ob.storages.values()))
        probe_storage = next(iter(self.pr.storages.values()))
        obj = self._clip_outliers(self._rank0(obj_storage.data[0]), [pod.ob_view for pod in pods])
        geo = pods[0].geometry
        geometry = {'wavelength': float(geo.lam), 'distance': float(geo.distance),
                    'detector_pixel': float(np.ravel(geo.psize)[0]), 'object_pixel': float(np.ravel(geo.resolution)[0])}
        data = ScanData(intensities=np.stack([v.data for v in views]),
                        mask=np.stack([pod.ma_view.data for pod in pods]).astype(bool),
                        positions=np.array([pod.ob_view.dlow for pod in pods]),
                        probe=self._rank0(probe_storage.data), obj=obj,
                        propagator=(geo.propagator.pre_fft, geo.propagator.post_fft), geometry=geometry)
        return data.validate(), [v.ID for v in views]

    def _clip_outliers(self, obj, views):
        """``obj`` (Ho, Wo) with amplitudes above ``HANDOVER_AMPLITUDE_LIMIT`` x their median
        under the views scaled down to that limit (phases kept); warns with the count. Across
        processes the region is that of all ranks' views, so every rank clips the same pixels."""
        lit = np.zeros(obj.shape, np.float32)
        for view in views:
            lit[view.dlow[0]:view.dhigh[0], view.dlow[1]:view.dhigh[1]] = 1
        lit = self.communicator.allreduce(lit) > 0
        amplitude = np.abs(obj)
        limit = HANDOVER_AMPLITUDE_LIMIT * np.median(amplitude[lit])
        outliers = amplitude > limit
        if not outliers.any():
            return obj
        logger.warning(f"W1Net: {outliers.sum()} object pixels with amplitude above {limit:.3g} "
                       f"({HANDOVER_AMPLITUDE_LIMIT:g} x the median, up to {amplitude.max():.3g}) clipped to it")
        return np.where(outliers, obj * (limit / np.maximum(amplitude, 1e-30)), obj)

    def engine_prepare(self):
        """(Re)build the solver from the current containers; keeps trained or loaded network weights."""
        data, self._view_ids = self.scan_data()
        settings, input_scale, weights = self.settings, None, None
        if self.model is not None:
            try:
                self.model.check(data)
            except ValueError as error:
                raise ValueError(f"model.load: {error}") from error
            settings = dataclasses.replace(settings, network=dict(self.model.sidecar['network']))
            settings.network_start = 0 if self.p.mode == 'finetune' else settings.network_start
            input_scale, weights = self.model.sidecar['input']['scale'], network_weights(self.model.network)
        if self.p.mode == 'infer':
            obj = self.model.reconstruct(data, communicator=self.communicator)
            # no network in this solver: it only reports the errors of the stitched object
            self.solver = JointSolver(dataclasses.replace(data, obj=obj),
                                      dataclasses.replace(settings, network=None, precision='float32'),
                                      communicator=self.communicator)
            self._inferred_errors = None
            return
        if self.solver is not None and self.solver.network is not None:
            weights = network_weights(self.solver.network)
        self.solver = JointSolver(data, settings, input_scale=input_scale, communicator=self.communicator)
        if weights is not None:
            copy_weights(weights, self.solver.network)
        checkpoint = self.p.checkpoint.path
        if self.p.checkpoint.resume and checkpoint is not None and os.path.exists(checkpoint):
            try:
                self.solver.load_checkpoint(checkpoint)
            except (ValueError, RuntimeError) as error:
                raise ValueError(f"checkpoint.path: {error}") from error
            self.curiter = self.solver.epoch
            logger.info(f"W1Net: resumed from {checkpoint} at epoch {self.curiter}")
        logger.info(f"W1Net: {len(self._view_ids)} frames, object {data.obj.shape}, "
                    f"{data.probe.shape[0]} probe mode(s), network {self.settings.network}")

    def engine_iterate(self, num=1):
        if self.p.mode == 'infer':  # the stitched object is final: report its errors
            if self._inferred_errors is None:
                self._inferred_errors = self.solver.evaluate()
                self._write_back()
            self.curiter += num
            return dict(zip(self._view_ids, self._inferred_errors))
        try:
            errors = self.solver.run(num)
        except FloatingPointError:
            self._write_back()  # the solver restored the last good state: PtyPy keeps it, never NaNs
            raise
        self._write_back()
        self.curiter += num
        checkpoint = self.p.checkpoint.path
        if checkpoint is not None and (self.solver.epoch % self.p.checkpoint.interval == 0 or
                                       self.curiter >= self.numiter):
            self.solver.save_checkpoint(checkpoint)
        return dict(zip(self._view_ids, errors))

    def _write_back(self):
        obj_storage = next(iter(self.ob.storages.values()))
        probe_storage = next(iter(self.pr.storages.values()))
        obj_storage.data[0] = self.solver.object.astype(obj_storage.dtype)
        probe_storage.data[:] = self.solver.probe.astype(probe_storage.dtype)

    def engine_finalize(self):
        """Object and probe are already in PtyPy's storages; save the model if asked; release the solver."""
        self._write_back()
        if self.p.model.save is not None and self.communicator.rank == 0:  # every rank holds the same network
            from .models import save_model
            save_model(self.p.model.save, self.solver)
            logger.info(f"W1Net: saved the trained network to {self.p.model.save}")
        self.solver = None
