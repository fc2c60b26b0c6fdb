"""What a minibatch costs, and its gradients: the physics objective of the object, and the joint one
with a network.

Per minibatch of frames j (indices ``indices`` into the flat object):

* the data term of the object, ``ell(I_j, |F(P O_j)|^2)`` (:class:`PhysicsObjective`), where O_j is
  the object patch under frame j and ``ell`` the Gaussian-amplitude or Poisson loss;
* with a network N (:class:`JointObjective`), also its own data term ``ell(I_j, |F(P N(d_j))|^2)``
  on the patch it predicts from the diffraction amplitude d_j, and two terms on the squared
  exit-wave difference ``D_j = sum |P (N(d_j) - O_j)|^2``: ``network_consistency * D_j``
  (photons) pulls the network toward the object, which teaches it what one frame cannot fix;
  ``consistency * D_j / max|P|^2`` (object units) pulls the object toward the network, a prior
  that regularises low-dose scans and fades at high dose.

The object's and probe's gradients are written out (:meth:`PhysicsObjective.gradients`): the
data term's derivative in the far field, propagated back to the exit waves, then to the object
and the probe, as ptychography's projection algorithms do. That is cheaper than automatic
differentiation and hands the step the exit-wave residual its step lengths need
(:mod:`.step`). Only the network's terms go through MindSpore's autodiff. The objectives' plain
``construct`` (the loss) stays differentiable for the Hessian-vector products of AdaHessian and
for the tests that check the written-out gradients against autodiff.

Shapes: B frames, M probe modes, H x W frame pixels, the object flat (Ho * Wo,).
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
import numpy as np

from . import physics


def parameter_pair(array, name):
    """A complex array as a (real, imag) pair of float32 Parameters named ``name_re``, ``name_im``."""
    return (Parameter(Tensor(np.ascontiguousarray(array.real, dtype=np.float32)), name=f"{name}_re"),
            Parameter(Tensor(np.ascontiguousarray(array.imag, dtype=np.float32)), name=f"{name}_im"))


def conjugate_multiply(a_re, a_im, b_re, b_im):
    """conj(a) * b as a real/imag pair."""
    return a_re * b_re + a_im * b_im, a_re * b_im - a_im * b_re


class PhysicsObjective(nn.Cell):
    """Loss of one minibatch under the object's model and PtyPy's per-frame errors.

    ``construct(amplitudes, intensities, mask, indices)`` with amplitudes (B, 1, H, W) network
    input (unused here), intensities and mask (B, H, W), indices (B, H, W) int32 flat object
    pixels; returns ``(loss, fourier_error, photon_error, exit_error)``, the errors (B,), the exit
    error 0. The object (Ho * Wo,) and probe (M, H, W) are real/imag Parameter pairs, shared by
    the objectives with and without network.
    """

    def __init__(self, object_pair, probe_pair, propagator, loss):
        super().__init__()
        self.object_re, self.object_im = object_pair
        self.probe_re, self.probe_im = probe_pair
        self.forward_model = physics.PtychoForward(physics.FarfieldPropagator(*propagator))
        self.data_term = physics.LOSSES[loss]
        self.far_field_weight = physics.LOSS_WEIGHTS[loss]
        self.amplitude_loss = loss == 'gaussian'  # its data term is the Fourier error's numerator
        # J^T ell'' J in far-field terms: gaussian 2 (dA)(A)/A^2 with dA = Re(conj F dF) / A; poisson 2 (dI / I) F
        # with dI = 2 Re(conj F dF): the factor of Re(conj F dF) / I in the far-field weight
        self.gauss_newton_scale = physics.LOSS_CURVATURE[loss]
        self.object_pixels = self.object_re.shape[0]

    def patches(self, indices):
        """Object patches (B, H, W) as a real/imag pair."""
        return ops.gather(self.object_re, indices, 0), ops.gather(self.object_im, indices, 0)

    def _errors(self, model, intensities, mask):
        """(data term (B,), fourier (B,), photon (B,)) of model intensities."""
        data_term = self.data_term(model, intensities, mask)
        fourier, photon = physics.fourier_and_photon_errors(model, intensities, mask,
                                                            data_term if self.amplitude_loss else None)
        return data_term, fourier, photon

    def construct(self, amplitudes, intensities, mask, indices):
        patch_re, patch_im = self.patches(indices)
        model = self.forward_model(self.probe_re, self.probe_im, patch_re, patch_im)
        data_term, fourier, photon = self._errors(model, intensities, mask)
        return physics.total(data_term), fourier, photon, ops.zeros_like(fourier)

    def gradients(self, amplitudes, intensities, mask, indices):
        """The minibatch's loss, errors and gradients, written out.

        Returns ``(loss, errors, grads, residual, extra)``:

        * ``errors``: (fourier, photon, exit) per frame (B,);
        * ``grads``: gradients of the loss with respect to object re, im (flat, Ho * Wo), probe re, im
          (M, H, W), then the network's weights (none here);
        * ``residual``: ``(re, im)`` (B, M, H, W), minus the loss's gradient with respect to the
          pre-applied exit waves, ``-dL/dpsi``: the exit-wave change the data asks for, times the
          data term's curvature;
        * ``extra``: what the object's prior adds to the step-length system (:meth:`prior_terms`).
        """
        f = self.forward_model
        patch_re, patch_im = self.patches(indices)
        probe_re, probe_im = f.pre_applied(self.probe_re, self.probe_im)
        far_re, far_im, model = f.far_fields(probe_re, probe_im, patch_re, patch_im)
        data_term, fourier, photon = self._errors(model, intensities, mask)
        weight = self.far_field_weight(model, intensities, mask).expand_dims(1)
        (wave_re, wave_im), grads = self.back_propagate(weight * far_re, weight * far_im, probe_re, probe_im,
                                                        patch_re, patch_im, indices)
        errors = (fourier, photon, ops.zeros_like(fourier))
        return physics.total(data_term), errors, grads, (-wave_re, -wave_im), self.no_prior(patch_re)

    def back_propagate(self, field_re, field_im, probe_re, probe_im, patch_re, patch_im, indices):
        """``(wave, (object re, im, probe re, im))`` of a far-field field (B, M, H, W) that is some
        function's gradient with respect to the far fields: its gradient with respect to the pre-applied
        exit waves (B, M, H, W), and with respect to the flat object and the probe (M, H, W).
        ``probe_re, probe_im`` are the pre-applied probe, ``patch_re, patch_im`` the batch's patches."""
        f = self.forward_model
        wave_re, wave_im = f.back_propagate(field_re, field_im)
        object_re, object_im = conjugate_multiply(probe_re.expand_dims(0), probe_im.expand_dims(0), wave_re, wave_im)
        object_re, object_im = (self.scatter(physics.mode_sum(object_re), indices),
                                self.scatter(physics.mode_sum(object_im), indices))
        tilde_re, tilde_im = conjugate_multiply(patch_re.expand_dims(1), patch_im.expand_dims(1), wave_re, wave_im)
        probe_grad_re, probe_grad_im = conjugate_multiply(f.propagator.pre_re, f.propagator.pre_im,
                                                          tilde_re.sum(axis=0), tilde_im.sum(axis=0))
        return (wave_re, wave_im), (object_re, object_im, probe_grad_re, probe_grad_im)

    def gauss_newton_product(self, intensities, mask, indices, vector):
        """The generalised Gauss-Newton matrix of the data term times ``vector`` (object re, im flat; probe
        re, im (M, H, W)), in the same layout: ``J^T ell'' J v``, J the derivative of the model amplitudes
        (Gaussian loss, ``ell'' = 2``) or intensities (Poisson loss: the Fisher information ``1 / I``)
        with respect to object and probe. Positive semi-definite by construction; where the model fits
        the data it is the loss's Hessian without the terms that pull it indefinite (LOSS_CURVATURE)."""
        f = self.forward_model
        patch_re, patch_im = self.patches(indices)
        probe_re, probe_im = f.pre_applied(self.probe_re, self.probe_im)
        far_re, far_im, model = f.far_fields(probe_re, probe_im, patch_re, patch_im)
        (object_re, object_im), (probe_change_re, probe_change_im) = self.step_products(
            indices, vector[:2], vector[2:])
        change = f.to_complex(object_re + probe_change_re, object_im + probe_change_im)
        spectrum = ops.fft2(change, norm='ortho')  # J v in the far fields (B, M, H, W)
        half_intensity_change = physics.mode_sum(far_re * ops.real(spectrum) + far_im * ops.imag(spectrum))
        weight = mask * self.gauss_newton_scale * half_intensity_change / (model + physics.AMPLITUDE_EPS)
        weight = weight.expand_dims(1)
        return self.back_propagate(weight * far_re, weight * far_im, probe_re, probe_im, patch_re, patch_im,
                                   indices)[1]

    def illuminations(self, indices):
        """``(object_illumination, patch_power)``: ``sum_frames |P|^2`` on each flat object pixel (Ho * Wo,)
        and ``sum_frames |O_j|^2`` on each probe pixel (H, W), the step normalisers' weights."""
        probe_power = (ops.square(self.probe_re) + ops.square(self.probe_im)).sum(axis=0)
        object_illumination = self.scatter(ops.tile(probe_power.expand_dims(0), (indices.shape[0], 1, 1)), indices)
        patch_re, patch_im = self.patches(indices)
        return object_illumination, (ops.square(patch_re) + ops.square(patch_im)).sum(axis=0)

    def scatter(self, values, indices):
        """Patches (B, H, W) summed into the flat object (Ho * Wo,)."""
        return physics.scatter_add_patches(values, indices, self.object_pixels)

    def no_prior(self, patch_re):
        """The object's prior terms (:meth:`JointObjective.prior_terms` layout) of an objective without one."""
        zero = ops.zeros_like(patch_re)
        return zero, zero, ops.zeros((), patch_re.dtype)

    def step_products(self, indices, object_direction, probe_direction):
        """``(object_wave, probe_wave)``: the pre-applied exit-wave changes (B, M, H, W), each a re/im
        pair, that unit steps along the object direction (flat pair) and the probe direction ((M, H, W)
        pair) make on this batch: ``pre P dO_j`` and ``pre dP O_j``."""
        f = self.forward_model
        probe_re, probe_im = f.pre_applied(self.probe_re, self.probe_im)
        change_re, change_im = ops.gather(object_direction[0], indices, 0), ops.gather(object_direction[1], indices, 0)
        object_wave = f.exit_waves(probe_re, probe_im, change_re, change_im)
        patch_re, patch_im = self.patches(indices)
        direction_re, direction_im = f.pre_applied(*probe_direction)
        return object_wave, f.exit_waves(direction_re, direction_im, patch_re, patch_im)


