"""What a minibatch costs: the physics objective of the object, the joint one with a network, and
their gradients together with the illumination the step normaliser needs.

Per minibatch of frames j (indices ``indices`` into the flat object):

* the data term of the object, ``ell(I_j, |F(P O_j)|^2)`` (:class:`PhysicsObjective`), where O_j is
  the object patch under frame j and ``ell`` the Gaussian-amplitude or Poisson loss;
* with a network N (:class:`JointObjective`), also its own data term ``ell(I_j, |F(P N(d_j))|^2)``
  on the patch it predicts from the diffraction amplitude d_j, and two terms on the squared
  exit-wave difference ``D_j = sum |P (N(d_j) - O_j)|^2``: ``network_consistency * D_j``
  (photons) pulls the network toward the object, which teaches it what one frame cannot fix;
  ``consistency * D_j / max|P|^2`` (object units) pulls the object toward the network, a prior
  that regularises low-dose scans and fades at high dose.

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
        self.amplitude_loss = loss == 'gaussian'  # its data term is the Fourier error's numerator

    def patches(self, indices):
        """Object patches (B, H, W) as a real/imag pair."""
        return ops.gather(self.object_re, indices, 0), ops.gather(self.object_im, indices, 0)

    def object_terms(self, intensities, mask, indices):
        """``(loss, fourier, photon, patch_re, patch_im)`` of the object's model."""
        patch_re, patch_im = self.patches(indices)
        model = self.forward_model(self.probe_re, self.probe_im, patch_re, patch_im)
        data_term = self.data_term(model, intensities, mask)
        fourier, photon = physics.fourier_and_photon_errors(model, intensities, mask,
                                                            data_term if self.amplitude_loss else None)
        return data_term.sum(), fourier, photon, patch_re, patch_im

    def construct(self, amplitudes, intensities, mask, indices):
        loss, fourier, photon, _, _ = self.object_terms(intensities, mask, indices)
        return loss, fourier, photon, ops.zeros_like(fourier)


class JointObjective(PhysicsObjective):
    """:class:`PhysicsObjective` plus the network's data term and the two consistency terms
    (module docstring). Its exit error (B,) is ``D_j`` per detector pixel."""

    def __init__(self, object_pair, probe_pair, propagator, loss, network, consistency, network_consistency):
        super().__init__(object_pair, probe_pair, propagator, loss)
        self.network = network
        self.consistency = consistency
        self.network_consistency = network_consistency

    def network_patches(self, amplitudes):
        """The network's object patches (B, H, W) as a float32 real/imag pair, whatever its precision."""
        log_amplitude, phase = self.network(amplitudes)
        amplitude = ops.exp(log_amplitude.astype(ms.float32))
        phase = phase.astype(ms.float32)
        return amplitude * ops.cos(phase), amplitude * ops.sin(phase)

    def construct(self, amplitudes, intensities, mask, indices):
        loss, fourier, photon, patch_re, patch_im = self.object_terms(intensities, mask, indices)
        # the probe is refined by the object's data term alone: a half-trained network must not bend it
        probe_re, probe_im = ops.stop_gradient(self.probe_re), ops.stop_gradient(self.probe_im)
        net_re, net_im = self.network_patches(amplitudes)
        net_model = self.forward_model(probe_re, probe_im, net_re, net_im)
        # |P (N - O)|^2 summed over modes = sum_m |P_m|^2 |N - O|^2: no exit waves needed
        illumination = (ops.square(probe_re) + ops.square(probe_im)).sum(axis=0)
        # network <- object, in photons like the data terms: the object's patches teach the network
        teach_re, teach_im = net_re - ops.stop_gradient(patch_re), net_im - ops.stop_gradient(patch_im)
        exit_error = (illumination * (ops.square(teach_re) + ops.square(teach_im))).sum(axis=(1, 2))
        # object <- network, in object units: a prior whose pull fades against the data term as the dose rises
        prior_re, prior_im = ops.stop_gradient(net_re) - patch_re, ops.stop_gradient(net_im) - patch_im
        prior = (illumination * (ops.square(prior_re) + ops.square(prior_im))).sum() / illumination.max()
        loss = loss + self.data_term(net_model, intensities, mask).sum() \
            + self.network_consistency * exit_error.sum() + self.consistency * prior
        return loss, fourier, photon, exit_error / (intensities.shape[-1] * intensities.shape[-2])


class ObjectiveLoss(nn.Cell):
    """The scalar loss of an objective, for double backpropagation (Hessian-vector products)."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def construct(self, amplitudes, intensities, mask, indices):
        return self.objective(amplitudes, intensities, mask, indices)[0]


class ScaledLoss(nn.Cell):
    """The objective's outputs led by the value to differentiate: the loss in units of ``loss_unit``
    photons times the dynamic loss scale (float16 training)."""

    def __init__(self, objective, loss_scaler, loss_unit):
        super().__init__()
        self.objective = objective
        self.loss_scaler = loss_scaler
        self.loss_unit = loss_unit

    def construct(self, amplitudes, intensities, mask, indices):
        loss, fourier, photon, exit_error = self.objective(amplitudes, intensities, mask, indices)
        return self.loss_scaler.scale(loss / self.loss_unit), loss, fourier, photon, exit_error


class Gradient(nn.Cell):
    """Gradients of one minibatch and the illumination it brought, before any step.

    ``construct(amplitudes, intensities, mask, indices)`` returns ``(outputs, grads,
    object_illumination, patch_power)``: the objective's outputs (loss and per-frame errors),
    the gradients of ``weights`` (object re/im, probe re/im, then the network's), ``sum_frames
    |P|^2`` on each flat object pixel (Ho*Wo,) and ``sum_frames |O_j|^2`` on each probe pixel
    (H, W). All but the errors are sums over frames, so a distributed run adds them up over its
    ranks to obtain those of the global batch.

    With a ``loss_scaler`` (float16) the gradients are those of ``loss / loss_unit * scale``
    (:class:`ScaledLoss`), which the update undoes: the loss is in photons, 1e5-1e9 per batch,
    and its gradients would overflow float16 (largest 65504) even unscaled.
    """

    def __init__(self, objective, weights, loss_scaler=None, loss_unit=1.0):
        super().__init__()
        self.objective = objective
        differentiated = objective if loss_scaler is None else ScaledLoss(objective, loss_scaler, loss_unit)
        self.grad_fn = ms.value_and_grad(differentiated, None, weights, has_aux=True)
        self.first_output = 0 if loss_scaler is None else 1
        self.object_pixels = objective.object_re.shape[0]

    def construct(self, amplitudes, intensities, mask, indices):
        outputs, grads = self.grad_fn(amplitudes, intensities, mask, indices)
        objective = self.objective
        probe_power = (ops.square(objective.probe_re) + ops.square(objective.probe_im)).sum(axis=0)
        object_illumination = physics.scatter_add_patches(
            ops.tile(probe_power.expand_dims(0), (indices.shape[0], 1, 1)), indices, self.object_pixels)
        patch_re, patch_im = objective.patches(indices)
        patch_power = (ops.square(patch_re) + ops.square(patch_im)).sum(axis=0)
        return outputs[self.first_output:], grads, object_illumination, patch_power
