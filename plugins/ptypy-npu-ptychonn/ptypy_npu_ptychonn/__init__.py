"""PtychoNN (Cherukara et al. 2020) as a ptypy-npu network plugin.

Input: normalised diffraction amplitudes (B, 1, H, W) with ``H / binning == 64``.
Output: ``(log_amplitude, phase)``, each (B, H, W): amplitude from a sigmoid (0..1,
a transmission), phase ``pi * tanh``.
"""
import math

import mindspore.nn as nn
import mindspore.ops as ops
from ptypy_npu.hookspecs import hookimpl
from ptypy_npu.networks import bin_frames

#: The input size PtychoNN was designed for, in (binned) detector pixels.
INPUT_SIZE = 64


def _double_conv(in_channels, out_channels, stride):
    return [nn.Conv2d(in_channels, out_channels, 3, pad_mode='same', has_bias=True), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, pad_mode='same', has_bias=True), nn.ReLU()]


class PtychoNN(nn.Cell):
    """Encoder (``depth`` stride-2 stages) and two decoders back to the full frame."""

    def __init__(self, frame_size, depth=3, width=32, binning=1):
        super().__init__()
        if binning not in (1, 2, 4) or frame_size != INPUT_SIZE * binning:
            raise ValueError(f"PtychoNN takes {INPUT_SIZE}x{INPUT_SIZE} inputs: frame size {frame_size} needs "
                             f"network.binning = {frame_size / INPUT_SIZE:g} (1, 2 or 4), got {binning}")
        if not isinstance(depth, int) or not 1 <= depth <= 4:
            raise ValueError(f"network.depth must be 1..4 for PtychoNN, got {depth!r}")
        self.binning = binning
        channels = [min(width * 2 ** k, 4 * width) for k in range(depth + 1)]
        encoder = _double_conv(1, channels[0], 2)
        for k in range(depth - 1):
            encoder += _double_conv(channels[k], channels[k + 1], 2)
        self.encoder = nn.SequentialCell(encoder)
        self.amplitude_decoder = self._decoder(channels[:depth], depth + int(math.log2(binning)))
        self.phase_decoder = self._decoder(channels[:depth], depth + int(math.log2(binning)))
        self.sigmoid = ops.Sigmoid()
        self.tanh = ops.Tanh()

    @staticmethod
    def _decoder(channels, upsamplings):
        layers = []
        current = channels[-1]
        for k in range(upsamplings):
            nxt = channels[max(len(channels) - 2 - k, 0)]
            layers += [nn.Conv2d(current, nxt, 3, pad_mode='same', has_bias=True), nn.ReLU(),
                       nn.Conv2dTranspose(nxt, nxt, 4, stride=2, pad_mode='same', has_bias=True), nn.ReLU()]
            current = nxt
        layers.append(nn.Conv2d(current, 1, 3, pad_mode='same', has_bias=True))
        return nn.SequentialCell(layers)

    def construct(self, amplitudes):
        features = self.encoder(bin_frames(amplitudes, self.binning))
        log_amplitude = ops.log(self.sigmoid(self.amplitude_decoder(features).squeeze(1)) + 1e-6)
        phase = 3.14159265 * self.tanh(self.phase_decoder(features).squeeze(1))
        return log_amplitude, phase


@hookimpl
def ptypy_npu_networks():
    return {'PtychoNN': PtychoNN}
