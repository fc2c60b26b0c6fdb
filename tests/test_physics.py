"""Forward model, losses and error measures against numpy references and finite differences."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from ptypy_npu import physics
from ptypy_npu.simulate import far_field_intensity

RNG = np.random.default_rng(1)


def random_field(shape):
    return RNG.normal(size=shape) + 1j * RNG.normal(size=shape)


def pair(z, dtype=np.float32):
    return Tensor(z.real.astype(dtype)), Tensor(z.imag.astype(dtype))


def test_centred_factors_equal_fftshift_convention():
    psi = random_field((16, 12))
    pre, post = physics.centred_fft_factors(psi.shape)
    reference = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(psi), norm='ortho'))
    np.testing.assert_allclose(post * np.fft.fft2(pre * psi, norm='ortho'), reference, atol=1e-12)


def test_centred_factors_refuse_odd_frames():
    with pytest.raises(ValueError, match='even'):
        physics.centred_fft_factors((15, 16))


def test_propagator_matches_numpy_with_arbitrary_phase_factors():
    shape = (3, 32, 32)
    pre = np.exp(1j * RNG.uniform(-np.pi, np.pi, shape[1:]))
    post = np.exp(1j * RNG.uniform(-np.pi, np.pi, shape[1:]))
    psi = random_field(shape)
    re, im = physics.FarfieldPropagator(pre, post)(*pair(psi))
    reference = post * np.fft.fft2(pre * psi) / np.sqrt(32 * 32)
    np.testing.assert_allclose(re.asnumpy() + 1j * im.asnumpy(), reference, rtol=0, atol=2e-5 * np.abs(reference).max())


def test_forward_model_sums_probe_modes_incoherently():
    probe = random_field((2, 16, 16))
    patches = random_field((4, 16, 16))
    forward = physics.PtychoForward(physics.FarfieldPropagator(*physics.centred_fft_factors((16, 16))))
    model = forward(*pair(probe), *pair(patches)).asnumpy()
    np.testing.assert_allclose(model, far_field_intensity(probe, patches), rtol=1e-4)


def errors_numpy(model, measured, mask):
    fourier = (mask * (np.sqrt(model) - np.sqrt(measured)) ** 2).sum((1, 2)) / mask.sum((1, 2))
    photon = (mask * (model - measured) ** 2 / (measured + 1)).sum((1, 2)) / model[0].size
    return fourier, photon


def test_error_measures_follow_ptypy_definitions():
    model = RNG.uniform(0, 50, (3, 8, 8))
    measured = RNG.poisson(model).astype(float)
    mask = RNG.uniform(size=model.shape) > 0.2
    fourier, photon = physics.fourier_and_photon_errors(Tensor(model.astype(np.float32)),
                                                        Tensor(measured.astype(np.float32)),
                                                        Tensor(mask.astype(np.float32)))
    ref_fourier, ref_photon = errors_numpy(model, measured, mask)
    np.testing.assert_allclose(fourier.asnumpy(), ref_fourier, rtol=1e-4)
    np.testing.assert_allclose(photon.asnumpy(), ref_photon, rtol=1e-4)


@pytest.mark.parametrize('loss', ['gaussian', 'poisson'])
def test_loss_gradient_matches_finite_differences(loss):
    """d loss / d (object re, im) through propagation, in float64, against central differences."""
    shape = (8, 8)
    probe = random_field((1,) + shape)
    patch = 1 + 0.3 * random_field((1,) + shape)
    measured = RNG.poisson(far_field_intensity(probe, 1 + 0.2 * random_field((1,) + shape))).astype(float)
    mask = (RNG.uniform(size=(1,) + shape) > 0.1).astype(float)
    forward = physics.PtychoForward(physics.FarfieldPropagator(*physics.centred_fft_factors(shape), dtype=np.float64))
    data_term = physics.LOSSES[loss]

    def total(patch_re, patch_im):
        model = forward(*pair(probe, np.float64), patch_re, patch_im)
        return data_term(model, Tensor(measured), Tensor(mask)).sum()

    grads = ms.grad(total, grad_position=(0, 1))(*pair(patch, np.float64))
    analytic = grads[0].asnumpy() + 1j * grads[1].asnumpy()

    def numpy_loss(z):
        model = far_field_intensity(probe, z)
        if loss == 'gaussian':
            return (mask * (np.sqrt(model + physics.AMPLITUDE_EPS) - np.sqrt(measured)) ** 2).sum()
        return (mask * (model - measured * np.log(model + physics.AMPLITUDE_EPS))).sum()

    h = 1e-6
    numeric = np.zeros(shape, complex)
    for i, j in [(0, 0), (3, 5), (7, 2), (4, 4)]:
        for unit in (1, 1j):
            step = np.zeros((1,) + shape, complex)
            step[0, i, j] = h * unit
            derivative = (numpy_loss(patch + step) - numpy_loss(patch - step)) / (2 * h)
            numeric[i, j] += derivative * (1 if unit == 1 else 1j)
        assert abs(analytic[0, i, j] - numeric[i, j]) <= 1e-5 * max(1.0, abs(numeric[i, j]))


def test_step_normaliser_and_patch_sums_match_numpy():
    values = RNG.uniform(size=(3, 4, 4)).astype(np.float32)
    positions = np.array([[0, 0], [1, 2], [3, 3]])
    rows = positions[:, 0, None, None] + np.arange(4)[None, :, None]
    cols = positions[:, 1, None, None] + np.arange(4)[None, None, :]
    indices = (rows * 8 + cols).astype(np.int32)
    summed = physics.scatter_add_patches(Tensor(values), Tensor(indices), 64).asnumpy().reshape(8, 8)
    reference = np.zeros((8, 8))
    for v, (r, c) in zip(values, positions):
        reference[r:r + 4, c:c + 4] += v
    np.testing.assert_allclose(summed, reference, rtol=1e-6)
    scale = physics.inverse_illumination(Tensor(reference.astype(np.float32)), 0.1, 2.0).asnumpy()
    np.testing.assert_allclose(scale, 1 / (2 * (reference + 0.1 * reference.max())), rtol=1e-5)
