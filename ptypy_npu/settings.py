"""Every setting of a W1Net reconstruction, once: name, default, type, limits, one line of help.

The names are those of the PtyPy parameter tree (``p.engines.e01.object_update.learning_rate``),
and everything else is generated from here: the W1Net engine's ``Defaults:`` block, the command
line flags with their help, and the README's table (a test checks it). Nothing here needs
MindSpore or PtyPy.

>>> settings = make({'network.name': None, 'object_update.learning_rate': 1.2})
>>> settings.object_update.rate('object_update')
1.2
>>> settings.validate()                 # SettingError naming the key, e.g. 'batch_size must be ...'

A :class:`SettingError` carries the key; each front end spells it the way its user wrote it
(``p.engines.e01.batch_size`` in PtyPy, ``--batch-size`` on the command line).
"""
import dataclasses
import math
import typing

LOSSES = ('gaussian', 'poisson')
DEVICES = ('CPU', 'GPU', 'Ascend')
PRECISIONS = ('float32', 'float16', 'bfloat16')
#: What a network sees: the frames alone, or also each frame's single-shot patch estimate (guesses.patch_estimates).
NETWORK_INPUTS = ('diffraction', 'holographic')
#: W1Network's decoders: two full ones (log-amplitude, phase), or one light one for both (fast inference).
NETWORK_DECODERS = ('twin', 'light')

#: Learning rate of each built-in optimizer per parameter group, the best of sweeps on
#: MoonFlowerScan (``benchmarks/optimizers.py``); a group whose ``learning_rate`` is None
#: takes its optimizer's. Object and probe rates act on illumination-normalised gradients
#: (except AdaHessian's); Lion's sign steps want rates 3-10x smaller than Adam's.
DEFAULT_LEARNING_RATES = {
    'network_update': {'adam': 2e-3, 'adamw': 2e-3, 'lion': 2e-4, 'adahessian': 0.5},
    'object_update': {'sgd': 1.0, 'adam': 0.03, 'adamw': 0.02, 'lion': 0.01, 'adahessian': 1.0},
    'probe_update': {'sgd': 1.0, 'adam': 3.0, 'adamw': 2.0, 'lion': 1.0, 'adahessian': 1.0},
}

#: Options of a built-in optimizer on a group that differ from the optimizer's own defaults,
#: the measured best on MoonFlowerScan (benchmarks/optimizers.py); a group's own options override them.
#: Lion on the object: a batch lights few pixels, so Lion leaves the others (zero gradient) alone,
#: and a shorter moment memory suits pixels whose moment is updated only when lit. AdaHessian on object
#: and probe: the Gauss-Newton curvature in closed form (half the loss curvature times the batch's
#: illumination, one per complex pixel; exact for one probe mode: a Hutchinson estimate, 'gauss_newton',
#: only adds its noise and its refreshes' cost), lazy per-pixel moments with short memories (betas 0.5, 0.9:
#: a pixel's curvature follows the batch that lights it), 0.1 of the largest curvature added, Hessian power
#: 1/2, and LSQML's step lengths along its directions (ptypy_npu.optim.AdaHessian; the step lengths make the
#: rate a multiple of the optimal step, as for sgd). 'spatial_window' averages the 'gauss_newton' estimate.
_IMAGE_ADAHESSIAN = {'lazy': True, 'curvature': 'illumination', 'regularisation': 0.1, 'spatial_window': 5,
                     'betas': (0.5, 0.9), 'hessian_power': 0.5, 'step_lengths': True}
