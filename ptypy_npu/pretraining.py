"""Pretraining for an instrument: a corpus of scans simulated with its probe, geometry, frame size, dose and
scan step, objects drawn from :mod:`ptypy_npu.objects`, and the network trained on all of it at once.

A network earns its cost by reuse: trained once per instrument, it reconstructs each new scan in one
pass (:mod:`ptypy_npu.models`) and starts refinement from there. The corpus's scans are combined into
one (:func:`ptypy_npu.scan.combine`: each object in its own region of one array, one probe), so the
solver trains one network over every frame while each scan keeps its own object.

Two ways to teach the network (``supervised``):

* supervised (default): the object is held at the simulated truth and only the network learns, from
  its own data term (the physics) and the exit-wave difference to the true patches
  (``network_consistency``, the supervised term);
* physics only: the objects start flat and are reconstructed alongside, as ``ptypy-npu train`` does
  on measured scans; the truth is never seen.
"""
import dataclasses

import numpy as np

from . import settings as settings_module
from .guesses import scan_step
from .objects import CLASSES
from .plugins import build_solver
from .scan import combine
from .simulate import simulate_scan


def instrument(data):
    """What a scan (a :class:`~ptypy_npu.scan.ScanData` with a probe) tells of its instrument: frame size,
    mean photons per frame, scan step as a fraction of the frame, frames, geometry and probe."""
    frame_size = data.frame_shape[0]
    if data.frame_shape != (frame_size, frame_size):
        raise ValueError(f"pretraining needs square frames, the scan has {data.frame_shape}")
    return {'frame_size': frame_size, 'photons': float(np.mean(np.sum(data.intensities, axis=(1, 2)))),
            'step_fraction': scan_step(data.positions) / frame_size, 'frames': int(len(data.intensities)),
            'geometry': dict(data.geometry), 'probe': np.asarray(data.probe)}


def corpus(machine, objects, frames=None, seed=0):
    """``(data, truth, card)``: ``objects`` scans of random objects of the library (amplitude and phase
    each from any of its classes) simulated with the ``machine`` of :func:`instrument` (``frames``
    each, default its own), combined into one; ``card`` describes the corpus for the model's sidecar."""
    if not objects >= 1:
        raise ValueError(f"--objects must be >= 1, got {objects}")
    frames = frames or machine['frames']
    scans, truths = [], []
    for k in range(objects):
        data, truth = simulate_scan(frame_size=machine['frame_size'], count=frames, photons=machine['photons'],
                                    step_fraction=machine['step_fraction'], seed=seed + k, probe=machine['probe'],
                                    obj='random')
        scans.append(dataclasses.replace(data, geometry=machine['geometry']))
        truths.append(truth)
    data, truth, _ = combine(scans, truths)
    card = {'objects': objects, 'frames_per_object': frames, 'classes': sorted(CLASSES),
            'photons_per_frame': [machine['photons'], machine['photons']], 'step_fraction': machine['step_fraction'],
            'frame_size': machine['frame_size'], 'seed': seed}
    return data, truth, card


#: Supervised pretraining: the truth's pull on the network against its own data term. Single-frame phase
#: retrieval has many local minima; at weight 1 the data term held a 6-object corpus at 0.48 patch error
#: in 12 epochs, at 100 it reached 0.40 (flat 0.75).
SUPERVISED_CONSISTENCY = 100.0
#: Settings where pretraining departs from the engine's defaults, unless given: the holographic input,
#: the one that transfers to unseen objects (a diffraction-input network did no better than a flat object
#: on them), and 16-frame batches (the dose-adapted batch, 4 at 1e7 photons, suits object steps; the
#: network's BatchNorm wants more frames per step).
PRETRAINING_DEFAULTS = {'network.input': 'holographic', 'batch_size': 16}


def pretraining_solver(data, truth, settings, supervised=True):
    """The solver that trains the network on a corpus (with ``settings``, e.g. made over
    :data:`PRETRAINING_DEFAULTS`): supervised, the object held at ``truth``, the probe fixed and the
    network learning from the first epoch, mostly from the truth (:data:`SUPERVISED_CONSISTENCY`); else as
    ``settings`` say."""
    if supervised:
        data = dataclasses.replace(data, obj=truth)
        settings = settings_module.make({'object_update.learning_rate': 0.0, 'probe_update.start': None,
                                         'consistency': 0.0, 'network.start': 0,
                                         'network_consistency': SUPERVISED_CONSISTENCY}, settings)
    return build_solver(data, settings)
