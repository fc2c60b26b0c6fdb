"""Optimizers for the network, object and probe parameter groups.

Each optimizer is a ``mindspore.nn.Optimizer`` built by a factory
``factory(params, learning_rate, **settings)`` and contributed through the
``ptypy_npu_optimizers`` hook, so engines pick any of them by name. The object and
probe are real/imag pairs of float tensors: every optimizer acts on the real and
imaginary parts as separate parameters.
"""
import mindspore as ms
from mindspore import nn, ops


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


def adamw(params, learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """MindSpore's AdamWeightDecay (Loshchilov & Hutter 2019): decoupled weight decay."""
    check_betas('betas', betas)
    return nn.AdamWeightDecay(params, learning_rate=learning_rate, beta1=betas[0], beta2=betas[1],
                              eps=eps, weight_decay=weight_decay)


def sgd(params, learning_rate, momentum=0.0, weight_decay=0.0):
    """MindSpore's SGD. With the solver's illumination normalisation this is ePIE-like."""
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return nn.SGD(params, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)


#: Built-in optimizers, contributed through the plugin hook.
BUILTIN_OPTIMIZERS = {'adam': adam, 'adamw': adamw, 'sgd': sgd}


class _GradientDot(nn.Cell):
    """``sum_k <grad_k loss(inputs), vector_k>`` over the parameters ``weights``."""

    def __init__(self, loss_cell, weights):
        super().__init__()
        self.loss_cell = loss_cell
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, vectors, *inputs):
        grads = self.grad(self.loss_cell, self.weights)(*inputs)
        total = 0.0
        for g, v in zip(grads, vectors):
            total = total + (g * v).sum()
        return total


class HessianVectorProduct(nn.Cell):
    """``H v`` of ``loss_cell(*inputs)`` with respect to ``weights``, by double backpropagation.

    ``construct(vectors, *inputs)`` takes one vector per weight (a tuple of tensors shaped
    like the weights) and returns the tuple ``H v``. Runs in graph mode only (MindSpore's
    PyNative second-order gradients are unreliable); AdaHessian's Hutchinson estimate uses it.
    """

    def __init__(self, loss_cell, weights):
        super().__init__()
        self.weights = ms.ParameterTuple(weights)
        self.gradient_dot = _GradientDot(loss_cell, self.weights)
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, vectors, *inputs):
        return self.grad(self.gradient_dot, self.weights)(vectors, *inputs)
