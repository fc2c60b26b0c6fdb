"""Where MindSpore computes: device selection (graph mode) and the network's arithmetic."""
import os
import warnings

import mindspore as ms

from .settings import DEVICES

#: The network's compute type per ``precision`` setting; the physics and all weights stay float32.
COMPUTE_TYPES = {'float32': ms.float32, 'float16': ms.float16, 'bfloat16': ms.bfloat16}

CPU_ISA_WARNING = ("ONEDNN_MAX_CPU_ISA is unset: on AVX-512 CPUs MindSpore's convolutions run ~80x slower. "
                   "Set ONEDNN_MAX_CPU_ISA=AVX2 before Python starts.")


def select_device(device):
    """Point MindSpore at ``device`` ('CPU', 'GPU', 'Ascend') in graph mode; ``ValueError`` if it
    cannot be used. On the CPU, warns when ``ONEDNN_MAX_CPU_ISA`` is unset (it must be set
    before the process starts)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == 'CPU' and os.environ.get('ONEDNN_MAX_CPU_ISA') is None:
        warnings.warn(CPU_ISA_WARNING, RuntimeWarning, stacklevel=2)
    ms.set_context(mode=ms.GRAPH_MODE)
    if ms.get_context('device_target') == device:
        return  # already there; MindSpore refuses set_device once its runtime has started
    try:
        ms.set_device(device)
    except Exception as error:
        raise ValueError(f"device {device!r} cannot be used by MindSpore here "
                         f"(it runs on {ms.get_context('device_target')}): {error}") from error
