"""Networks that map diffraction amplitudes to object patches.

Every network takes normalised diffraction frames (B, C, H, W) float32 (:func:`network_input`;
C = 1, or 3 for a network whose ``input_kind`` is 'holographic') and returns the object patch those
frames saw as ``(log_amplitude, phase)``, each (B, H, W), so the patch is
``exp(log_amplitude) * exp(i phase)``: any transmission, and a phase that the network does not need
to unwrap.

Only layers with second-order gradients in MindSpore's graph mode are used (strided
convolutions, transposed convolutions, BatchNorm, LeakyReLU/Tanh): no pooling, no
``nn.Upsample``, no GroupNorm, so AdaHessian can train them (docs/ARCHITECTURE.md, MindSpore facts).
"""
import dataclasses
import math

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype

from .guesses import patch_estimates
from .settings import NETWORK_DECODERS, NETWORK_INPUTS

#: Frame sizes (detector pixels per side) the built-in networks are designed for.
FRAME_SIZES = (64, 128, 256)


def _conv_block(in_channels, out_channels, stride):
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, pad_mode='same', has_bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2)]


def _upsample_block(in_channels, out_channels):
    return [nn.Conv2dTranspose(in_channels, out_channels, 4, stride=2, pad_mode='same', has_bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2)]


@dataclasses.dataclass
class NetworkExport:
    """A trained network and what is needed to use it on other scans (:mod:`ptypy_npu.models` saves it)."""
    network: nn.Cell
    settings: dict          # the network's name and options
    frame_shape: tuple      # (H, W) detector pixels
    input_scale: float      # network input normalisation (:func:`~ptypy_npu.networks.network_input`)
    probe: np.ndarray       # (M, H, W) complex, the probe it was trained with
    geometry: dict          # of the training scan (ScanData.geometry)
    training: dict          # frames, epochs, loss


#: Holographic channels are clipped to +-this: where the probe is dark the estimate is noise.
ESTIMATE_CLIP = 2.0
#: Frames per chunk of the patch estimates (their FFTs take complex copies of the frames).
ESTIMATE_CHUNK = 256


def network_input(intensities, scale, estimates=None):
    """The networks' input (N, C, H, W) float32 of intensities (N, H, W): channel 0 is ``log1p(I) / scale``;
    with ``estimates`` (N, H, W) complex patches, channels 1 and 2 are their real part minus 1 and their
    imaginary part (clipped to +-:data:`ESTIMATE_CLIP`).

    The logarithm compresses the dynamic range of diffraction; ``scale`` is the maximum of
    ``log1p(I)`` over the training scan and travels with a trained model, so new scans are
    normalised as the training scan was.
    """
    intensities = np.asarray(intensities, np.float32)
    inputs = np.empty((len(intensities), 1 if estimates is None else 3) + intensities.shape[1:], np.float32)
    np.add(intensities, 1, out=inputs[:, 0])  # log(1 + I), not np.log1p: 7x faster in float32, the same to 1e-7
    np.log(inputs[:, 0], out=inputs[:, 0])
    inputs[:, 0] /= scale
    if estimates is not None:
        np.clip(estimates.real - 1, -ESTIMATE_CLIP, ESTIMATE_CLIP, out=inputs[:, 1])
        np.clip(estimates.imag, -ESTIMATE_CLIP, ESTIMATE_CLIP, out=inputs[:, 2])
    return inputs


def inputs_for(network, intensities, scale, probe, propagator=None):
    """The input (N, C, H, W) that ``network`` takes (its ``input_kind``, 'diffraction' when it has none) of
    frames (N, H, W) photons, for the holographic kind with the probe (M, H, W) and PtyPy's ``propagator``
    factors (None: the centred FFT)."""
    if getattr(network, 'input_kind', 'diffraction') == 'diffraction':
        return network_input(intensities, scale)
    return np.concatenate([network_input(frames, scale, patch_estimates(frames, probe, propagator))
                           for frames in np.split(np.asarray(intensities), range(ESTIMATE_CHUNK, len(intensities),
                                                                                  ESTIMATE_CHUNK))])


#: :class:`PatchPredictor` batch sizes are multiples of this (fewer distinct shapes, fewer graph compiles).
BATCH_QUANTUM = 8


