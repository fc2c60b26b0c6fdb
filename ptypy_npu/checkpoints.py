"""A solver's full training state on disk: every parameter and optimizer state by name, plus counters.

MindSpore checkpoints (``.ckpt``) with optimizer moments give a bitwise-identical resume. Written
atomically (:func:`ptypy_npu.files.atomic_output`), so a crash while saving never leaves a broken
checkpoint behind.
"""
import json

import mindspore as ms
from mindspore import ops

from .files import atomic_output
from .settings import SettingError


#: What the solver's divergence guard and its adaptive normaliser remember between epochs (JointSolver.run).
PROGRESS = ('lowest_fourier', 'lowest_fourier_since_regularised', 'epochs_without_low')


def check_path(path, key='checkpoint.path'):
    """Raise :class:`~ptypy_npu.settings.SettingError` naming ``key`` unless ``path`` ends in ``.ckpt``."""
    if not str(path).endswith('.ckpt'):
        raise SettingError(key, f"must end in .ckpt, got {path!r}")


def save(solver, path):
    """Save a :class:`~ptypy_npu.solver.JointSolver`'s network, object, probe, every optimizer's state, its
    epoch, steps taken and shuffling RNG state to ``path`` (.ckpt), replacing an earlier checkpoint there.
    In a distributed run all ranks hold the same state and rank 0 alone writes it."""
    check_path(path)
    if solver.communicator.rank != 0:
        return
    entries = [{'name': name, 'data': p} for name, p in solver.named_parameters().items()]
    counters = {**{name: getattr(solver, name) for name in PROGRESS}, 'epoch': solver.epoch,
                'steps_taken': solver.steps_taken, 'rng_state': json.dumps(solver.rng.bit_generator.state)}
    with atomic_output(str(path), force=True, what='checkpoint') as temporary:
        ms.save_checkpoint(entries, temporary, append_dict=counters)


def resume(solver, path):
    """Restore :func:`save` into a fresh solver built with the same data and settings (a compiled
    MindSpore step does not see parameters reloaded after it ran); ``ValueError`` naming what does
    not match, ``RuntimeError`` for a solver that has run."""
    if solver.steps_taken:
        raise RuntimeError("a checkpoint is resumed into a fresh solver: this one has already run")
    state = ms.load_checkpoint(str(path))
    parameters = solver.named_parameters()
    missing = [name for name in list(parameters) + ['epoch', 'steps_taken', 'rng_state'] if name not in state]
    if missing:
        raise ValueError(f"checkpoint {path} does not match this solver: it lacks {missing[:5]}. A checkpoint holds "
                         "each group's optimizer state: resume with the optimizers of the run that wrote it (the "
                         "probe's default became 'adahessian' on 2026-12-01: give probe_update.optimizer 'sgd' to "
                         "resume a checkpoint written with the earlier default)")
    wrong = [name for name, p in parameters.items() if tuple(state[name].shape) != tuple(p.shape)]
    if wrong:
        raise ValueError(f"checkpoint {path} does not match this solver: shapes of {wrong[:5]} differ")
    for name, param in parameters.items():
        ops.assign(param, state[name])
    solver.rng.bit_generator.state = json.loads(str(state['rng_state']))
    solver.epoch, solver.steps_taken = int(state['epoch'].asnumpy()), int(state['steps_taken'].asnumpy())
    for name in PROGRESS:  # absent from checkpoints written before the normaliser's delta adapted
        if name in state:
            setattr(solver, name, type(getattr(solver, name))(state[name].asnumpy()))
