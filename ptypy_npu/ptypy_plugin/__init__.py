"""The part of ptypy-npu that plugs into PtyPy (needs PtyPy): importing it registers

* the ``W1Net`` engine (:mod:`.engine`), so ``p.engines.e01.name = 'W1Net'`` validates,
* the data loaders ``NpzScan`` (:mod:`.npz_loader`) and ``SimulatedScan`` (:mod:`.simulated_scan`),
* the engines that installed plugins contribute through the ``ptypy_npu_engines`` hook

with PtyPy, before ``Ptycho(p)`` checks the tree::

    import ptypy_npu.ptypy_plugin   # noqa: F401

It also holds the MoonFlowerScan helpers (:mod:`.moonflower`) and the comparison runner
(:mod:`.runner`). A plugin whose engines fail to load is reported by name and skipped; PtyPy's
own engines are never affected.
"""
import ptypy.engines

from .. import plugins
from .engine import W1Net
from .npz_loader import NpzScan
from .simulated_scan import SimulatedScan


def register_engines():
    """Register W1Net and every plugin-contributed engine with PtyPy; names PtyPy knows are left alone."""
    contributed = [W1Net]
    for plugin_name, contribute in plugins.engine_classes():
        try:
            contributed += list(contribute())
        except Exception as error:  # one broken plugin must not hide the others or PtyPy's engines
            plugins.record_failure(plugin_name, error)
    for engine_class in contributed:
        if engine_class.__name__ not in ptypy.engines.ENGINES:
            ptypy.engines.register()(engine_class)


register_engines()

__all__ = ['W1Net', 'NpzScan', 'SimulatedScan', 'register_engines']
