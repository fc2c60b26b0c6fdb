"""PtyPy engine ``W1Net``: a thin adapter between PtyPy's containers and the solver core.

Each ``prepare`` turns the active views of the single scan into a :class:`~ptypy_npu.scan.ScanData`
(frames, mask, object positions, probe, object and the scan's propagator factors); each
``iterate`` trains and writes object and probe back into PtyPy's storages, so chaining with
DM/ePIE/ML, autosave and ``.ptyr`` output work. Its parameters are :mod:`ptypy_npu.settings`'
:class:`~ptypy_npu.settings.EngineSettings`, from which the ``Defaults:`` block is generated.

Two ways to spread the frames over processes (parameter ``distributed``), ending with the same
network, object and probe on every process:

* ``'mpi'`` (``mpiexec -n N``): each rank trains on the frames PtyPy made active on it and the
  solver sums gradients through PtyPy's communicator (mpi4py), on the host.
* ``'mindspore'`` (``msrun --worker_num=N``, or MindSpore's Ascend launchers): each process is a
  PtyPy run of its own holding all frames; the engine gives process r the r-th block of them and
  the compiled step sums gradients with MindSpore's collectives (HCCL, NCCL, mccl), on the device.
  Only MindSpore's rank 0 writes files (``.ptyr``, autosaves, models, checkpoints), and PtyPy's
  reported errors are those of rank 0's frames.
"""
import dataclasses
import os

import numpy as np
from ptypy.core.manager import BlockFull, BlockVanilla, Full, Vanilla
from ptypy.engines.base import BaseEngine
from ptypy.utils import parallel
from ptypy.utils.verbose import logger

from .. import checkpoints, plugins, settings
from ..device import select_device
from ..distributed import MindSporeCommunicator, allreduce_arrays, communicator
from ..models import load_model, save_model
from ..networks import copy_weights, network_weights
from ..scan import WEAKLY_LIT, ScanData, illumination, neutral_where_weakly_lit
from ..solver import JointSolver

__all__ = ['W1Net']

#: Object amplitudes handed over by another engine above this multiple of their median over
#: the scanned region are clipped to it (DM leaves values near 100 at badly lit edges).
HANDOVER_AMPLITUDE_LIMIT = 5.0


