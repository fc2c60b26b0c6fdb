"""W1Network shapes, geometry checks and second-order gradients (graph mode)."""
import numpy as np
import pytest
from mindspore import Tensor, nn

from ptypy_npu.networks import PatchPredictor, W1Network, bin_frames
from ptypy_npu.optim import HessianVectorProduct


@pytest.mark.parametrize('frame_size,binning', [(64, 1), (128, 2), (256, 4)])
def test_w1net_returns_full_size_patches(frame_size, binning):
    net = W1Network(frame_size, depth=3, width=4, binning=binning)
    log_amplitude, phase = net(Tensor(np.random.rand(2, 1, frame_size, frame_size).astype(np.float32)))
    assert log_amplitude.shape == (2, frame_size, frame_size)
    assert phase.shape == (2, frame_size, frame_size)
    assert np.all(np.abs(phase.asnumpy()) <= np.pi)


def test_untrained_w1net_predicts_free_space():
    """Zero-initialised heads: transmission 1, phase 0 before any training."""
    log_amplitude, phase = W1Network(64, width=4)(Tensor(np.random.rand(1, 1, 64, 64).astype(np.float32)))
    assert np.abs(log_amplitude.asnumpy()).max() < 1e-6 and np.abs(phase.asnumpy()).max() < 1e-6


@pytest.mark.parametrize('kwargs,parameter', [({'frame_size': 100}, 'binning \\* 2\\*\\*depth'),
                                              ({'frame_size': 64, 'depth': 0}, 'network.depth'),
                                              ({'frame_size': 64, 'binning': 3}, 'network.binning'),
                                              ({'frame_size': 64, 'width': 0}, 'network.width'),
                                              ({'frame_size': 64, 'input': 'image'}, 'network.input'),
                                              ({'frame_size': 64, 'decoder': 'none'}, 'network.decoder')])
def test_w1net_names_the_setting_it_cannot_take(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        W1Network(**kwargs)


def test_w1net_uses_only_layers_with_second_order_gradients():
    banned = (nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.GroupNorm)
    assert not [c for _, c in W1Network(64).cells_and_names() if isinstance(c, banned)]


class _PatchLoss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, target):
        log_amplitude, phase = self.net(x)
        return ((log_amplitude - target) ** 2).sum() + (phase ** 2 * target).sum()


@pytest.mark.parametrize('decoder', ['twin', 'light'])
def test_hessian_vector_product_is_symmetric_in_graph_mode(decoder):
    """u . Hv = v . Hu for a W1Network loss (double backpropagation through every layer type)."""
    rng = np.random.default_rng(0)
    net = W1Network(32, depth=2, width=2, decoder=decoder)
    net.set_train(False)  # fixed BatchNorm statistics: the loss is a function of the weights alone
    for p in net.trainable_params():  # non-zero heads so every layer has curvature
        p.set_data(Tensor(rng.normal(scale=0.3, size=p.shape).astype(np.float32)))
    weights = net.trainable_params()
    hvp = HessianVectorProduct(_PatchLoss(net), weights)
    x = Tensor(rng.random((2, 1, 32, 32)).astype(np.float32))
    target = Tensor(rng.random((2, 32, 32)).astype(np.float32))
    u = tuple(Tensor(rng.choice([-1.0, 1.0], size=p.shape).astype(np.float32)) for p in weights)
    v = tuple(Tensor(rng.choice([-1.0, 1.0], size=p.shape).astype(np.float32)) for p in weights)
    hvp.set_vectors(u)
    hu = hvp(x, target)
    hvp.set_vectors(v)
    hv = hvp(x, target)
    u_hv = sum(float((a.asnumpy().astype(np.float64) * b.asnumpy()).sum()) for a, b in zip(u, hv))
    v_hu = sum(float((a.asnumpy().astype(np.float64) * b.asnumpy()).sum()) for a, b in zip(v, hu))
    assert abs(u_hv) > 1e-3
    assert abs(u_hv - v_hu) <= 1e-3 * max(abs(u_hv), abs(v_hu))