class JointObjective(PhysicsObjective):
    """:class:`PhysicsObjective` plus the network's data term and the two consistency terms
    (module docstring). Its exit error (B,) is ``D_j`` per detector pixel."""

    def __init__(self, object_pair, probe_pair, propagator, loss, network, consistency, network_consistency,
                 loss_scaler=None, loss_unit=1.0):
        super().__init__(object_pair, probe_pair, propagator, loss)
        self.network = network
        self.consistency = consistency
        self.network_consistency = network_consistency
        self.network_weights = ms.ParameterTuple(network.trainable_params())
        network_loss = NetworkLoss(self) if loss_scaler is None else ScaledLoss(NetworkLoss(self), loss_scaler,
                                                                              loss_unit)
        self.network_gradient = ms.value_and_grad(network_loss, None, self.network_weights, has_aux=True)
        self.first_output = 0 if loss_scaler is None else 1  # the scaled loss leads the outputs

    def network_patches(self, amplitudes):
        """The network's object patches (B, H, W) as a float32 real/imag pair, whatever its precision."""
        log_amplitude, phase = self.network(amplitudes)
        amplitude = ops.exp(log_amplitude.astype(ms.float32))
        phase = phase.astype(ms.float32)
        return amplitude * ops.cos(phase), amplitude * ops.sin(phase)

    def network_terms(self, amplitudes, intensities, mask, patch_re, patch_im):
        """``(network loss, D (B,), illumination (H, W), net_re, net_im)``: the network's data term
        plus ``network_consistency * D``, with object and probe held fixed (a half-trained network must
        bend neither: the probe is refined by the object's data term alone)."""
        probe_re, probe_im = ops.stop_gradient(self.probe_re), ops.stop_gradient(self.probe_im)
        net_re, net_im = self.network_patches(amplitudes)
        net_model = self.forward_model(probe_re, probe_im, net_re, net_im)
        # |P (N - O)|^2 summed over modes = sum_m |P_m|^2 |N - O|^2: no exit waves needed
        illumination = (ops.square(probe_re) + ops.square(probe_im)).sum(axis=0)
        teach_re, teach_im = net_re - ops.stop_gradient(patch_re), net_im - ops.stop_gradient(patch_im)
        difference = physics.frame_sums(illumination * (ops.square(teach_re) + ops.square(teach_im)))
        loss = (physics.total(self.data_term(net_model, intensities, mask))
                + self.network_consistency * physics.total(difference))
        return loss, difference, illumination, net_re, net_im

    def construct(self, amplitudes, intensities, mask, indices):
        loss, fourier, photon, _ = super().construct(amplitudes, intensities, mask, indices)
        patch_re, patch_im = self.patches(indices)
        network_loss, difference, illumination, net_re, net_im = self.network_terms(amplitudes, intensities, mask,
                                                                                    patch_re, patch_im)
        # object <- network, in object units: a prior whose pull fades against the data term as the dose rises
        prior_re, prior_im = ops.stop_gradient(net_re) - patch_re, ops.stop_gradient(net_im) - patch_im
        prior = physics.total(illumination * (ops.square(prior_re) + ops.square(prior_im))) / illumination.max()
        exit_error = difference / (intensities.shape[-1] * intensities.shape[-2])
        return loss + network_loss + self.consistency * prior, fourier, photon, exit_error

    def gradients(self, amplitudes, intensities, mask, indices):
        loss, errors, grads, residual, _ = super().gradients(amplitudes, intensities, mask, indices)
        outputs, network_grads = self.network_gradient(amplitudes, intensities, mask, indices)
        network_loss, difference, illumination, net_re, net_im = outputs[self.first_output:]
        patch_re, patch_im = self.patches(indices)
        weight = self.consistency * illumination / illumination.max()  # object units
        prior_re, prior_im = net_re - patch_re, net_im - patch_im
        grads = (grads[0] - 2.0 * self.scatter(weight * prior_re, indices),
                 grads[1] - 2.0 * self.scatter(weight * prior_im, indices)) + grads[2:] + tuple(network_grads)
        prior = physics.total(weight * (ops.square(prior_re) + ops.square(prior_im)))
        errors = errors[:2] + (difference / (intensities.shape[-1] * intensities.shape[-2]),)
        return loss + network_loss + prior, errors, grads, residual, (prior_re, prior_im, weight)