class W1Net(BaseEngine):
    """
    Physics-informed neural engine: a network, the object and the probe trained jointly on
    minibatches of frames against the measured intensities (MindSpore). Parameters: README
    and :mod:`ptypy_npu.settings`, from which they are generated.

    Defaults:
    """

    SUPPORTED_MODELS = [Full, Vanilla, BlockFull, BlockVanilla]

    def __init__(self, ptycho_parent, pars=None):
        super().__init__(ptycho_parent, pars)
        # BaseEngine merges only the top level: keep defaults inside partly given subtrees
        self.p = self.DEFAULT.copy(99)
        self.p.update(pars, in_place_depth=3)
        engines = getattr(getattr(ptycho_parent, 'p', None), 'engines', {}) or {}
        self.label = next((label for label, tree in engines.items() if tree is pars), 'eXX')
        self.settings = None
        self.solver = None
        self.model = None
        self._view_ids = None
        self._inferred_errors = None
        self.communicator = communicator(parallel.comm)
        if self.p.distributed == 'mindspore':  # now: PtyPy creates all engines before any runs and saves
            self._start_mindspore_ranks()

    def _key(self, key):
        """A setting's key as the user wrote it in the tree."""
        return f"p.engines.{self.label}.{key}"

    def _refuse(self, key, problem, error=ValueError):
        return error(f"{self._key(key)} {problem}")

    def _checked(self, build):
        """``build()``, its :class:`~ptypy_npu.settings.SettingError` re-raised naming the tree key."""
        try:
            return build()
        except settings.SettingError as error:
            raise ValueError(error.spelled(self._key)) from None

    def engine_initialize(self):
        """Check every setting (names, ranges, device, files) before any container is touched."""
        self.settings = settings.from_tree(self.p, settings.EngineSettings)
        self._checked(lambda: plugins.factories(self.settings))  # unknown names first, then ranges and rates
        self._checked(self.settings.validate)
        select_device(self.settings.device)
        s = self.settings
        if s.mode in ('infer', 'finetune') and s.model.load is None:
            raise self._refuse('model.load', f"must name a trained model directory for mode {s.mode!r}")
        if s.model.load is not None:
            try:
                self.model = load_model(s.model.load)
            except (OSError, ValueError) as error:
                raise self._refuse('model.load', f"cannot be used: {error}") from error
        if s.checkpoint.path is not None:
            self._checked(lambda: checkpoints.check_path(s.checkpoint.path, 'checkpoint.path'))
            if os.path.exists(s.checkpoint.path) and not s.checkpoint.resume:
                raise self._refuse('checkpoint.path', f"{s.checkpoint.path} exists; set checkpoint.resume = True "
                                   "to continue from it, or choose another path", FileExistsError)
        if s.model.save is not None:
            if os.path.exists(s.model.save):
                raise self._refuse('model.save', f"{s.model.save} exists; W1Net never replaces a model, choose "
                                   "another path", FileExistsError)
            if s.mode == 'infer' or not s.uses_network and s.model.load is None:
                raise self._refuse('model.save', "has nothing to save: mode 'infer' or network.name None trains "
                                                 "no network")

    def _start_mindspore_ranks(self):
        """Join MindSpore's collective communication; ranks above 0 stop PtyPy's file output
        (also that of the engines before this one)."""
        select_device(self.p.device)
        if parallel.size > 1:
            raise self._refuse('distributed', f"'mindspore' splits the frames over the processes msrun starts, "
                               f"but PtyPy runs on {parallel.size} MPI ranks: launch with msrun, or set 'mpi'")
        try:
            self.communicator = MindSporeCommunicator()
        except RuntimeError as error:
            raise self._refuse('distributed', f"'mindspore': {error}") from error
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
            raise self._refuse('distributed', f"'mindspore': {len(views)} frames cannot be shared by {size} processes")
        return views[rank * len(views) // size:(rank + 1) * len(views) // size]

    def _rank0(self, array):
        """Rank 0's copy of ``array`` under distributed = 'mindspore', where every process is a PtyPy
        run of its own and earlier engines (or a randomly seeded simulation) may leave it different;
        the ranks must start alike. As given otherwise (PtyPy's ranks agree)."""
        if self.p.distributed != 'mindspore':
            return array
        return allreduce_arrays(self.communicator, [array * (self.communicator.rank == 0)])[0]

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
        probe = self._rank0(probe_storage.data)
        positions = np.array([pod.ob_view.dlow for pod in pods])
        obj = self._handed_over(self._rank0(obj_storage.data[0]), probe, positions)
        geo = pods[0].geometry
        geometry = {'wavelength': float(geo.lam), 'distance': float(geo.distance),
                    'detector_pixel': float(np.ravel(geo.psize)[0]), 'object_pixel': float(np.ravel(geo.resolution)[0])}
        data = ScanData(intensities=np.stack([v.data for v in views]),
                        mask=np.stack([pod.ma_view.data for pod in pods]).astype(bool),
                        positions=positions, probe=probe, obj=obj,
                        propagator=(geo.propagator.pre_fft, geo.propagator.post_fft), geometry=geometry)
        return data.validate(), [v.ID for v in views]

    def _handed_over(self, obj, probe, positions):
        """The object (Ho, Wo) the engine before left, made a start for W1Net's steps: amplitude outliers
        clipped (:func:`clip_outliers`), its typical transmission where the scan lights it weakly
        (:func:`~ptypy_npu.scan.neutral_where_weakly_lit`; measured on MoonFlowerScan, DM 50 iterations then
        W1Net 50 epochs: 0.082 kept as handed, 0.051 with the rule). Across processes
        the illumination is that of all ranks' frames, so every rank changes the same pixels."""
        lit = self.communicator.allreduce(np.ascontiguousarray(illumination(probe, positions, obj.shape), np.float32))
        obj, weak = neutral_where_weakly_lit(clip_outliers(obj, lit > 0), lit)
        if weak:
            logger.info(f"W1Net: {weak} object pixels lit below {WEAKLY_LIT:g} of the brightest illumination "
                        "set to the object's typical transmission")
        return obj

    def engine_prepare(self):
        """(Re)build the solver from the current containers; keeps trained or loaded network weights."""
        data, self._view_ids = self.scan_data()
        s, input_scale, weights = self.settings, None, None
        if self.model is not None:
            try:
                self.model.check(data)
            except ValueError as error:
                raise self._refuse('model.load', f"does not fit this scan: {error}") from error
            network = dict(self.model.network_settings(), start=0 if s.mode == 'finetune' else s.network.start)
            s = settings.make({'network': network}, s)
            input_scale, weights = self.model.sidecar['input']['scale'], network_weights(self.model.network)
        if s.mode == 'infer':
            obj = self.model.reconstruct(data, communicator=self.communicator)
            # no network in this solver: it only reports the errors of the stitched object
            s = settings.make({'network.name': None, 'precision': 'float32'}, s)
            self.solver = self._solver(dataclasses.replace(data, obj=obj), s)
            self._inferred_errors = None
            return
        if self.solver is not None and self.solver.network is not None:
            weights = network_weights(self.solver.network)
        self.solver = self._solver(data, s, input_scale)
        if weights is not None:
            copy_weights(weights, self.solver.network)
        checkpoint = s.checkpoint.path
        if s.checkpoint.resume and checkpoint is not None and os.path.exists(checkpoint):
            try:
                checkpoints.resume(self.solver, checkpoint)
            except (ValueError, RuntimeError) as error:
                raise self._refuse('checkpoint.path', f"cannot be resumed: {error}") from error
            self.curiter = self.solver.epoch
            logger.info(f"W1Net: resumed from {checkpoint} at epoch {self.curiter}")
        logger.info(f"W1Net: {len(self._view_ids)} frames, object {data.obj.shape}, "
                    f"{data.probe.shape[0]} probe mode(s), network {s.network.name}")
        self.solver.compile()  # here, so that PtyPy's iteration times hold no compilation

    def _solver(self, data, s, input_scale=None):
        return self._checked(lambda: JointSolver(data, s, plugins.factories(s), input_scale=input_scale,
                                                 communicator=self.communicator))

    def engine_iterate(self, num=1):
        if self.settings.mode == 'infer':  # the stitched object is final: report its errors
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
        checkpoint = self.settings.checkpoint
        if checkpoint.path is not None and (self.solver.epoch % checkpoint.interval == 0 or
                                            self.curiter >= self.numiter):
            checkpoints.save(self.solver, checkpoint.path)
        return dict(zip(self._view_ids, errors))

    def _write_back(self):
        obj_storage = next(iter(self.ob.storages.values()))
        probe_storage = next(iter(self.pr.storages.values()))
        obj_storage.data[0] = self.solver.object.astype(obj_storage.dtype)
        probe_storage.data[:] = self.solver.probe.astype(probe_storage.dtype)

    def engine_finalize(self):
        """Object and probe are already in PtyPy's storages; save the model if asked; release the solver."""
        self._write_back()
        if self.settings.model.save is not None and self.communicator.rank == 0:  # every rank holds the same network
            save_model(self.settings.model.save, self.solver.export_network())
            logger.info(f"W1Net: saved the trained network to {self.settings.model.save}")
        self.solver = None


W1Net.__doc__ = W1Net.__doc__.rstrip(" ") + settings.ptypy_defaults()  # sections start a line


def clip_outliers(obj, region):
    """``obj`` (Ho, Wo) complex with amplitudes above ``HANDOVER_AMPLITUDE_LIMIT`` x their median over
    the bool ``region`` scaled down to that limit, phases kept; logs a warning with the count."""
    amplitude = np.abs(obj)
    limit = HANDOVER_AMPLITUDE_LIMIT * np.median(amplitude[region])
    outliers = amplitude > limit
    if not outliers.any():
        return obj
    logger.warning(f"W1Net: {outliers.sum()} object pixels with amplitude above {limit:.3g} "
                   f"({HANDOVER_AMPLITUDE_LIMIT:g} x the median, up to {amplitude.max():.3g}) clipped to it")
    return np.where(outliers, obj * (limit / np.maximum(amplitude, 1e-30)), obj)