class PatchPredictor:
    """Complex object patches (N, H, W) complex64 that a network predicts from inputs (N, C, H, W), in one pass.

    Inference mode (BatchNorm's running statistics), so a frame's patch does not depend on the other frames
    of its batch (the network's mode is restored after). The N frames go in batches of one shape: at most
    ``batch_size``, evened out over the batches and rounded up to a multiple of :data:`BATCH_QUANTUM` (the
    last batch padded), so few frames are computed in vain and calls of other N reuse few compiled graphs
    (at most ``batch_size / BATCH_QUANTUM``). The graph of a holographic network with a ``decode`` method
    (as :class:`W1Network`) stops at its decoders, and their correction multiplies the estimate (input
    channels 1 and 2) here, in float32 numpy: on a CPU the network's own log/atan2 tail and a complex
    exponential would cost as much as the light network itself.
    """

    def __init__(self, network):
        self.network = network
        self.corrects_estimate = getattr(network, 'input_kind', 'diffraction') == 'holographic' and \
            hasattr(network, 'decode')
        self.graph = _Decoders(network) if self.corrects_estimate else network

    def __call__(self, inputs, batch_size=64):
        n = len(inputs)
        if n == 0:
            raise ValueError("no frames to predict patches of")
        training = self.network.training
        self.graph.set_train(False)
        batches = -(-n // batch_size)
        batch_size = min(batch_size, BATCH_QUANTUM * -(-n // (batches * BATCH_QUANTUM)))
        patches = np.empty((n,) + inputs.shape[2:], np.complex64)
        for start in range(0, n, batch_size):
            batch = inputs[start:start + batch_size]
            padded = batch if len(batch) == batch_size else \
                np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
            log_amplitude, phase = (output.asnumpy()[:len(batch)].astype(np.float32, copy=False)
                                    for output in self.graph(Tensor(padded)))  # float16 networks too
            magnitude = np.exp(log_amplitude)
            real, imag = magnitude * np.cos(phase), magnitude * np.sin(phase)
            if self.corrects_estimate:  # times the estimate (1 + channel 1) + i channel 2
                estimate_re, estimate_im = 1 + batch[:, 1], batch[:, 2]
                real, imag = estimate_re * real - estimate_im * imag, estimate_re * imag + estimate_im * real
            patches[start:start + batch_size].real, patches[start:start + batch_size].imag = real, imag
        self.graph.set_train(training)  # a training network goes on training
        return patches


class _Decoders(nn.Cell):
    """The graph of a network's ``decode`` (a holographic W1Network's correction of its estimate)."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)
        self.network = network

    def construct(self, inputs):
        return self.network.decode(inputs)


def network_weights(network):
    """{name relative to ``network``: Parameter} of all its weights and BatchNorm statistics.

    Relative names stay the same wherever the network is attached (a Parameter's own name
    gains the prefix of the cell that holds it), so they pair the weights of two networks.
    """
    return dict(network.parameters_and_names())


def copy_weights(values, network):
    """Set ``network``'s weights from ``values`` ({relative name: Tensor or array}); all must be given."""
    weights = network_weights(network)
    missing = sorted(set(weights) - set(values))
    if missing:
        raise ValueError(f"weights for {type(network).__name__} lack {missing[:5]}")
    for name, param in weights.items():
        value = values[name]
        ops.assign(param, value if isinstance(value, Tensor) else Tensor(value))


def set_compute_precision(network, dtype):
    """Make ``network`` compute in ``dtype`` (mindspore.float16 or bfloat16), in place.

    Its weights stay float32 (the master copy the optimizers update); every layer casts
    its inputs and weights to ``dtype``, except BatchNorm, whose statistics and
    normalisation stay float32 (MindSpore's "O2" mixed-precision level). Done in place
    rather than by ``mindspore.amp.auto_mixed_precision``, whose wrappers rename the
    weights: these keep their names, so models and checkpoints move between precisions.
    """
    network.to_float(dtype)
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.to_float(mstype.float32)
    return network


def bin_frames(amplitudes, binning):
    """Sum ``binning x binning`` pixel blocks of (B, C, H, W) frames -> (B, C, H/binning, W/binning).

    A per-channel convolution with a kernel of ones at stride ``binning``: on the CPU 4-5x faster than the
    equivalent reshape and sum (8 against 38 ms for 161 x 3 x 128 x 128 frames at binning 4)."""
    if binning == 1:
        return amplitudes
    channels = amplitudes.shape[1]
    kernel = ops.ones((channels, 1, binning, binning), amplitudes.dtype)
    return ops.conv2d(amplitudes, kernel, stride=binning, groups=channels)


def check_network_geometry(frame_size, depth, binning):
    """Raise ``ValueError`` naming the parameter when the network cannot take ``frame_size``."""
    if not isinstance(frame_size, int) or frame_size <= 0:
        raise ValueError(f"frame size must be a positive integer, got {frame_size!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"network.depth must be an integer >= 1, got {depth!r}")
    if binning not in (1, 2, 4):
        raise ValueError(f"network.binning must be 1, 2 or 4, got {binning!r}")
    factor = binning * 2 ** depth
    if frame_size % factor:
        raise ValueError(
            f"frame size {frame_size} px cannot be taken by a network with network.depth={depth} and "
            f"network.binning={binning}: it must be a multiple of binning * 2**depth = {factor} "
            f"(designed for {', '.join(map(str, FRAME_SIZES))}; crop or bin the frames)")


class W1Network(nn.Cell):
    """Encoder of strided convolutions, decoders (log-amplitude, phase) of transposed convolutions.

    Parameters
    ----------
    frame_size : int
        Detector frame side H = W in pixels (64, 128 or 256; any multiple of
        ``binning * 2**depth`` works).
    depth : int
        Number of stride-2 encoder stages; the bottleneck is ``H / binning / 2**depth`` px.
    width : int
        Channels of the first encoder stage; doubled per stage, capped at ``8 * width``.
    binning : int
        Sum ``binning x binning`` detector pixels before the encoder (1, 2, 4), for large
        detectors; the decoders still return full-size (H, W) patches.
    input : str
        ``'diffraction'`` (one channel, the frames) or ``'holographic'`` (three: the frames and their
        patch estimates, :func:`network_input`); the network's ``input_kind``. A holographic network
        learns a correction of the estimate: its log-amplitude and phase are added to the estimate's,
        so before any training it returns the estimate itself.
    decoder : str
        ``'twin'``: two decoders (log-amplitude, phase), each ending in a normalised, activated
        full-resolution stage and a 3x3 convolution. ``'light'``: one decoder for both, whose last
        transposed convolution gives the two outputs at full resolution directly; for fast inference,
        since on a CPU the full-resolution layers cost most of the time.

    The defaults are the settings' (:class:`ptypy_npu.settings.Network`).
    """

    def __init__(self, frame_size, depth=3, width=8, binning=2, input='diffraction', decoder='twin'):
        super().__init__()
        check_network_geometry(frame_size, depth, binning)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"network.width must be an integer >= 1, got {width!r}")
        if input not in NETWORK_INPUTS:
            raise ValueError(f"network.input must be one of {', '.join(NETWORK_INPUTS)}, got {input!r}")
        if decoder not in NETWORK_DECODERS:
            raise ValueError(f"network.decoder must be one of {', '.join(NETWORK_DECODERS)}, got {decoder!r}")
        self.frame_size = frame_size
        self.binning = binning
        self.input_kind = input
        self.light = decoder == 'light'
        channels = [min(width * 2 ** k, 8 * width) for k in range(depth + 1)]
        encoder = _conv_block(1 if input == 'diffraction' else 3, channels[0], 1)
        for k in range(depth):
            encoder += _conv_block(channels[k], channels[k + 1], 2)
        self.encoder = nn.SequentialCell(encoder)
        upsamplings = depth + int(math.log2(binning))
        if self.light:
            layers, current = self._upsamplings(channels, upsamplings - 1)
            self.decoder = nn.SequentialCell(layers + [nn.Conv2dTranspose(
                current, 2, 4, stride=2, pad_mode='same', has_bias=True, weight_init='zeros', bias_init='zeros')])
        else:
            def head():
                layers, current = self._upsamplings(channels, upsamplings)
                return nn.SequentialCell(layers + [nn.Conv2d(current, 1, 3, pad_mode='same', has_bias=True,
                                                             weight_init='zeros', bias_init='zeros')])
            self.amplitude_decoder, self.phase_decoder = head(), head()
        self.tanh = ops.Tanh()

    @staticmethod
    def _upsamplings(channels, count):
        """``count`` upsampling blocks from the bottleneck (channels[-1]) on, and the channels they end with."""
        layers = []
        current = channels[-1]
        for k in range(count):
            nxt = channels[max(len(channels) - 2 - k, 0)]
            layers += _upsample_block(current, nxt)
            current = nxt
        return layers, current

    def decode(self, amplitudes):
        """(B, C, H, W) network input -> the decoders' (log_amplitude, phase), each (B, H, W): the patch of a
        diffraction network, the correction of the estimate of a holographic one."""
        features = self.encoder(bin_frames(amplitudes, self.binning))
        if self.light:
            outputs = self.decoder(features)
            return outputs[:, 0:1].squeeze(1), 3.14159265 * self.tanh(outputs[:, 1:2].squeeze(1))
        return (self.amplitude_decoder(features).squeeze(1),
                3.14159265 * self.tanh(self.phase_decoder(features).squeeze(1)))

    def construct(self, amplitudes):
        """(B, C, H, W) network input -> (log_amplitude, phase), each (B, H, W)."""
        log_amplitude, phase = self.decode(amplitudes)
        if self.input_kind == 'holographic':  # the estimate 1 + (re, im) of channels 1 and 2, corrected
            # (ranges, not integer indices: on the CPU x[:, 1] cost 80x x[:, 1:2], 112 against 1.4 ms for
            # 161 frames of 3 x 128 x 128; the predictor's product with the estimate drops the 1e-6 below)
            estimate_re, estimate_im = 1.0 + amplitudes[:, 1:2].squeeze(1), amplitudes[:, 2:3].squeeze(1)
            log_amplitude = log_amplitude + 0.5 * ops.log(ops.square(estimate_re) + ops.square(estimate_im) + 1e-6)
            phase = phase + ops.atan2(estimate_im, estimate_re)
        return log_amplitude, phase
