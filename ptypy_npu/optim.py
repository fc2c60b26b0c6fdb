"""Optimizers for the network, object and probe parameter groups.

Each optimizer is a ``mindspore.nn.Optimizer`` built by a factory
``factory(params, learning_rate, **settings)`` and contributed through the
``ptypy_npu_optimizers`` hook, so engines pick any of them by name. The object and
probe are real/imag pairs of float tensors: every optimizer acts on the real and
imaginary parts as separate parameters (Lion's ``sign`` and AdaHessian's Rademacher
probes included), except AdaHessian's image variant, whose curvature and second moment
are one per complex pixel.

First-order optimizers take the gradients, ``optimizer(gradients)``; optimizers with
``needs_hessian = True`` (AdaHessian, unless its curvature is the closed-form
``'illumination'``) also keep a curvature-diagonal estimate in their state, which the
solver refreshes every ``hessian_interval`` steps through
:meth:`AdaHessian.refresh_hessian`. Optimizers with ``preconditions = True`` (AdaHessian's lazy
image variant, object and probe only) are driven in two calls: ``precondition(gradients, ...)``
makes the directions, and ``optimizer(directions)`` moves along them.
"""
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


def check_learning_rate(name, learning_rate):
    """Raise ``ValueError`` naming ``name`` unless ``learning_rate`` is a finite number >= 0."""
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not learning_rate >= 0 or learning_rate == float('inf'):
        raise ValueError(f"{name} must be a finite number >= 0, got {learning_rate!r}")


def check_betas(name, betas):
    """Raise ``ValueError`` naming ``name`` unless ``betas`` is two numbers in [0, 1)."""
    if len(tuple(betas)) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{name} must be two numbers in [0, 1), got {betas!r}")


