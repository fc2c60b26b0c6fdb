"""Built-in plugin: the W1Net network, the optimizers and the PtyPy engine.

Registered by the plugin host through the same hooks a third-party plugin uses.
"""
import importlib.util

from .hookspecs import hookimpl

MINDSPORE_MISSING = ("ptypy-npu's W1Net needs MindSpore 2.10, which is not installed: "
                     "pip install 'mindspore>=2.10,<2.11' 'numpy<2'")


def require_mindspore():
    """Raise ``ImportError`` with the install command when MindSpore is absent."""
    if importlib.util.find_spec('mindspore') is None:
        raise ImportError(MINDSPORE_MISSING)


@hookimpl
def ptypy_npu_networks():
    require_mindspore()
    from .networks import W1Net
    return {'W1Net': W1Net}


@hookimpl
def ptypy_npu_optimizers():
    require_mindspore()
    from .optim import BUILTIN_OPTIMIZERS
    return dict(BUILTIN_OPTIMIZERS)


@hookimpl
def ptypy_npu_engines():
    if importlib.util.find_spec('ptypy') is None:
        return []
    require_mindspore()
    from .engine import W1Net
    return [W1Net]
