"""Hooks through which plugins (built-in or third-party) contribute to ptypy-npu.

A plugin is a module or object with functions marked ``@hookimpl``; a third-party
distribution exposes it through an entry point in group ``ptypy_npu``::

    [project.entry-points.ptypy_npu]
    mynet = "my_package.plugin"
"""
import pluggy

PROJECT = 'ptypy_npu'
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ptypy_npu_networks():
    """Return ``{name: factory}`` of networks.

    ``factory(frame_size, **settings)`` returns a ``mindspore.nn.Cell`` that maps
    normalised amplitudes (B, 1, H, W) to ``(log_amplitude, phase)``, each (B, H, W)
    (see :mod:`ptypy_npu.networks`). ``settings`` are the engine's ``network`` subtree
    without ``name`` (``input`` only when not 'diffraction': a network that takes the
    holographic input (B, 3, H, W) accepts it and says so by ``input_kind = 'holographic'``;
    ``decoder`` only when not 'twin'); raise ``ValueError`` naming the setting for values it
    cannot take. A holographic network may offer ``decode(inputs)``, its correction of the
    estimate as ``(log_amplitude, phase)``, which one-pass inference then applies in numpy
    (:class:`ptypy_npu.networks.PatchPredictor`).
    """


@hookspec
def ptypy_npu_optimizers():
    """Return ``{name: factory}`` of optimizers.

    ``factory(params, learning_rate, **settings)`` returns a ``mindspore.nn.Optimizer``
    over ``params`` (see :mod:`ptypy_npu.optim`).
    """


@hookspec
def ptypy_npu_engines():
    """Return a list of PtyPy engine classes to register with ``ptypy.engines.register``.

    Called only when PtyPy is importable.
    """
