"""The written-out gradients of the objectives against MindSpore's autodiff, and the gauge the solver holds."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from ptypy_npu.objective import ObjectiveLoss, PhysicsObjective, parameter_pair
from ptypy_npu.gauge import probe_offset

RNG = np.random.default_rng(0)


class Gradients(nn.Cell):
    """The objective's written-out gradients, as a graph."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, *inputs):
        return self.objective.gradients(*inputs)[2]


@pytest.mark.parametrize('loss', ['gaussian', 'poisson'])
def test_written_out_gradients_equal_autodiff(loss):
    """Two probe modes, PtyPy-like random propagation phases, a mask, overlapping frames."""
    h, modes, frames = 16, 2, 3
    obj = 1 + 0.2 * RNG.normal(size=(40, 40)) + 0.2j * RNG.normal(size=(40, 40))
    probe = RNG.normal(size=(modes, h, h)) + 1j * RNG.normal(size=(modes, h, h))
    pre, post = (np.exp(1j * RNG.uniform(-3, 3, (h, h))) for _ in range(2))
    positions = np.array([[0, 0], [5, 7], [20, 11]])
    indices = ((positions[:, 0, None, None] + np.arange(h)[None, :, None]) * 40
               + positions[:, 1, None, None] + np.arange(h)[None, None, :]).astype(np.int32)
    measured = RNG.poisson(20, size=(frames, h, h)).astype(np.float32)
    mask = (RNG.uniform(size=(frames, h, h)) > 0.1).astype(np.float32)
    objective = PhysicsObjective(parameter_pair(obj.reshape(-1), 'o'), parameter_pair(probe, 'p'), (pre, post), loss)
    inputs = (Tensor(np.zeros((frames, 1, h, h), np.float32)), Tensor(measured), Tensor(mask), Tensor(indices))
    weights = ms.ParameterTuple([objective.object_re, objective.object_im, objective.probe_re, objective.probe_im])
    automatic = ms.grad(ObjectiveLoss(objective), grad_position=None, weights=weights)(*inputs)
    for auto, written in zip(automatic, Gradients(objective)(*inputs)):
        np.testing.assert_allclose(written.asnumpy(), auto.asnumpy(), rtol=0, atol=1e-5 * np.abs(auto.asnumpy()).max())


def test_probe_offset_brings_the_centre_of_mass_back_by_whole_pixels():
    probe = np.zeros((1, 32, 32), complex)
    probe[0, 10:14, 20:24] = 1  # centre of mass at (11.5, 21.5); the frame centre is (15.5, 15.5)
    assert probe_offset(probe, tolerance=1.0) == (4, -6)
    assert probe_offset(probe, tolerance=8.0) == (0, 0)  # within tolerance: left alone
    assert probe_offset(probe, tolerance=None) == (0, 0)
    moved = np.roll(probe, probe_offset(probe, 1.0), axis=(-2, -1))
    assert probe_offset(moved, tolerance=0.1) == (0, 0)
