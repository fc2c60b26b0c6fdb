"""Trained networks on disk, one-pass inference and streaming reconstruction (no PtyPy).

A model is a directory::

    M/weights.safetensors   the network's parameters (MindSpore checkpoint, safetensors format)
    M/probe.npy             the probe it was trained with, complex (modes, H, W)
    M/model.json            everything else needed to use it again (see :func:`save_model`)

Inference predicts each frame's object patch in one forward pass and stitches the patches
into an object, each weighted by the probe intensity that lit it (the ePIE/PtychoNN
average), so overlapping frames agree where the probe is bright.
"""
import json
import os
import time
import warnings

import mindspore as ms
import numpy as np

from . import __version__, plugins
from .device import select_device
from .distributed import allreduce_arrays
from .files import atomic_output
from .guesses import patch_estimates
from .networks import PatchPredictor, copy_weights, inputs_for, network_weights
from .scan import add_patches
from .settings import Network

MODEL_FORMAT = 'ptypy-npu-model/1'
WEIGHTS_FILE, PROBE_FILE, SIDECAR_FILE = 'weights.safetensors', 'probe.npy', 'model.json'
#: Relative tolerance when the geometry of a scan is compared with a model's.
GEOMETRY_TOLERANCE = 1e-3
#: A scan's mean photons per frame may lie this factor outside the model's training range without a warning.
DOSE_TOLERANCE = 2.0
#: Normalised overlap |<P, Q>| / (|P| |Q|) of a scan's probe with the model's below which a warning is given.
PROBE_OVERLAP = 0.9
#: Stitched pixels lit by less than this fraction of the peak illumination keep the fill value.
STITCH_THRESHOLD = 1e-3


def save_model(directory, export, force=False):
    """Save a trained network (a :class:`~ptypy_npu.solver.NetworkExport`, from the solver's
    ``export_network()``) as a model directory; returns the sidecar (dict).

    The sidecar records the architecture and its settings, the frame shape, the input
    normalisation, the geometry of the training scan, how it was trained and the ptypy-npu and
    MindSpore versions. Written to a temporary directory and renamed, so an existing model is
    replaced only when ``force`` is set, and never left half-written.
    """
    sidecar = {
        'format': MODEL_FORMAT,
        'network': export.settings,
        'frame_shape': list(export.frame_shape),
        'input': {'transform': 'log1p', 'scale': export.input_scale},
        'geometry': export.geometry,
        'training': export.training,
        'versions': {'ptypy_npu': __version__, 'mindspore': ms.__version__},
    }
    with atomic_output(directory, force, 'model') as temporary:
        os.makedirs(temporary)
        weights = [{'name': name, 'data': param} for name, param in network_weights(export.network).items()]
        ms.save_checkpoint(weights, os.path.join(temporary, WEIGHTS_FILE), format='safetensors')
        np.save(os.path.join(temporary, PROBE_FILE), export.probe, allow_pickle=False)
        with open(os.path.join(temporary, SIDECAR_FILE), 'w') as handle:
            json.dump(sidecar, handle, indent=1)
    return sidecar


