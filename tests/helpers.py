"""Shared checks for the tests."""
import numpy as np

from ptypy_npu.metrics import registered_error


def patch_errors(solver, truth, frames):
    """Registered errors (centre half of each frame) of the network's patches and of flat patches.

    A flat patch is what an untrained W1Net predicts; a network that learned anything beats it.
    """
    h = solver.data.intensities.shape[-1]
    centre = np.zeros((h, h), bool)
    centre[h // 4:3 * h // 4, h // 4:3 * h // 4] = True
    network, flat = [], []
    for patch, (row, col) in zip(solver.predict_patches(frames=frames), solver.data.positions[frames]):
        true_patch = truth[row:row + h, col:col + h]
        network.append(registered_error(patch, true_patch, centre))
        flat.append(registered_error(np.ones_like(patch), true_patch, centre))
    return np.mean(network), np.mean(flat)
