"""Built-in plugin: the W1Net network, MindSpore's optimizers and the PtyPy engine.

Registered by the plugin host through the same hooks a third-party plugin uses.
"""
import importlib.util

from .hookspecs import hookimpl


@hookimpl
def ptypy_npu_networks():
    from .networks import W1Net
    return {'W1Net': W1Net}


@hookimpl
def ptypy_npu_optimizers():
    from .optim import BUILTIN_OPTIMIZERS
    return dict(BUILTIN_OPTIMIZERS)


@hookimpl
def ptypy_npu_engines():
    if importlib.util.find_spec('ptypy') is None:
        return []
    from .engine import W1Net
    return [W1Net]
