"""Plugin host: a pluggy PluginManager for built-in and installed plugins.

Built-ins (:mod:`ptypy_npu.builtin`) register through the same hooks as third-party
distributions, which are found through entry points in group ``ptypy_npu``. A plugin
that fails to import is reported by name and skipped.
"""
import importlib.metadata
import logging
import warnings

import pluggy

from . import hookspecs

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
            FAILED_PLUGINS[entry_point.name] = (distribution, f"{type(error).__name__}: {error}")
            warnings.warn(f"ptypy-npu plugin {entry_point.name!r} from distribution {distribution!r} "
                          f"failed to load and is skipped: {type(error).__name__}: {error}")
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


def _lookup(registry, kind, name, parameter):
    if name not in registry:
        raise ValueError(f"{parameter}: unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


def network_factory(name, parameter='network.name'):
    """The factory of network ``name``; ``ValueError`` naming ``parameter`` and the choices."""
    return _lookup(networks(), 'network', name, parameter)


def optimizer_factory(name, parameter='optimizer'):
    """The factory of optimizer ``name``; ``ValueError`` naming ``parameter`` and the choices."""
    return _lookup(optimizers(), 'optimizer', name, parameter)


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


def register_with_ptypy():
    """Register every contributed engine with PtyPy so parameter trees can name it.

    Needs PtyPy importable. Engines already known to PtyPy are left alone. Also registers
    the data loader :class:`~ptypy_npu.ptyscan.NpzScan`.
    """
    import ptypy.engines

    from . import ptyscan  # noqa: F401  (registers NpzScan with PtyPy)
    for impl in get_plugin_manager().hook.ptypy_npu_engines.get_hookimpls():
        try:
            engine_classes = impl.function()
        except Exception as error:  # one broken plugin must not hide the others or PtyPy's engines
            FAILED_PLUGINS[impl.plugin_name] = (_DISTRIBUTIONS.get(impl.plugin_name, '?'),
                                                f"{type(error).__name__}: {error}")
            warnings.warn(f"ptypy-npu plugin {impl.plugin_name!r} failed to provide its engines and is "
                          f"skipped: {type(error).__name__}: {error}")
            continue
        for engine_class in engine_classes:
            if engine_class.__name__ not in ptypy.engines.ENGINES:
                ptypy.engines.register()(engine_class)
