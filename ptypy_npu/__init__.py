"""ptypy-npu: physics-informed neural ptychography engine (W1Net) for PtyPy, on MindSpore.

``import ptypy_npu`` registers the engines of all loaded plugins with PtyPy when PtyPy
is importable, so that ``p.engines.e01.name = 'W1Net'`` validates. The solver core
(:mod:`ptypy_npu.solver`) needs no PtyPy.
"""
import importlib.util
import os
import warnings

__version__ = '0.1.0'

if os.environ.get('ONEDNN_MAX_CPU_ISA') is None:
    warnings.warn("ONEDNN_MAX_CPU_ISA is unset: on AVX-512 CPUs MindSpore's convolutions run ~80x slower. "
                  "Set ONEDNN_MAX_CPU_ISA=AVX2 before Python starts.")

if importlib.util.find_spec('ptypy') is not None:
    from .plugins import register_with_ptypy
    register_with_ptypy()