#: Counts per detector pixel times frames per batch of the dose-adapted batch (Settings.adapted_to_dose): 16
#: frames up to 1e6 photons per 64-px frame, 4 from 1e7 on. With the epoch momentum, 16 frames ended lower than
#: 4 (the batch of 400 before it) on the 1e6-photon 64-px scans of the robustness family: sparse, plain, dense.
BATCH_COUNTS = 4000.0
#: At most this many detector pixels per dose-adapted batch: 16 frames of 64 px, 8 of 128 px, 4 (the floor) of
#: 256 px. On eight 128-px scans (disc, lens and MoonFlowerScan probes, 1e4-1e7 photons, sparse to dense, the
#: measured star; 50 epochs, network off) batch 8 ended at most 1.09x the best batch measured; 16 up to 1.28x
#: (MoonFlowerScan at 1e5 and 1e6 photons, the disc at 1e6), 4 up to 1.13x (the lens at 1e7, the star).
#: On 256-px MoonFlowerScan at 1e6 photons 4 frames ended at 0.167, 16 at 0.295 (the disc: 0.131 and 0.126).
BATCH_PIXELS = 2 ** 17

#: The object's momentum over epochs with sgd and AdaHessian's image variant (ObjectUpdate.momentum),
#: measured on the robustness family (benchmarks/robustness.py, README) with the dose-adapted batches, and
#: with AdaHessian on the optimizer benchmark's six scans (benchmarks/optimizers.py: lower on all six).
#: Adam and Lion keep long moments of their own.
DEFAULT_EPOCH_MOMENTUM = 0.8

DEFAULT_OPTIONS = {'object_update': {'lion': {'lazy': True, 'betas': (0.5, 0.9)}, 'adahessian': _IMAGE_ADAHESSIAN},
                   'probe_update': {'adahessian': _IMAGE_ADAHESSIAN}}


class SettingError(ValueError):
    """A setting the reconstruction cannot take: ``key`` (tree path) and what is wrong with it."""

    def __init__(self, key, problem):
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem

    def spelled(self, name):
        """The message with the key as ``name(key)`` spells it (a flag, a full tree path)."""
        return f"{name(self.key)} {self.problem}"


def setting(default, type_, help_, lowlim=None, uplim=None, choices=None, flag=True):
    """A dataclass field described for PtyPy's tree, the CLI and the README.

    ``type_``: PtyPy's type string ('int', 'float, None', ...). ``flag``: True for the flag
    derived from the key (``--batch-size``), a string for another, False for none (engine only).
    """
    metadata = {'type': type_, 'help': help_, 'lowlim': lowlim, 'uplim': uplim, 'choices': choices, 'flag': flag}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Network:
    """The network that maps diffraction amplitudes to object patches."""
    name: typing.Optional[str] = setting(
        'W1Network', 'str, None', "Network from the loaded plugins (`ptypy-npu plugins`); None refines "
        "object and probe only", flag='--network')
    depth: int = setting(3, 'int', 'Stride-2 encoder stages', lowlim=1, flag='--depth')
    width: int = setting(8, 'int', 'Channels of the first encoder stage', lowlim=1, flag='--width')
    binning: int = setting(2, 'int', 'Detector pixels binned per side before the encoder (1, 2 or 4)',
                           lowlim=1, uplim=4, flag='--binning')
    input: str = setting('diffraction', 'str', "What the network sees: 'diffraction' (the frames, as PtychoNN) or "
                         "'holographic' (also each frame's back-propagated patch estimate, which transfers to "
                         "unseen objects; W1Network only)", choices=NETWORK_INPUTS, flag='--network-input')
    decoder: str = setting('twin', 'str', "W1Network's decoders: 'twin' (log-amplitude and phase each its own, "
                           "with full-resolution layers) or 'light' (one for both, full resolution only in its last "
                           "transposed convolution: one pass 2.2x as fast on a CPU)", choices=NETWORK_DECODERS,
                           flag='--decoder')
    start: int = setting(30, 'int', 'Epochs of physics-only refinement (object and probe) before the network joins',
                         lowlim=0, flag='--network-start')

    def options(self):
        """The keyword arguments of the network's factory (everything but name and start; ``input`` and
        ``decoder`` only when not their defaults, so networks without such options need not take them)."""
        chosen = {} if self.input == 'diffraction' else {'input': self.input}
        if self.decoder != 'twin':
            chosen['decoder'] = self.decoder
        return {'depth': self.depth, 'width': self.width, 'binning': self.binning, **chosen}


