"""Built-in plugin: the W1Network and the optimizers, registered through the same hooks a
third-party plugin uses."""
from .hookspecs import hookimpl
from .networks import W1Network
from .optim import BUILTIN_OPTIMIZERS


@hookimpl
def ptypy_npu_networks():
    return {'W1Network': W1Network}


@hookimpl
def ptypy_npu_optimizers():
    return dict(BUILTIN_OPTIMIZERS)
