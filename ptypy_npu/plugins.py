"""Plugin host: a pluggy PluginManager for built-in and installed plugins, and the names they resolve.

Built-ins (:mod:`ptypy_npu.builtin`) register through the same hooks as third-party
distributions, which are found through entry points in group ``ptypy_npu``. A plugin that fails
to import is reported by name and skipped. The host resolves the networks and optimizers the
settings name into the :class:`~ptypy_npu.solver.Factories` the solver is built with
(:func:`build_solver`); PtyPy engines that plugins contribute are registered with PtyPy by
:mod:`ptypy_npu.ptypy_plugin`, not here.
"""
import dataclasses
import importlib.metadata
import logging
import warnings

import numpy as np
import pluggy

from . import hookspecs
from .guesses import defocus_candidates, scan_step
from .settings import SettingError, make
from .solver import Factories, JointSolver

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT

_manager = None
#: ``{plugin name: (distribution, error text)}`` of plugins that failed to load.
FAILED_PLUGINS = {}
#: ``{plugin name: distribution}`` of loaded plugins.
_DISTRIBUTIONS = {'builtin': 'ptypy-npu'}


def get_plugin_manager():
    """The process-wide PluginManager, created and loaded on first use."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        from . import builtin
        manager.register(builtin, name='builtin')
        _load_entry_points(manager)
        _manager = manager
    return _manager


def _load_entry_points(manager):
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry_point.dist.name if entry_point.dist else '?'
        if manager.get_plugin(entry_point.name) is not None:
            continue
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception as error:  # a broken plugin must never break the host
            _DISTRIBUTIONS[entry_point.name] = distribution
            record_failure(entry_point.name, error)
            continue
        _DISTRIBUTIONS[entry_point.name] = distribution



def _collect(hook_results, kind):
    merged = {}
    for contribution in hook_results:
        for name, factory in contribution.items():
            if name in merged:
                raise RuntimeError(f"two plugins contribute a {kind} named {name!r}")
            merged[name] = factory
    return merged


def networks():
    """``{name: factory}`` of every network that loaded plugins contribute."""
    return _collect(get_plugin_manager().hook.ptypy_npu_networks(), 'network')


def optimizers():
    """``{name: factory}`` of every optimizer that loaded plugins contribute."""
    return _collect(get_plugin_manager().hook.ptypy_npu_optimizers(), 'optimizer')


def _lookup(registry, kind, name, key):
    if name not in registry:
        raise SettingError(key, f"names an unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


def network_factory(name, key='network.name'):
    """The factory of network ``name``; :class:`SettingError` naming ``key`` and the choices."""
    return _lookup(networks(), 'network', name, key)


def optimizer_factory(name, key='optimizer'):
    """The factory of optimizer ``name``; :class:`SettingError` naming ``key`` and the choices."""
    return _lookup(optimizers(), 'optimizer', name, key)


def factories(settings):
    """The :class:`~ptypy_npu.solver.Factories` that ``settings`` (:class:`~ptypy_npu.settings.Settings`) name."""
    groups = ('object_update', 'probe_update') + (('network_update',) if settings.uses_network else ())
    network = network_factory(settings.network.name) if settings.uses_network else None
    return Factories(network, {group: optimizer_factory(getattr(settings, group).optimizer, f"{group}.optimizer")
                               for group in groups})


def build_solver(data, settings, **options):
    """A :class:`~ptypy_npu.solver.JointSolver` of ``data`` with the networks and optimizers that
    ``settings`` name; ``options`` as the solver takes them (communicator, input_scale, ...). A scan
    whose probe is None gets one guessed from its data (:func:`guess_probe`)."""
    resolved = factories(settings)  # unknown names first: a rate is only missing for a known optimizer
    if data.probe is None:
        settings.validate()
        data = dataclasses.replace(data, probe=guess_probe(data, settings, options.get('communicator')))
    return JointSolver(data, settings, resolved, **options)


#: Frames (those nearest the scan's centre) and epochs of the trial runs that choose among probe guesses.
PROBE_TRIAL_FRAMES, PROBE_TRIAL_EPOCHS = 100, 5


def guess_probe(data, settings, communicator=None):
    """A probe for ``data`` (whose probe is unknown) from the data alone: of the two defocus guesses of
    :func:`~ptypy_npu.guesses.defocus_candidates`, the one whose physics-only trial run (the frames
    nearest the scan centre, ``PROBE_TRIAL_EPOCHS`` epochs, these settings) ends with the lower
    Fourier error, summed over all processes so that every rank chooses alike."""
    candidates = defocus_candidates(data.intensities, data.positions, data.mask)
    positions = np.asarray(data.positions, float)
    nearest = np.argsort(np.hypot(*(positions - np.median(positions, axis=0)).T))[:PROBE_TRIAL_FRAMES]
    trial = make(overrides={'network.name': None, 'precision': 'float32', 'max_divergences': 0,
                            'batch_size': settings.batch_size and min(settings.batch_size, len(nearest))},
                 base=settings)
    errors = []
    for probe in candidates:
        solver = JointSolver(dataclasses.replace(data.frames(np.sort(nearest)), probe=probe), trial, factories(trial))
        try:
            errors.append(float(solver.run(PROBE_TRIAL_EPOCHS)[:, 0].mean()))
        except FloatingPointError:
            errors.append(np.inf)
    if communicator is not None and communicator.size > 1:
        errors = list(communicator.allreduce(np.array(errors, np.float32)))
    best = int(np.argmin(errors))
    logger.info(f"no probe given: guessed from the data (the mean pattern's amplitude, defocused to the scan step "
                f"of {scan_step(data.positions):.1f} px); of the two defocus signs, the one whose trial fits better "
                f"(Fourier error {errors[best]:.3g} against {errors[1 - best]:.3g})")
    return candidates[best]


def engine_classes():
    """``[(plugin name, callable returning engine classes)]`` of every plugin's ``ptypy_npu_engines`` hook."""
    return [(impl.plugin_name, impl.function) for impl in get_plugin_manager().hook.ptypy_npu_engines.get_hookimpls()]


def record_failure(plugin_name, error):
    """Report a plugin that failed while contributing (by name, with the error) and remember it."""
    FAILED_PLUGINS[plugin_name] = (_DISTRIBUTIONS.get(plugin_name, '?'), f"{type(error).__name__}: {error}")
    warnings.warn(f"ptypy-npu plugin {plugin_name!r} failed to contribute and is skipped: "
                  f"{type(error).__name__}: {error}")


def describe():
    """Rows ``(plugin, distribution, networks, optimizers, status)`` for ``ptypy-npu plugins``."""
    manager = get_plugin_manager()
    rows = []
    for name, plugin in manager.list_name_plugin():
        nets = getattr(plugin, 'ptypy_npu_networks', lambda: {})() or {}
        opts = getattr(plugin, 'ptypy_npu_optimizers', lambda: {})() or {}
        rows.append((name, _DISTRIBUTIONS.get(name, '?'), sorted(nets), sorted(opts), 'loaded'))
    for name, (distribution, error) in FAILED_PLUGINS.items():
        rows.append((name, distribution, [], [], f"failed: {error}"))
    return rows