_RATE_HELP = "Learning rate; None takes the optimizer's measured default (README, settings.DEFAULT_LEARNING_RATES)"
_OPTIMIZER_HELP = 'Optimizer from the loaded plugins: adam, adamw, sgd, lion, adahessian or a plugin\'s'
_DECAY_HELP = 'Decoupled weight decay (passed to the optimizer only when > 0)'
_IMAGE_OPTIMIZER_HELP = (_OPTIMIZER_HELP + "; sgd is the fastest measured in wall time; adahessian needs about as "
                         "many epochs (9 to error 0.15 on MoonFlowerScan; sgd 8, adam 15, in about adam's time) and "
                         "ends at or below adam on five of six simulated scans, above it on a 128-px scan at 1e7 "
                         "photons (README, AdaHessian)")
_PROBE_OPTIMIZER_HELP = (_OPTIMIZER_HELP + "; adahessian (its image variant: the Gauss-Newton curvature in closed "
                         "form, the batch's patch power, per probe pixel, and LSQML's step lengths) ended lower than "
                         "sgd on 11 of the robustness family's 15 cases, the 128- and 256-px ones and the measured "
                         "star among them, and at most 1 % higher on the others (README, Robustness)")


@dataclasses.dataclass
class Update:
    """An optimizer of one parameter group. ``options`` (Python only, not in the tree) are passed to
    the optimizer over :data:`DEFAULT_OPTIONS`."""
    optimizer: str = setting('adam', 'str', _OPTIMIZER_HELP)
    learning_rate: typing.Optional[float] = setting(None, 'float, None', _RATE_HELP, lowlim=0.0)
    weight_decay: float = setting(0.0, 'float', _DECAY_HELP, lowlim=0.0)
    options: dict = dataclasses.field(default_factory=dict, metadata={'flag': False, 'tree': False})

    def rate(self, group):
        """The learning rate on ``group`` ('object_update', ...): the given one, or the optimizer's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        try:
            return DEFAULT_LEARNING_RATES[group][self.optimizer]
        except KeyError:
            raise SettingError(f"{group}.learning_rate", f"must be given: optimizer {self.optimizer!r} has no "
                               f"default rate for this group (defaults: {DEFAULT_LEARNING_RATES[group]})") from None

    def optimizer_options(self, group):
        """The keyword options the optimizer is built with on ``group``: defaults, weight decay, ours."""
        decay = {'weight_decay': self.weight_decay} if self.weight_decay > 0 else {}
        return {**DEFAULT_OPTIONS.get(group, {}).get(self.optimizer, {}), **decay, **self.options}


@dataclasses.dataclass
class NetworkUpdate(Update):
    """The optimizer of the network weights."""


@dataclasses.dataclass
class ObjectUpdate(Update):
    """The optimizer of the object; its gradient is divided by the batch illumination
    (except for second-order optimizers), so with sgd a rate of 1 is a full projection-like step."""
    optimizer: str = setting('sgd', 'str', _IMAGE_OPTIMIZER_HELP)
    momentum: typing.Optional[float] = setting(
        None, 'float, None', "Momentum of the object over epochs (step.EpochMomentum, as mPIE's), 0 to 0.99; 0 "
        "turns it off; None: 0.8 with sgd and adahessian (measured on the robustness family and the optimizer "
        "benchmark), 0 with an optimizer that keeps long moments of its own (adam, adamw, lion)", lowlim=0.0,
        uplim=0.99, flag='--momentum')

    @property
    def epoch_momentum(self):
        """The momentum the solver applies: the given one, or the optimizer's default."""
        if self.momentum is not None:
            return self.momentum
        return DEFAULT_EPOCH_MOMENTUM if self.optimizer in ('sgd', 'adahessian') else 0.0