class TrainedModel:
    """A network loaded from a model directory, with its sidecar and probe.

    >>> model = load_model('star_model')
    >>> model.check(data)                        # refuses a scan the model was not trained for
    >>> obj = model.reconstruct(data)            # complex (Ho, Wo)
    """

    def __init__(self, directory, network, sidecar, probe):
        self.directory = directory
        self.network = network
        self.sidecar = sidecar
        self.probe = probe
        self.predictor = PatchPredictor(network)

    def network_settings(self):
        """The settings' ``network`` subtree (without ``start``) that rebuilds this model's network: its
        sidecar's options over the defaults of those a sidecar leaves out when they hold their defaults
        (``input``, ``decoder``), so a model rebuilds as saved whatever the user's own settings say."""
        defaults = Network()
        return {'input': defaults.input, 'decoder': defaults.decoder, **self.sidecar['network']}

    @property
    def frame_shape(self):
        return tuple(self.sidecar['frame_shape'])

    def check(self, data):
        """Refuse (``ValueError``) a scan whose frames the network cannot take; warn (``UserWarning``),
        naming the quantity, where the scan lies outside what the model was trained on: geometry, dose
        (mean photons per frame beyond a factor 2 of the training range) or probe (normalised overlap
        with the training probe below 0.9). Returns the warnings' texts."""
        shape = tuple(np.shape(data.intensities)[1:])
        if shape != self.frame_shape:
            raise ValueError(f"model {self.directory} takes {self.frame_shape} frames, the scan has {shape}")
        notes = []
        for key, trained in self.sidecar['geometry'].items():
            given = data.geometry.get(key)
            if given is not None and trained is not None and \
                    abs(given - trained) > GEOMETRY_TOLERANCE * abs(trained):
                notes.append(f"was trained with {key} = {trained:.6g} m, the scan has {given:.6g} m")
        photons = float(np.mean(np.sum(data.intensities, axis=(1, 2))))
        low, high = self.sidecar['training'].get('photons_per_frame', [photons, photons])
        if not low / DOSE_TOLERANCE <= photons <= high * DOSE_TOLERANCE:
            notes.append(f"was trained at {low:.3g}-{high:.3g} photons per frame, the scan has {photons:.3g}")
        if data.probe is not None:
            overlap = probe_overlap(data.probe, self.probe)
            if overlap < PROBE_OVERLAP:
                notes.append(f"was trained with another probe (normalised overlap {overlap:.2f} with the scan's)")
        for note in notes:
            warnings.warn(f"model {self.directory} {note}: its patches may be poor", UserWarning, stacklevel=2)
        return notes

    def predict(self, intensities, batch_size=64, probe=None, propagator=None):
        """Object patches, complex (N, H, W), of measured intensities (N, H, W) in photons; a holographic
        network's estimates take ``probe`` (M, H, W) (default the model's) and PtyPy's ``propagator`` factors
        (default the centred FFT)."""
        inputs = inputs_for(self.network, intensities, self.sidecar['input']['scale'],
                            self.probe if probe is None else probe, propagator)
        return self.predictor(inputs, batch_size)

    def reconstruct(self, data, batch_size=64, fill=None, communicator=None):
        """Stitched object (Ho, Wo) of a ScanData in one pass (:func:`one_pass`)."""
        self.check(data)
        return one_pass(self, data, batch_size, fill, communicator)