class NetworkLoss(nn.Cell):
    """The network's loss of a :class:`JointObjective` (differentiated for the network's weights), with
    ``(D, illumination, net_re, net_im)`` beside it."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        patch_re, patch_im = self.objective.patches(indices)
        return self.objective.network_terms(amplitudes, intensities, mask, patch_re, patch_im)


class ScaledLoss(nn.Cell):
    """A loss cell's outputs led by the value to differentiate: the loss in units of ``loss_unit``
    photons times the dynamic loss scale (float16 training); the loss is in photons, 1e5-1e9 per
    batch, and its gradients would overflow float16 (largest 65504) even unscaled."""

    def __init__(self, loss_cell, loss_scaler, loss_unit):
        super().__init__()
        self.loss_cell = loss_cell
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit

    def construct(self, amplitudes, intensities, mask, indices):
        outputs = self.loss_cell(amplitudes, intensities, mask, indices)
        return (self.loss_scaler.scale(outputs[0] / self.loss_unit),) + outputs


class ObjectiveLoss(nn.Cell):
    """The scalar loss of an objective, for double backpropagation (Hessian-vector products)."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        return self.objective(amplitudes, intensities, mask, indices)[0]


class GaussNewtonProduct(nn.Cell):
    """``G v`` of an objective's data term (:meth:`PhysicsObjective.gauss_newton_product`) for vectors v
    held in parameters shaped like object re, im and probe re, im (:meth:`set_vectors`), so new vectors
    reuse the compiled graph. ``construct(amplitudes, intensities, mask, indices)`` returns the tuple."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective
        weights = ms.ParameterTuple([objective.object_re, objective.object_im, objective.probe_re, objective.probe_im])
        self.vectors = weights.clone(prefix='gauss_newton_vector', init='zeros')

    def set_vectors(self, vectors):
        for stored, vector in zip(self.vectors, vectors):
            ops.assign(stored, vector)

    def construct(self, amplitudes, intensities, mask, indices):
        return self.objective.gauss_newton_product(intensities, mask, indices, tuple(self.vectors))