def adam(params, learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """MindSpore's Adam (Kingma & Ba 2015); ``weight_decay`` is L2 added to the gradient."""
    check_betas('betas', betas)
    return nn.Adam(params, learning_rate=learning_rate, beta1=betas[0], beta2=betas[1], eps=eps,
                   weight_decay=weight_decay)


def sgd(params, learning_rate, momentum=0.0, weight_decay=0.0):
    """MindSpore's SGD. With the solver's illumination normalisation and optimal step lengths this is
    LSQML-like (:mod:`ptypy_npu.step`); the learning rate scales the optimal step."""
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    optimizer = nn.SGD(params, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
    optimizer.takes_step_lengths = True  # its step scales with the solver's optimal step lengths
    return optimizer


_lion_update = ops.MultitypeFuncGraph('lion_update')


@_lion_update.register('Tensor', 'Number', 'Number', 'Number', 'Bool', 'Tensor', 'Tensor', 'Tensor')
def _lion_update_one(learning_rate, beta1, beta2, decay, lazy, param, moment, gradient):
    """Lion's step of one parameter in place (see :class:`Lion`)."""
    # (m + w (g - m)) rather than ops.lerp: MindSpore's CPU lerp with a scalar weight is ~5x slower
    difference = gradient - moment
    update = ops.sign(moment + (1 - beta1) * difference)
    if decay > 0:
        update = update + decay * param
    moment_step = (1 - beta2) * difference
    if lazy:
        touched = ops.cast(gradient != 0, gradient.dtype)
        update = update * touched
        moment_step = moment_step * touched  # the moment stays where nothing was lit
    ops.assign_sub(param, learning_rate * update)
    ops.assign_add(moment, moment_step)
    return True


class Lion(nn.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    Per parameter p with gradient g and one moment m::

        c = b1 m + (1 - b1) g;   p <- p - lr (sign(c) + wd p);   m <- b2 m + (1 - b2) g

    Weight decay is decoupled (applied with the step, not added to g). Steps have the
    same size lr on every element, so lr is typically 3-10x smaller than Adam's.
    ``lazy=True`` leaves elements whose gradient is exactly zero (object pixels no frame of
    the batch lit) and their moments alone, as LazyAdam does for sparse gradients; the
    paper's Lion would move them every step along their stale moment.
    The update is mapped over the parameters (``ops.HyperMap``), as MindSpore's own
    optimizers are: one flat update over all of them launches fewer kernels, but its
    concat and split take seconds to compile (measured: 4.0 s against 0.4 s on the W1Net's
    40 tensors), more than the flat update saves in a whole run.
    """
    needs_hessian = False

    def __init__(self, params, learning_rate=1e-4, betas=(0.9, 0.99), weight_decay=0.0, lazy=False):
        check_learning_rate('learning_rate', learning_rate)
        check_betas('betas', betas)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not isinstance(lazy, bool):
            raise ValueError(f"lazy must be True or False, got {lazy!r}")
        super().__init__(learning_rate, params)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.decay = float(weight_decay)
        self.lazy = lazy
        self.moments = self.parameters.clone(prefix='lion_m', init='zeros')
        self.map = ops.HyperMap()

    def construct(self, gradients):
        step = ops.partial(_lion_update, self.get_lr(), self.beta1, self.beta2, self.decay, self.lazy)
        self.map(step, self.parameters, self.moments, gradients)
        return True


class AdamW(nn.Optimizer):
    """AdamW (Loshchilov & Hutter 2019): Adam with bias correction and decoupled weight decay::

        m <- b1 m + (1 - b1) g;   s <- b2 s + (1 - b2) c^2
        p <- p - lr (m / (1 - b1^t)) / ((s / (1 - b2^t))^(k/2) + eps) - lr wd p

    with curvature c = g and k = 1. (MindSpore's ``AdamWeightDecay`` is deprecated and
    has no bias correction, so the paper's update is implemented here.) :class:`AdaHessian`
    shares this update with c = its Hessian-diagonal estimate.
    """
    needs_hessian = False

    def __init__(self, params, learning_rate=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 hessian_power=1.0):
        check_learning_rate('learning_rate', learning_rate)
        check_betas('betas', betas)
        if not 0 < hessian_power <= 1:
            raise ValueError(f"hessian_power must be in (0, 1], got {hessian_power!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(learning_rate, params)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.decay = float(weight_decay)
        self.half_power = float(hessian_power) / 2
        prefix = type(self).__name__.lower()
        self.moments = self.parameters.clone(prefix=f'{prefix}_m', init='zeros')
        self.curvature_moments = self.second_moment_slots().clone(prefix=f'{prefix}_s', init='zeros')
        self.step = Parameter(Tensor(0, ms.int32), name=f'{prefix}_step')

    def second_moment_slots(self):
        """The parameters whose shapes the second moments take: one moment per parameter."""
        return self.parameters

    def curvatures(self, gradients):
        """The c whose squares the second moment averages: the gradients themselves."""
        return gradients

    def construct(self, gradients):
        lr = self.get_lr()
        step = self.step + 1
        ops.assign(self.step, step)
        t = ops.cast(step, ms.float32)
        correction1 = 1 - ops.pow(self.beta1, t)
        correction2 = 1 - ops.pow(self.beta2, t)
        for param, moment, curvature_moment, curvature, grad in zip(
                self.parameters, self.moments, self.curvature_moments, self.curvatures(gradients), gradients):
            new_moment = self.beta1 * moment + (1 - self.beta1) * grad
            new_curvature_moment = self.beta2 * curvature_moment + (1 - self.beta2) * curvature * curvature
            denominator = ops.pow(new_curvature_moment / correction2, self.half_power) + self.eps
            ops.assign(param, param - lr * (new_moment / correction1) / denominator - lr * self.decay * param)
            ops.assign(moment, new_moment)
            ops.assign(curvature_moment, new_curvature_moment)
        return True


#: Curvatures whose diagonal an :class:`AdaHessian` takes: the loss's Hessian (a Hutchinson estimate by double
#: backpropagation), the data term's generalised Gauss-Newton matrix (a Hutchinson estimate; object and probe
#: only; positive by construction), or that Gauss-Newton diagonal in closed form, the illumination (object and
#: probe only; exact for one probe mode, no estimate).
CURVATURES = ('hessian', 'gauss_newton', 'illumination')


class AdaHessian(AdamW):
    """AdaHessian (Yao et al. 2021, "ADAHESSIAN: An Adaptive Second Order Optimizer").

    :class:`AdamW`'s update with the curvature c = D, the diagonal of a curvature matrix, and Hessian
    power k in (0, 1]. Two variants:

    * the paper's, for the network: ``curvature='hessian'``, D a Hutchinson estimate ``|v * Hv|`` (v
      Rademacher +-1, Hv by double backpropagation) averaged over the kernel window of convolution
      weights (the paper's spatial averaging); moments and bias correction shared by all elements.
      The solver's :class:`~ptypy_npu.step.HessianRefresh` makes a new D every ``hessian_interval``
      steps and hands it to :meth:`refresh_hessian`; between refreshes the last D is reused.
    * for complex images, the object and the probe as (real, imaginary) pairs of parameters
      (``lazy=True``; the solver's defaults there): D is the data term's Gauss-Newton diagonal, one
      per complex pixel, as Adam keeps one second moment per complex element (the Gauss-Newton
      curvature of a complex pixel is isotropic: for one probe mode the real and imaginary parts'
      diagonals sum to the loss curvature times the illumination and split about evenly). With
      ``curvature='illumination'`` D is that diagonal in closed form, half the loss curvature times the
      batch's illumination (object) or patch power (probe), which the solver's step hands
      :meth:`precondition`: exact for one probe mode, an upper bound for several, never refreshed. With
      ``curvature='gauss_newton'`` D is a Hutchinson estimate of it (the mean of the pair's, averaged
      over ``spatial_window`` px, refreshed every ``hessian_interval`` steps) where a refresh measured
      it, the closed form elsewhere, so no refresh interval leaves a newly lit pixel without curvature.
      A pixel's moments and its own bias corrections (``beta^n``, n its own step count) advance only
      when a batch lights it (non-zero gradient), as LazyAdam's do, so pixels lit rarely are neither
      overshot by dense moments nor corrected as if often seen. ``regularisation`` adds that multiple
      of the largest D to every D, as the illumination normaliser's delta does. The solver's step
      drives this variant in two calls, :meth:`precondition` (moments and directions) and then the
      optimizer on those directions; with ``step_lengths=True`` (ignored by the paper's variant) it
      scales them first by LSQML's optimal step lengths along them (:mod:`ptypy_npu.step`), so the
      learning rate is a multiple of the optimal step. Without step lengths and with a Hessian power
      below 1 the step's size grows with the dose: the rate must then be set for the scan.
    """

    def __init__(self, params, learning_rate=0.1, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.0,
                 hessian_power=1.0, lazy=False, curvature='hessian', regularisation=0.0, spatial_window=0,
                 step_lengths=False):
        if not isinstance(lazy, bool):
            raise ValueError(f"lazy must be True or False, got {lazy!r}")
        self.lazy = lazy  # before the base's init, whose second moments it shapes (second_moment_slots)
        super().__init__(params, learning_rate, betas, eps, weight_decay, hessian_power)
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
        if curvature == 'illumination' and not lazy:
            raise ValueError("curvature 'illumination' is the image variant's (lazy=True, object and probe): the "
                             "paper's AdaHessian takes 'hessian'")
        if not regularisation >= 0:
            raise ValueError(f"regularisation must be >= 0, got {regularisation!r}")
        if isinstance(spatial_window, bool) or not isinstance(spatial_window, int) or spatial_window < 0:
            raise ValueError(f"spatial_window must be a whole number of pixels >= 0, got {spatial_window!r}")
        if not isinstance(step_lengths, bool):
            raise ValueError(f"step_lengths must be True or False, got {step_lengths!r}")
        self.curvature, self.regularisation = curvature, float(regularisation)
        self.needs_hessian = curvature != 'illumination'  # whether the solver refreshes an estimate of D
        self.spatial_window = spatial_window
        self.takes_step_lengths = step_lengths and lazy  # the paper's variant keeps its own steps
        self.preconditions = lazy  # the solver's step calls precondition(), then the optimizer on its directions
        pixels = self.second_moment_slots()
        if self.needs_hessian:
            self.hessian_diagonal = pixels.clone(prefix='adahessian_d', init='zeros')
        if lazy:
            self.moment_decays = pixels.clone(prefix='adahessian_b1n', init='ones')
            self.curvature_decays = pixels.clone(prefix='adahessian_b2n', init='ones')

    def second_moment_slots(self):
        """One second moment per parameter; the lazy variant's, one per complex pixel of its (real, imaginary)
        pairs of equal shape."""
        if not self.lazy:
            return self.parameters
        shapes = [p.shape for p in self.parameters]
        if len(shapes) % 2 or shapes[0::2] != shapes[1::2]:
            listed = ', '.join(map(str, shapes[:4])) + (', ...' if len(shapes) > 4 else '')
            raise ValueError(f"lazy=True is AdaHessian's image variant, for complex images as (real, imaginary) "
                             f"pairs of equal shape (object, probe; the network takes the paper's, lazy=False), "
                             f"got {len(shapes)} parameters of shapes {listed}")
        return ms.ParameterTuple(self.parameters[0::2])

    def refresh_hessian(self, diagonals):
        """Store the new estimates D (one tensor per parameter). The lazy variant stores the mean of each
        (real, imaginary) pair's, only where they are measured (> 0)."""
        if self.lazy:
            diagonals = [(re + im) / 2 for re, im in zip(diagonals[0::2], diagonals[1::2])]
        for stored, diagonal in zip(self.hessian_diagonal, diagonals):
            if self.lazy:
                diagonal = ops.select(diagonal > 0, diagonal, stored)
            ops.assign(stored, diagonal)
        return True

    def curvatures(self, gradients):
        return self.hessian_diagonal

    def root(self, corrected):
        """``corrected^(k/2)``; by square roots for k = 1 and 1/2 (CPU pow is an exp and a log, several times slower)."""
        if self.half_power == 0.5:
            return ops.sqrt(corrected)
        if self.half_power == 0.25:
            return ops.sqrt(ops.sqrt(corrected))
        return ops.pow(corrected, self.half_power)

    def precondition(self, gradients, expected_curvatures):
        """The lazy variant's directions ``m^ / (s^^(k/2) + eps) + wd p``, zero where a complex pixel does not
        move (zero gradient in both parts), one per parameter, its moments and bias corrections advanced (class
        docstring). ``expected_curvatures`` (one per (real, imaginary) pair, broadcastable): the Gauss-Newton
        diagonal in closed form, D itself with ``curvature='illumination'``, else D where no refresh measured
        it."""
        directions = []
        for k in range(len(self.curvature_moments)):
            curvature_moment, decays, curvature_decays = self.curvature_moments[k], self.moment_decays[k], \
                self.curvature_decays[k]
            params, moments, grads = self.parameters[2 * k:2 * k + 2], self.moments[2 * k:2 * k + 2], \
                gradients[2 * k:2 * k + 2]
            lit = ops.cast(ops.logical_or(grads[0] != 0, grads[1] != 0), grads[0].dtype)
            lit1, lit2 = lit * (1 - self.beta1), lit * (1 - self.beta2)
            diagonal = ops.broadcast_to(expected_curvatures[k], curvature_moment.shape)
            if self.needs_hessian:
                stored = self.hessian_diagonal[k]
                diagonal = ops.select(stored > 0, stored, diagonal)
            curvature = diagonal + self.regularisation * diagonal.max()
            new_curvature_moment = curvature_moment + lit2 * (curvature * curvature - curvature_moment)
            new_decays = decays - lit1 * decays  # beta1^n, n the pixel's own step count
            new_curvature_decays = curvature_decays - lit2 * curvature_decays
            # 1 - beta^n >= 1 - beta once a pixel moved; the floor keeps never-lit pixels (m = s = 0) at 0, not 0/0
            root = self.root(new_curvature_moment / ops.maximum(1 - new_curvature_decays, 1 - self.beta2))
            scale = lit / (ops.maximum(1 - new_decays, 1 - self.beta1) * (root + self.eps))
            for param, moment, grad in zip(params, moments, grads):
                new_moment = moment + lit1 * (grad - moment)
                direction = new_moment * scale
                directions.append(direction + lit * self.decay * param if self.decay else direction)
                ops.assign(moment, new_moment)
            ops.assign(curvature_moment, new_curvature_moment)
            ops.assign(decays, new_decays)
            ops.assign(curvature_decays, new_curvature_decays)
        return tuple(directions)

    def construct(self, gradients):
        """One step: the paper's (not lazy) from the gradients; the lazy variant's along the directions
        :meth:`precondition` made (times the solver's step lengths, with ``step_lengths``)."""
        if not self.lazy:
            return super().construct(gradients)
        lr = self.get_lr()
        for param, direction in zip(self.parameters, gradients):
            ops.assign(param, param - lr * direction)
        return True


def rademacher_like(params, rng):
    """One Rademacher (+-1) tensor per parameter, from the numpy Generator ``rng``."""
    return tuple(Tensor(rng.integers(0, 2, size=p.shape, dtype=np.int8).astype(np.float32) * 2 - 1) for p in params)


#: Built-in optimizers, contributed through the plugin hook.
BUILTIN_OPTIMIZERS = {'adam': adam, 'adamw': AdamW, 'sgd': sgd, 'lion': Lion, 'adahessian': AdaHessian}


class _GradientDot(nn.Cell):
    """``sum_k <grad_k loss(inputs), vector_k>`` over the parameters ``weights``."""

    def __init__(self, loss_cell, weights, vectors):
        super().__init__()
        self.loss_cell = loss_cell
        self.weights = weights
        self.vectors = vectors
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, *inputs):
        grads = self.grad(self.loss_cell, self.weights)(*inputs)
        total = 0.0
        for g, v in zip(grads, self.vectors):
            total = total + (g * v).sum()
        return total


class HessianVectorProduct(nn.Cell):
    """``H v`` of ``loss_cell(*inputs)`` with respect to ``weights``, by double backpropagation.

    The vectors v (one per weight, shaped like it) live in parameters set by
    :meth:`set_vectors`, so new vectors reuse the compiled graph (new tensor arguments
    each call would recompile it). ``construct(*inputs)`` returns the tuple ``H v``. Runs
    in graph mode only (MindSpore's PyNative second-order gradients are unreliable);
    AdaHessian's Hutchinson estimate uses it.
    """

    def __init__(self, loss_cell, weights):
        super().__init__()
        self.weights = ms.ParameterTuple(weights)
        self.vectors = self.weights.clone(prefix='hvp_vector', init='zeros')
        self.gradient_dot = _GradientDot(loss_cell, self.weights, self.vectors)
        self.grad = ops.GradOperation(get_by_list=True)

    def set_vectors(self, vectors):
        """Use ``vectors`` (tensors shaped like the weights) in the next products."""
        for stored, vector in zip(self.vectors, vectors):
            ops.assign(stored, vector)

    def construct(self, *inputs):
        return self.grad(self.gradient_dot, self.weights)(*inputs)
