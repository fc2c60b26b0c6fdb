"""The full training state on disk: every parameter and optimizer state by name, plus counters.

MindSpore checkpoints (``.ckpt``) with optimizer moments give a bitwise-identical resume. Written
atomically (:func:`ptypy_npu.files.atomic_output`), so a crash while saving never leaves a broken
checkpoint behind.
"""
import json

import mindspore as ms
from mindspore import ops

from .files import atomic_output
from .settings import SettingError


def check_path(path, key='checkpoint.path'):
    """Raise :class:`~ptypy_npu.settings.SettingError` naming ``key`` unless ``path`` ends in ``.ckpt``."""
    if not str(path).endswith('.ckpt'):
        raise SettingError(key, f"must end in .ckpt, got {path!r}")


def save(path, parameters, counters, rng):
    """Write ``parameters`` ({name: Parameter}), ``counters`` ({name: int}) and the numpy Generator
    ``rng``'s state to ``path`` (.ckpt), replacing an earlier checkpoint there."""
    check_path(path)
    entries = [{'name': name, 'data': p} for name, p in parameters.items()]
    with atomic_output(str(path), force=True, what='checkpoint') as temporary:
        ms.save_checkpoint(entries, temporary, append_dict={**counters,
                                                          'rng_state': json.dumps(rng.bit_generator.state)})


def load(path, parameters, counters, rng):
    """Restore :func:`save` into ``parameters`` (in place) and ``rng``; returns the counters, whose
    names ``counters`` lists. ``ValueError`` naming what does not match."""
    state = ms.load_checkpoint(str(path))
    missing = [name for name in list(parameters) + list(counters) + ['rng_state'] if name not in state]
    if missing:
        raise ValueError(f"checkpoint {path} does not match this solver: it lacks {missing[:5]}")
    wrong = [name for name, p in parameters.items() if tuple(state[name].shape) != tuple(p.shape)]
    if wrong:
        raise ValueError(f"checkpoint {path} does not match this solver: shapes of {wrong[:5]} differ")
    for name, param in parameters.items():
        ops.assign(param, state[name])
    rng.bit_generator.state = json.loads(str(state['rng_state']))
    return {name: int(state[name].asnumpy()) for name in counters}