@dataclasses.dataclass
class ProbeUpdate(Update):
    """The optimizer of the probe; its gradient is divided by the batch object power (sgd) or preconditioned
    by it (adahessian's closed-form curvature)."""
    optimizer: str = setting('adahessian', 'str', _PROBE_OPTIMIZER_HELP)
    start: typing.Optional[int] = setting(0, 'int, None', 'Epochs before the probe is refined; None keeps it fixed',
                                          lowlim=0, flag='--probe-start')
    centre_tolerance: typing.Optional[float] = setting(
        1.0, 'float, None', "Distance (px) of the probe's centre of mass from the frame centre above which probe "
        "and object are moved back together (PtyPy's probe_center_tol); None lets the probe wander", lowlim=0.0,
        flag='--probe-centre-tolerance')


@dataclasses.dataclass
class Settings:
    """The settings of a W1Net reconstruction (solver, engine and CLI alike)."""
    numiter: int = setting(50, 'int', 'Epochs (passes over all frames)', lowlim=1, flag='--epochs')
    batch_size: typing.Optional[int] = setting(
        None, 'int, None', 'Frames per step, over all processes (a multiple of their number; each takes '
        'batch_size / processes); None: from the dose and the frame size (Settings.adapted_to_dose)', lowlim=1)
    loss: str = setting('gaussian', 'str', "Data term: 'gaussian' (amplitude misfit, as DM) or 'poisson' "
                                           "(negative log-likelihood, as ML)", choices=LOSSES)
    consistency: float = setting(4.0, 'float', 'Weight of the prior tying object and network patches, in object '
                                               'units (fades against the data at high dose)', lowlim=0.0)
    network_consistency: float = setting(1.0, 'float', 'Weight of the pull of the network toward the object\'s '
                                                       'patches, in photons (the object teaches the network)',
                                         lowlim=0.0)
    illumination_regularisation: typing.Optional[float] = setting(
        None, 'float, None', 'Delta in the object/probe step normaliser 1 / (w + delta max w); None: from the '
        'dose (Settings.adapted_to_dose), doubled (up to 3) whenever the Fourier error sets no new low for 3 epochs; '
        'at 3, such a stall halves the object and probe learning rates instead (down to 1/8)',
        lowlim=0.0)
    optimal_steps: bool = setting(True, 'bool', 'Scale the sgd and adahessian object and probe steps by the '
                                                'lengths that minimise the batch\'s data term along them (LSQML); '
                                                'the learning rate then scales that optimal step',
                                  flag='--optimal-steps')
    network: Network = dataclasses.field(default_factory=Network, metadata={'help': Network.__doc__})
    network_update: NetworkUpdate = dataclasses.field(default_factory=NetworkUpdate,
                                                      metadata={'help': NetworkUpdate.__doc__})
    object_update: ObjectUpdate = dataclasses.field(default_factory=ObjectUpdate,
                                                    metadata={'help': ObjectUpdate.__doc__})
    probe_update: ProbeUpdate = dataclasses.field(default_factory=ProbeUpdate, metadata={'help': ProbeUpdate.__doc__})
    hessian_interval: int = setting(8, 'int', 'Steps between Hessian-diagonal refreshes of second-order '
                                              'optimizers (adahessian on the network, or on object and probe with '
                                              "curvature 'gauss_newton'; the paper refreshes every step, 1)",
                                    lowlim=1)
    max_divergences: int = setting(3, 'int', 'Rollbacks of a diverging epoch (NaN/Inf; learning rates halved '
                                             'each time) before the run stops', lowlim=0)
    seed: int = setting(0, 'int', 'Seed of MindSpore and of the frame shuffling', lowlim=0)
    device: str = setting('CPU', 'str', 'MindSpore device target', choices=DEVICES)
    precision: str = setting('float32', 'str', "Arithmetic of the network: 'float32', or mixed precision "
                                               "'float16' (dynamic loss scaling) or 'bfloat16' (GPU, Ascend); "
                                               "weights, object, probe and physics stay float32", choices=PRECISIONS)

    @property
    def uses_network(self):
        return self.network.name is not None

    def adapted_to_dose(self, photons_per_pixel, n_frames, frame_pixels, processes=1):
        """These settings with the choices left to the data (None) made from the mean counts per detector
        pixel and the frame's size, the best on families of simulated scans (64 px, 1e4-1e7 photons per
        frame, two probe shapes; the batch measured again with the object's epoch momentum on the robustness
        family and on 128- and 256-px scans): noisy data want steps averaged over more frames and a more
        strongly regularised normaliser, clean data and large frames many small batches:

        * ``illumination_regularisation = sqrt(5 / photons_per_pixel)``, within [0.1, 3], the start: the
          solver doubles it whenever the Fourier error stalls (``JointSolver._adapt_regularisation``);
        * ``batch_size = 4000 / photons_per_pixel`` rounded to a power of two, within [4, 16], at most
          ``BATCH_PIXELS / frame_pixels`` (a power of two: 16 frames of 64 x 64 px, 8 of 128 x 128), a
          multiple of ``processes`` and at most the ``n_frames`` of the scan.
        """
        counts = max(photons_per_pixel, 1e-12)
        delta = self.illumination_regularisation
        if delta is None:
            delta = float(min(max(math.sqrt(5.0 / counts), 0.1), 3.0))
        batch = self.batch_size
        if batch is None:
            largest = min(max(2 ** math.floor(math.log2(BATCH_PIXELS / frame_pixels)), 4), 16)
            batch = int(min(max(2 ** round(math.log2(BATCH_COUNTS / counts)), 4), largest))
            batch = max(processes, min(batch, n_frames) // processes * processes)
        return make({'illumination_regularisation': delta, 'batch_size': batch}, self)

    def validate(self, n_frames=None, processes=1):
        """Raise :class:`SettingError` naming the first setting out of its type, limits or choices,
        or inconsistent with the others, the scan's ``n_frames`` or the number of ``processes``."""
        for key, value, meta in walk(self):
            check_value(key, value, meta)
        if self.network.binning not in (1, 2, 4):
            raise SettingError('network.binning', f"must be 1, 2 or 4, got {self.network.binning!r}")
        for group in ('network_update', 'object_update', 'probe_update'):
            update = getattr(self, group)
            if not isinstance(update.options, dict):
                raise SettingError(f"{group}.options", f"must be a dict of optimizer options, got {update.options!r}")
            if group != 'network_update' or self.uses_network:
                update.rate(group)
        if self.precision != 'float32' and not self.uses_network:
            raise SettingError('precision', f"{self.precision!r} sets the network's arithmetic, but network.name is "
                                            "None; use 'float32'")
        if self.precision == 'bfloat16' and self.device == 'CPU':
            raise SettingError('precision', "'bfloat16' needs device 'Ascend' or 'GPU': MindSpore's CPU kernels have "
                                            "no bfloat16 convolution (use 'float16' or 'float32' on the CPU)")
        if self.precision == 'float16' and self.network_update.optimizer == 'adahessian':
            raise SettingError('precision', "'float16' with network_update.optimizer 'adahessian': the "
                                            "Hessian-vector products are not loss-scaled; use 'float32' or 'bfloat16'")
        for group in ('object_update', 'probe_update'):
            options = getattr(self, group).optimizer_options(group)
            if (getattr(self, group).optimizer == 'adahessian' and options.get('lazy') and options.get('step_lengths')
                    and not self.optimal_steps):
                raise SettingError('optimal_steps', f"False leaves {group}.optimizer 'adahessian' without the step "
                                                    f"lengths its rate scales; keep it True, set {group}.optimizer "
                                                    f"'sgd', or give {group}.options step_lengths=False and a "
                                                    "learning rate")
        if self.batch_size is not None and n_frames is not None and self.batch_size > n_frames:
            raise SettingError('batch_size', f"{self.batch_size} exceeds the {n_frames} frames of the scan")
        if self.batch_size is not None and self.batch_size % processes:
            raise SettingError('batch_size', f"{self.batch_size} must be a multiple of the {processes} processes: "
                                             "every step takes batch_size / processes frames from each")
        return self


@dataclasses.dataclass
class Model:
    """Trained models on disk (directories written by model.save or `ptypy-npu train`)."""
    load: typing.Optional[str] = setting(None, 'str, None', 'Model directory to start from; modes infer and '
                                                            'finetune need one', flag=False)
    save: typing.Optional[str] = setting(None, 'str, None', 'Model directory to write when the engine finishes; '
                                                            'an existing one is never replaced', flag=False)


@dataclasses.dataclass
class Checkpoint:
    """The full training state on disk (network, object, probe, optimizer states, epoch, RNG)."""
    path: typing.Optional[str] = setting(None, 'str, None', 'File (.ckpt) written atomically every interval '
                                                            'epochs; an existing one is never replaced unless '
                                                            'resumed from', flag=False)
    interval: int = setting(10, 'int', 'Epochs between checkpoints', lowlim=1, flag=False)
    resume: bool = setting(False, 'bool', 'Start from path when it exists (same scan and settings); the run then '
                                          'ends as an uninterrupted one would', flag=False)


@dataclasses.dataclass
class EngineSettings(Settings):
    """:class:`Settings` and those of the PtyPy engine alone (its tree is ``p.engines.eXX``)."""
    name: str = setting('W1Net', 'str', 'Engine name', flag=False)
    probe_support: typing.Optional[float] = setting(None, 'float, None', 'Not applied by this engine (kept None)',
                                                    flag=False)
    distributed: str = setting('mpi', 'str', "How processes share the frames: 'mpi' (mpiexec; PtyPy's ranks, "
                               "gradients summed on the host) or 'mindspore' (msrun; gradients summed in the "
                               "compiled step by HCCL/NCCL/mccl)", choices=('mpi', 'mindspore'), flag=False)
    mode: str = setting('train', 'str', "'train' (from scratch or model.load), 'infer' (stitch a loaded model's "
                        "patches into the object; one iteration suffices) or 'finetune' (load, then train with the "
                        "network from the first epoch)", choices=('train', 'infer', 'finetune'), flag=False)
    model: Model = dataclasses.field(default_factory=Model, metadata={'help': Model.__doc__})
    checkpoint: Checkpoint = dataclasses.field(default_factory=Checkpoint, metadata={'help': Checkpoint.__doc__})


_PYTHON_TYPES = {'int': int, 'float': (int, float), 'str': str, 'bool': bool}


def check_value(key, value, meta):
    """Raise :class:`SettingError` unless ``value`` fits the type, limits and choices in ``meta``."""
    kinds = [kind.strip() for kind in meta['type'].split(',')]
    if value is None:
        if 'None' not in kinds:
            raise SettingError(key, f"must be {describe(meta)}, got None")
        return
    expected = tuple(t for kind in kinds if kind != 'None'
                     for t in (_PYTHON_TYPES[kind] if isinstance(_PYTHON_TYPES[kind], tuple) else (_PYTHON_TYPES[kind],)))
    if isinstance(value, bool) and bool not in expected or not isinstance(value, expected) \
            or isinstance(value, float) and not math.isfinite(value):
        raise SettingError(key, f"must be {describe(meta)}, got {value!r}")
    if meta['lowlim'] is not None and value < meta['lowlim'] or meta['uplim'] is not None and value > meta['uplim']:
        raise SettingError(key, f"must be {describe(meta)}, got {value!r}")
    if meta['choices'] and value not in meta['choices']:
        raise SettingError(key, f"must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")


def describe(meta):
    """'an integer >= 1', 'a finite number >= 0 or None', 'one of a, b', ... for a field's ``meta``."""
    if meta['choices']:
        return f"one of {', '.join(map(str, meta['choices']))}"
    kinds = [kind.strip() for kind in meta['type'].split(',')]
    words = {'int': 'an integer', 'float': 'a finite number', 'str': 'a string', 'bool': 'True or False'}
    text = ' or '.join(words[kind] for kind in kinds if kind != 'None')
    limits = [f">= {meta['lowlim']:g}" if meta['lowlim'] is not None else '',
              f"<= {meta['uplim']:g}" if meta['uplim'] is not None else '']
    text += ' ' + ' and '.join(limit for limit in limits if limit) if any(limits) else ''
    return text + (' or None' if 'None' in kinds else '')


def walk(settings, prefix=''):
    """``(key, value, metadata)`` of every described leaf of ``settings``, in declaration order."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            yield from walk(value, f"{prefix}{field.name}.")
        elif 'type' in field.metadata:
            yield f"{prefix}{field.name}", value, field.metadata


def groups(settings, prefix=''):
    """``(key, help)`` of every subtree (``network``, ``object_update``, ...) of ``settings``."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            yield f"{prefix}{field.name}", field.metadata.get('help', '')
            yield from groups(value, f"{prefix}{field.name}.")


def make(overrides=None, base=None):
    """:class:`Settings` (or ``base`` with changes) from ``{tree key: value}``, keys dotted
    (``'network.name'``) or nested dicts (a PtyPy ``Param``). Unknown keys raise :class:`SettingError`."""
    settings = dataclasses.replace(base or Settings())
    for key, value in flatten(overrides or {}).items():
        *path, leaf = key.split('.')
        owner = settings
        for part in path:
            child = getattr(owner, part, None)
            if not dataclasses.is_dataclass(child):
                raise SettingError(key, "is not a setting")
            child = dataclasses.replace(child)
            setattr(owner, part, child)
            owner = child
        if leaf not in {f.name for f in dataclasses.fields(owner)} or dataclasses.is_dataclass(getattr(owner, leaf)):
            raise SettingError(key, "is not a setting")
        setattr(owner, leaf, value)
    return settings


def from_tree(tree, settings_class=None):
    """The settings of ``settings_class`` (default :class:`Settings`) that a nested mapping (a PtyPy
    ``Param``) holds; keys it lacks keep their defaults, keys the class lacks are left alone."""
    base = (settings_class or Settings)()
    given = flatten(tree)
    return make({key: given[key] for key, _, _ in walk(base) if key in given}, base)


def flatten(tree, prefix=''):
    """``{dotted key: value}`` of nested mappings (leaves that are not mappings, and ``options`` dicts)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key.rsplit('.', 1)[-1] != 'options':  # 'options' or 'group.options'
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def cli_flag(key, meta):
    """The command-line flag of a setting, or None (engine only)."""
    if meta.get('flag') is False:
        return None
    if isinstance(meta.get('flag'), str):
        return meta['flag']
    short = key.replace('_update.', '.').replace('learning_rate', 'rate')  # object_update.learning_rate: --object-rate
    return '--' + short.replace('.', '-').replace('_', '-')


def flags():
    """``{flag: key}`` of every setting on the command line."""
    return {cli_flag(key, meta): key for key, _, meta in walk(Settings()) if cli_flag(key, meta)}


def ptypy_defaults():
    """The ``Defaults:`` block of the W1Net engine's docstring: every setting of :class:`EngineSettings`."""
    settings = EngineSettings()
    subtrees = dict(groups(settings))
    sections, written = [], set()
    for key, default, meta in walk(settings):
        group = key.rsplit('.', 1)[0] if '.' in key else None
        if group and group not in written:
            written.add(group)
            sections.append(f"[{group}]\ndefault = Param\ntype = Param\nhelp = {_one_line(subtrees[group])}\n")
        lines = [f"[{key}]", f"default = {default}", f"type = {meta['type']}", f"help = {_one_line(meta['help'])}"]
        lines += [f"{limit} = {meta[limit]}" for limit in ('lowlim', 'uplim') if meta[limit] is not None]
        lines += [f"choices = {list(meta['choices'])}"] if meta['choices'] else []
        sections.append('\n'.join(lines) + '\n')
    return '\n'.join(sections)


def _one_line(text):
    return ' '.join(str(text).split())


def markdown_table():
    """The README's table of settings: tree key, CLI flag, default, meaning."""
    rows = ['| setting (`p.engines.eXX.`) | CLI flag | default | meaning |', '|---|---|---|---|']
    for key, default, meta in walk(EngineSettings()):
        flag = cli_flag(key, meta)
        rows.append(f"| `{key}` | {f'`{flag}`' if flag else '-'} | `{default}` | {_one_line(meta['help'])} |")
    return '\n'.join(rows)