def test_twin_decoder_weights_keep_the_names_saved_models_hold():
    """Weights load by name: the names of models saved before the light decoder existed."""
    batch_norm = ('beta', 'gamma', 'moving_mean', 'moving_variance')
    expected = {f'encoder.{k}.weight' for k in (0, 3, 6)} | {f'encoder.{k}.{p}' for k in (1, 4, 7) for p in batch_norm}
    for head in ('amplitude_decoder', 'phase_decoder'):
        expected |= {f'{head}.{k}.weight' for k in (0, 3, 6)} | {f'{head}.6.bias'}
        expected |= {f'{head}.{k}.{p}' for k in (1, 4) for p in batch_norm}
    assert {name for name, _ in W1Network(32, depth=2, width=2, binning=1).parameters_and_names()} == expected


def test_untrained_holographic_w1net_returns_the_patch_estimate_of_its_input():
    """Zero-initialised heads add nothing to the estimate 1 + channel 1 + i channel 2."""
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-0.5, 0.5, (2, 3, 64, 64)).astype(np.float32)
    log_amplitude, phase = W1Network(64, width=4, binning=1, input='holographic')(Tensor(inputs))
    estimate = (1 + inputs[:, 1]) + 1j * inputs[:, 2]
    np.testing.assert_allclose(log_amplitude.asnumpy(), np.log(np.abs(estimate)), atol=1e-5)
    np.testing.assert_allclose(phase.asnumpy(), np.angle(estimate), atol=1e-5)


@pytest.mark.parametrize('decoder', ['twin', 'light'])
def test_patch_predictor_equals_the_networks_own_patches(decoder):
    """The predictor's numpy product estimate x exp(correction) against exp(log_amplitude + i phase) of the
    network's graph (its log/atan2 tail), with random weights so the correction is not zero."""
    rng = np.random.default_rng(1)
    net = W1Network(64, width=4, binning=2, input='holographic', decoder=decoder)
    for p in net.trainable_params():
        p.set_data(Tensor(rng.normal(scale=0.2, size=p.shape).astype(np.float32)))
    inputs = rng.uniform(-0.5, 0.5, (5, 3, 64, 64)).astype(np.float32)
    net.set_train(False)
    log_amplitude, phase = (x.asnumpy() for x in net(Tensor(inputs)))
    expected = np.exp(log_amplitude + 1j * phase)
    assert np.std(log_amplitude - np.log(np.abs((1 + inputs[:, 1]) + 1j * inputs[:, 2]))) > 1e-2  # corrected
    net.set_train(True)
    patches = PatchPredictor(net)(inputs, batch_size=2)  # padded last batch
    np.testing.assert_allclose(patches, expected, rtol=1e-4, atol=1e-5)
    assert net.training  # the network's mode is restored


def test_untrained_light_decoder_returns_the_patch_estimate():
    inputs = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3, 64, 64)).astype(np.float32)
    log_amplitude, phase = W1Network(64, width=4, binning=2, input='holographic', decoder='light')(Tensor(inputs))
    estimate = (1 + inputs[:, 1]) + 1j * inputs[:, 2]
    np.testing.assert_allclose(log_amplitude.asnumpy(), np.log(np.abs(estimate)), atol=1e-5)
    np.testing.assert_allclose(phase.asnumpy(), np.angle(estimate), atol=1e-5)


def test_binning_sums_pixel_blocks():
    frames = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    expected = frames.reshape(2, 3, 4, 4, 4, 4).sum(axis=(3, 5))
    np.testing.assert_allclose(bin_frames(Tensor(frames), 4).asnumpy(), expected, rtol=1e-6)


def test_patch_predictor_refuses_no_frames():
    with pytest.raises(ValueError, match='no frames'):
        PatchPredictor(W1Network(64, width=4))(np.zeros((0, 1, 64, 64), np.float32))
