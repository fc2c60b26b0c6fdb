"""One ptychographic scan as plain numpy arrays: what every reader, simulator and solver shares.

No MindSpore, no PtyPy: the PtyPy engine, the file readers and the simulator all produce a
:class:`ScanData`, and the solver takes one.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass
class ScanData:
    """One ptychographic scan as arrays.

    intensities : (N, H, W) float, measured photons per pixel, zero frequency in the
        frame centre (PtyPy's convention).
    positions : (N, 2) int, top-left object pixel (row, column) of each frame's patch.
    probe : (M, H, W) complex, probe modes; scaled so ``|F(P O)|^2`` is in photons.
    obj : (Ho, Wo) complex, initial object.
    mask : (N, H, W) bool or None (all valid); False marks dead or saturated pixels.
    propagator : (pre, post) complex (H, W) phase factors (PtyPy's ``pre_fft``,
        ``post_fft``), or None for the centred FFT.
    geometry : dict of what is known of ``wavelength``, ``distance`` (sample-detector),
        ``detector_pixel`` and ``object_pixel``, all in metres; empty when unknown.
    """
    intensities: np.ndarray
    positions: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    mask: np.ndarray = None
    propagator: tuple = None
    geometry: dict = dataclasses.field(default_factory=dict)

    @property
    def frame_shape(self):
        return tuple(np.shape(self.intensities)[1:])

    def frames(self, chosen):
        """The scan of the frames ``chosen`` (indices or a bool mask), same object, probe and geometry."""
        mask = None if self.mask is None else np.asarray(self.mask)[chosen]
        return dataclasses.replace(self, intensities=np.asarray(self.intensities)[chosen],
                                   positions=np.asarray(self.positions)[chosen], mask=mask)

    def photon_sums(self):
        """``(measured, modelled)`` photons of all frames: ``sum_j sum I_j`` and ``sum_j sum |P O_j|^2`` of the
        probe and initial object (Parseval: the far field keeps the exit waves' power)."""
        probe = np.asarray(self.probe)
        power = (np.abs(probe.reshape((-1,) + probe.shape[-2:])) ** 2).sum(0)
        object_power = (np.abs(np.asarray(self.obj).ravel()[patch_indices(self.positions, power.shape,
                                                                          np.shape(self.obj))]) ** 2).sum(0)
        return float(np.sum(self.intensities, dtype=np.float64)), float(np.sum(power * object_power))

    def photon_scaled_probe(self, sums=None):
        """The probe (M, H, W) scaled so that the model of the initial object carries the measured photons
        (:meth:`photon_sums`, or the given ``sums``, e.g. of all processes' frames). Probes from files or
        other codes come on any scale; an object of transmission ~1 then needs this one."""
        measured, modelled = self.photon_sums() if sums is None else sums
        return np.asarray(self.probe) * np.sqrt(measured / modelled)

    def validate(self):
        """Raise ``ValueError`` naming the array and what was expected; return a normalised copy
        (float32 intensities, bool mask, (M, H, W) probe, int64 positions)."""
        intensities = np.asarray(self.intensities)
        if intensities.ndim != 3 or intensities.shape[0] == 0:
            raise ValueError(f"intensities must be a non-empty (N, H, W) stack, got shape {intensities.shape}")
        n, h, w = intensities.shape
        if h % 2 or w % 2:
            raise ValueError(f"intensities: frames must have an even number of pixels per side, got {h} x {w}")
        if not np.all(np.isfinite(intensities)) or intensities.min() < 0:
            raise ValueError("intensities must be finite and >= 0 (photon counts)")
        mask = np.ones_like(intensities, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool)
        if mask.shape != intensities.shape:
            raise ValueError(f"mask must have the shape of the intensities {intensities.shape}, got {mask.shape}")
        empty = np.flatnonzero(mask.sum(axis=(1, 2)) == 0)
        if empty.size:
            raise ValueError(f"mask: frames {empty[:10].tolist()} are entirely masked; drop them from the scan")
        dark = np.flatnonzero((intensities * mask).sum(axis=(1, 2)) == 0)
        if dark.size:
            raise ValueError(f"intensities: frames {dark[:10].tolist()} hold no photons; drop them from the scan")
        probe = np.asarray(self.probe)
        probe = probe[None] if probe.ndim == 2 else probe
        if probe.ndim != 3 or probe.shape[1:] != (h, w):
            raise ValueError(f"probe must be (modes, {h}, {w}) to match the frames, got shape {np.shape(self.probe)}")
        if not np.all(np.isfinite(probe)) or not np.any(probe):
            raise ValueError("probe must be finite and not all zero")
        obj = np.asarray(self.obj)
        if obj.ndim != 2 or obj.shape[0] < h or obj.shape[1] < w:
            raise ValueError(f"obj must be a 2D array at least one frame ({h} x {w}) large, got shape {obj.shape}")
        positions = np.asarray(self.positions)
        if positions.shape != (n, 2) or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be ({n}, 2) integer object pixels, got {positions.shape} {positions.dtype}")
        outside = np.flatnonzero((positions < 0).any(1) | (positions[:, 0] + h > obj.shape[0])
                                 | (positions[:, 1] + w > obj.shape[1]))
        if outside.size:
            raise ValueError(f"positions: frames {outside[:10].tolist()} reach outside the object {obj.shape}")
        if self.propagator is not None and any(np.shape(f) != (h, w) for f in self.propagator):
            raise ValueError(f"propagator factors must be two ({h}, {w}) arrays, "
                             f"got {[np.shape(f) for f in self.propagator]}")
        return dataclasses.replace(self, intensities=intensities.astype(np.float32), mask=mask, probe=probe,
                                   obj=obj, positions=positions.astype(np.int64))


#: Object pixels kept free around the scanned area.
OBJECT_MARGIN = 8


def object_grid(positions, frame_shape, margin=OBJECT_MARGIN):
    """Top-left object pixels (N, 2) int of ``positions`` (N, 2) float px, rounded and moved
    ``margin`` from the edge, and the object shape (Ho, Wo) that holds every frame plus the margin."""
    positions = np.asarray(positions, float)
    pixels = np.round(positions - positions.min(0)).astype(np.int64) + margin
    return pixels, tuple(int(v) for v in pixels.max(0) + np.asarray(frame_shape) + margin)


def patch_indices(positions, frame_shape, object_shape):
    """Flat object indices (N, H, W) int32 of the pixels each frame illuminates."""
    h, w = frame_shape
    rows = np.asarray(positions)[:, 0, None, None] + np.arange(h)[None, :, None]
    cols = np.asarray(positions)[:, 1, None, None] + np.arange(w)[None, None, :]
    return (rows * object_shape[1] + cols).astype(np.int32)


def add_patches(patches, positions, object_shape):
    """Patches (N, H, W) summed into an (Ho, Wo) array at ``positions`` (N, 2) top-left object pixels,
    which must lie within it; a single (H, W) patch is used for every frame. Real or complex, as the patches."""
    patches = np.asarray(patches)
    h, w = patches.shape[-2:]
    total = np.zeros(object_shape, np.result_type(patches.dtype, np.float64))
    for frame, (row, col) in enumerate(np.asarray(positions)):  # a frame's slice: ~8x as fast as np.add.at
        total[row:row + h, col:col + w] += patches if patches.ndim == 2 else patches[frame]
    return total


def illumination(probe, positions, object_shape):
    """Summed probe intensity (Ho, Wo) of the frames at ``positions`` (N, 2) top-left object pixels;
    ``probe`` is (M, H, W) or (H, W) complex."""
    power = np.abs(np.asarray(probe)) ** 2
    return add_patches(power.sum(0) if power.ndim == 3 else power, positions, object_shape)


#: Object pixels a scan lights with less than this fraction of its brightest illumination: its data
#: barely determine them (see :func:`neutral_where_weakly_lit`).
WEAKLY_LIT = 0.01


def neutral_where_weakly_lit(obj, illumination, fraction=WEAKLY_LIT):
    """``(obj, count)``: the object (Ho, Wo) complex set to its typical transmission where the ``illumination``
    (Ho, Wo) is below ``fraction`` of its maximum, and the number of such pixels (unlit ones, 0, excepted:
    they touch no frame). The typical transmission is the median amplitude of the pixels lit at least that
    well, with the phase of their sum: not 1, since PtyPy's default start has a phase of its own (-3.1 rad
    for its default sample) and DM and ePIE keep the phase they started from. An object handed over by
    another engine holds noise where the scan lights it weakly, which projection engines amplify (DM and
    ePIE divide by the illumination); steps normalised by ``illumination + delta * max`` leave it slowly,
    while it still spoils the frames at the scan's edge."""
    weak = (illumination > 0) & (illumination < fraction * illumination.max())
    well = illumination >= fraction * illumination.max()
    typical = np.median(np.abs(obj[well])) * np.exp(1j * np.angle(obj[well].sum()))
    return np.where(weak, typical, obj).astype(np.result_type(obj, np.complex64)), int(weak.sum())


def combine(scans, truths=None):
    """Several scans of one instrument as one: their objects side by side in one array (each in its own
    region, a column band of the width of its object), positions moved into their regions, frames and
    masks stacked; probe, propagator and geometry those of the first scan. With ``truths`` (one complex
    object per scan, on its scan's grid), also the truths placed alike. Returns ``(ScanData, truth or
    None, first columns)``."""
    shapes = {s.frame_shape for s in scans}
    if len(shapes) != 1:
        raise ValueError(f"scans to combine must share their frame shape, got {sorted(shapes)}")
    height = max(np.shape(s.obj)[0] for s in scans)
    starts = np.cumsum([0] + [np.shape(s.obj)[1] for s in scans])
    obj = np.ones((height, int(starts[-1])), complex)
    truth = None if truths is None else np.ones_like(obj)
    for k, s in enumerate(scans):
        h, w = np.shape(s.obj)
        obj[:h, starts[k]:starts[k] + w] = s.obj
        if truth is not None:
            truth[:h, starts[k]:starts[k] + w] = truths[k]
    masks = [np.ones(np.shape(s.intensities), bool) if s.mask is None else np.asarray(s.mask, bool) for s in scans]
    combined = ScanData(intensities=np.concatenate([np.asarray(s.intensities, np.float32) for s in scans]),
                        positions=np.concatenate([np.asarray(s.positions) + [0, starts[k]] for k, s in enumerate(scans)]),
                        probe=scans[0].probe, obj=obj, mask=np.concatenate(masks), propagator=scans[0].propagator,
                        geometry=dict(scans[0].geometry))
    return combined, truth, starts[:-1]