def load_model(directory, device='CPU'):
    """A :class:`TrainedModel` from :func:`save_model`'s directory, compiled for ``device``
    (graph mode); clear errors naming the directory or file."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory {directory} does not exist")
    select_device(device)
    paths = {name: os.path.join(directory, name) for name in (WEIGHTS_FILE, PROBE_FILE, SIDECAR_FILE)}
    for path in paths.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model {directory}: {path} is missing (a model holds "
                                    f"{WEIGHTS_FILE}, {PROBE_FILE} and {SIDECAR_FILE})")
    try:
        with open(paths[SIDECAR_FILE]) as handle:
            sidecar = json.load(handle)
    except ValueError as error:
        raise ValueError(f"model sidecar {paths[SIDECAR_FILE]} is not valid JSON: {error}") from error
    if sidecar.get('format') != MODEL_FORMAT:
        raise ValueError(f"{paths[SIDECAR_FILE]}: format {sidecar.get('format')!r}, expected {MODEL_FORMAT!r}")
    settings = dict(sidecar['network'])
    try:
        factory = plugins.network_factory(settings.pop('name'))
    except ValueError as error:
        raise ValueError(f"model {directory}: its network is not available here: {error}") from None
    network = factory(sidecar['frame_shape'][0], **settings)
    try:
        weights = ms.load_checkpoint(paths[WEIGHTS_FILE], format='safetensors')
    except Exception as error:
        raise ValueError(f"model weights {paths[WEIGHTS_FILE]} cannot be read: {error}") from error
    try:
        copy_weights(weights, network)
    except ValueError as error:
        raise ValueError(f"model weights {paths[WEIGHTS_FILE]} do not fit {sidecar['network']}: {error}") from error
    probe = np.load(paths[PROBE_FILE], allow_pickle=False)
    return TrainedModel(directory, network, sidecar, probe)


def probe_overlap(probe, reference):
    """The normalised overlap ``|<P, Q>| / (|P| |Q|)`` of two probes' first modes (1: the same up to a
    complex factor)."""
    a, b = np.ravel(np.asarray(probe).reshape((-1,) + np.shape(reference)[-2:])[0]), np.ravel(reference[0])
    return float(np.abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


class SingleFrameEstimates:
    """The one pass without a network, the ablation of every trained model: a stand-in for a
    :class:`TrainedModel` whose patches are the frames' single-shot estimates
    (:func:`~ptypy_npu.guesses.patch_estimates`, the holographic networks' input). Needs the scan's probe
    (M, H, W) complex, and no training."""

    def __init__(self, probe):
        self.probe = np.asarray(probe)
        self.frame_shape = tuple(self.probe.shape[-2:])

    def predict(self, intensities, batch_size=64, probe=None, propagator=None):
        """Patches (N, H, W) complex of frames (N, H, W) photons; ``batch_size`` is not used."""
        return patch_estimates(intensities, self.probe if probe is None else probe, propagator)

    def check(self, data):
        """Nothing to check against: no training range. Returns no warnings."""
        return []

    def reconstruct(self, data, batch_size=64, fill=None, communicator=None):
        """Stitched object (Ho, Wo) of a ScanData in one pass (:func:`one_pass`)."""
        return one_pass(self, data, batch_size, fill, communicator)


def one_pass(model, data, batch_size=64, fill=None, communicator=None):
    """The object (Ho, Wo) that ``model``'s patches of a ScanData's frames stitch into; unlit pixels keep
    ``fill`` (default data.obj).

    ``communicator`` (:mod:`.distributed`): each rank stitches its own frames and the
    weighted sums are added over the ranks, so every rank gets the object of all frames; the ranks'
    patches are then not phase-aligned to each other (each rank's mosaic would hold its own phase).
    """
    distributed = communicator is not None and communicator.size > 1
    stream = StreamingReconstruction(model, np.shape(data.obj), data.probe, batch_size,
                                     fill=data.obj if fill is None else fill, align_phases=not distributed,
                                     propagator=data.propagator)
    stream.feed(data.intensities, data.positions)
    if communicator is not None:
        stream.numerator, stream.denominator = allreduce_arrays(communicator, [stream.numerator,
                                                                               stream.denominator])
    return stream.object


class StreamingReconstruction:
    """Stitches a trained model's patches into an object as frames arrive.

    ``feed(frames, positions)`` takes a chunk (frames (B, H, W) photons, positions (B, 2)
    top-left object pixels), as a detector delivers it; :attr:`object` is readable at
    any time. Each patch is weighted by the probe intensity ``w = sum_modes |P|^2``:
    ``O = sum_j w N_j / sum_j w``. A single diffraction pattern cannot fix its patch's global phase,
    so with ``align_phases`` each patch is first turned by the phase that best matches it to what is
    already stitched where they overlap (the first patch sets the phase of all).
    """

    def __init__(self, model, object_shape, probe=None, batch_size=64, fill=1.0, report=None, align_phases=True,
                 propagator=None):
        self.model = model
        probe = model.probe if probe is None else np.asarray(probe)
        self.probe, self.propagator = probe, propagator  # for a holographic network's estimates
        self.weight = (np.abs(probe) ** 2).reshape((-1,) + model.frame_shape).sum(0).astype(np.float32)
        self.numerator = np.zeros(object_shape, np.complex64)  # single precision: half the memory traffic
        self.denominator = np.zeros(object_shape, np.float32)
        self.fill = np.broadcast_to(np.asarray(fill, complex), object_shape)
        self.batch_size = batch_size
        self.report = report
        self.align_phases = align_phases
        self.frames_done = 0
        self.seconds = 0.0

    def feed(self, frames, positions):
        """Predict and stitch one chunk; returns its frames per second."""
        start = time.perf_counter()
        patches = self.model.predict(frames, self.batch_size, self.probe, self.propagator)
        if self.align_phases:
            self._add_aligned(patches, positions)
        else:
            self.numerator += add_patches(self.weight * patches, positions, self.numerator.shape)
            self.denominator += add_patches(self.weight, np.asarray(positions), self.denominator.shape)
        elapsed = time.perf_counter() - start
        self.frames_done += len(frames)
        self.seconds += elapsed
        rate = len(frames) / elapsed
        if self.report:
            self.report(f"{self.frames_done} frames, {rate:.0f} frames/s (mean {self.frames_done / self.seconds:.0f})")
        return rate

    def _add_aligned(self, patches, positions):
        """Stitch patches one after another, each turned by the phase that matches it to what is stitched."""
        h, w = self.model.frame_shape
        floor = STITCH_THRESHOLD * self.weight.max()
        stitched = np.empty((h, w), np.complex64)
        for weighted, (row, col) in zip(self.weight * patches, np.asarray(positions, int)):
            window = np.s_[row:row + h, col:col + w]
            numerator, denominator = self.numerator[window], self.denominator[window]  # views
            stitched[:] = 0
            np.divide(numerator, denominator, out=stitched, where=denominator > floor)
            match = np.vdot(weighted, stitched)  # sum of w conj(patch) O where O is stitched
            numerator += weighted * (match / abs(match) if abs(match) > 0 else 1.0)
            denominator += self.weight

    def run(self, chunks):
        """Feed every (frames, positions) chunk of an iterable; returns the object."""
        for frames, positions in chunks:
            self.feed(frames, positions)
        return self.object

    @property
    def object(self):
        """The stitched object (Ho, Wo) so far; pixels no frame lit keep the fill value."""
        lit = self.denominator > STITCH_THRESHOLD * max(self.denominator.max(), 1e-30)
        stitched = self.fill.copy()
        stitched[lit] = self.numerator[lit] / self.denominator[lit]
        return stitched
