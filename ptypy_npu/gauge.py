"""What the data cannot fix about probe and object, held fixed (numpy only).

``P -> a P, O -> O / a`` and a common shift of P and O leave every model intensity unchanged, so
left alone they drift: measured at 1e5 photons, the probe amplitude grew 30 % in 15 epochs; at 1e4
photons over 600 epochs the probe walked 17 px off centre. The solver holds the probe's power at its
initial value, so the object stays on the transmission scale that the initial guess, the unlit
border and the network's free-space output share, and moves probe and object back together when
the probe's centre of mass leaves the frame centre (as PtyPy's ``probe_center_tol`` does).
"""
import numpy as np


def probe_offset(probe, tolerance):
    """The whole-pixel shift (rows, columns) that brings the centre of mass of ``sum_modes |probe|^2``
    (M, H, W) back to the frame centre, or (0, 0) while it is within ``tolerance`` px (None: never)."""
    power = (np.abs(probe) ** 2).sum(0)
    centre = np.array([np.sum(np.arange(n) * power.sum(axis=1 - axis)) for axis, n in enumerate(power.shape)])
    offset = centre / power.sum() - (np.array(power.shape) - 1) / 2
    if tolerance is None or np.hypot(*offset) <= tolerance:
        return 0, 0
    return tuple(int(v) for v in -np.round(offset))


def fixed_gauge(probe, obj, object_shape, power, tolerance):
    """``(probe, obj)``: probe (M, H, W) scaled to ``sum |P|^2 = power`` and the flat object (Ho * Wo,) of
    shape ``object_shape`` by the inverse factor, both moved by :func:`probe_offset` (whole pixels; the
    object's margin is unlit, so what wraps round its edge is of no account)."""
    factor = np.sqrt(power / float(np.sum(np.abs(probe) ** 2)))
    shift = probe_offset(probe, tolerance)
    probe = np.roll(probe * factor, shift, axis=(-2, -1))
    obj = np.roll(np.reshape(obj, object_shape) / factor, shift, axis=(0, 1))
    return probe, obj.reshape(-1)
