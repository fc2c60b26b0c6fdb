"""ptypy-npu: physics-informed neural ptychography engine (W1Net) for PtyPy, on MindSpore.

Importing the package has no side effects. In a PtyPy script, ``import ptypy_npu.ptypy_plugin``
registers the ``W1Net`` engine (and the plugins' engines) with PtyPy, so that
``p.engines.e01.name = 'W1Net'`` validates. The solver core (:mod:`ptypy_npu.solver`) needs no
PtyPy; docs/ARCHITECTURE.md maps the layers.
"""
__version__ = '0.1.0'
