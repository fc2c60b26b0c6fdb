"""A library of test objects for pretraining corpora and simulations (numpy, scikit-image's images).

An object is a complex transmission (Ho, Wo): amplitude in [amplitude_floor, 1] and phase in
[0, phase_range] rad, the two drawn from *different* sources, so a network cannot read the phase
off the amplitude. Sources (:data:`CLASSES`):

* ``natural``: the photographs and micrographs scikit-image ships (:data:`NATURAL_IMAGES`, all local,
  no download). matplotlib's sample images are left out on purpose: the project's MoonFlowerScan
  object is made from matplotlib's ``grace_hopper.jpg``, so MoonFlowerScan stays an unseen object;
* procedural: ``discs`` (random overlapping discs), ``lines`` (random bars), ``star`` (a Siemens star
  of random spokes), ``texture`` (smoothed noise at a random scale), ``smooth`` (a few broad Gaussian
  bumps) and ``sharp`` (random rectangles: steps).
"""
import numpy as np
from scipy.ndimage import gaussian_filter, zoom

#: scikit-image's shipped images (loaded without pooch), by their ``skimage.data`` names.
NATURAL_IMAGES = ('astronaut', 'brick', 'camera', 'cat', 'cell', 'checkerboard', 'chelsea', 'clock', 'coffee',
                  'coins', 'colorwheel', 'grass', 'gravel', 'horse', 'hubble_deep_field', 'immunohistochemistry',
                  'logo', 'microaneurysms', 'moon', 'page', 'retina', 'rocket', 'shepp_logan_phantom', 'text')


def natural(shape, rng):
    """A random crop of a random scikit-image image, grey levels in [0, 1], resized to ``shape``."""
    import skimage.data
    image = np.asarray(getattr(skimage.data, NATURAL_IMAGES[rng.integers(len(NATURAL_IMAGES))])(), float)
    if image.ndim == 3:
        image = image[..., :3].mean(-1)
    side = int(min(image.shape) * rng.uniform(0.4, 1.0))
    top, left = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
    crop = image[top:top + side, left:left + side]
    crop = zoom(crop, (shape[0] / side, shape[1] / side), order=1)[:shape[0], :shape[1]]
    return normalised(np.pad(crop, [(0, shape[0] - crop.shape[0]), (0, shape[1] - crop.shape[1])], mode='edge'))


def discs(shape, rng):
    yy, xx = np.indices(shape)
    image = np.zeros(shape)
    for _ in range(rng.integers(5, 30)):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, min(shape) / 6)
        image += rng.uniform(0.2, 1.0) * (np.hypot(yy - cy, xx - cx) < r)
    return normalised(image)


def lines(shape, rng):
    yy, xx = np.indices(shape)
    image = np.zeros(shape)
    for _ in range(rng.integers(5, 25)):
        angle, offset, width = rng.uniform(0, np.pi), rng.uniform(-1, 1) * max(shape), rng.uniform(1, 6)
        distance = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset - max(shape) / 2)
        image += rng.uniform(0.2, 1.0) * (distance < width)
    return normalised(image)


def star(shape, rng):
    yy, xx = np.indices(shape, dtype=float)
    yy -= rng.uniform(0.3, 0.7) * shape[0]
    xx -= rng.uniform(0.3, 0.7) * shape[1]
    return 0.5 * (1 + np.sign(np.sin(rng.integers(8, 40) * np.arctan2(yy, xx) + rng.uniform(0, np.pi))))


def texture(shape, rng):
    return normalised(gaussian_filter(rng.normal(size=shape), rng.uniform(0.7, 6)))


def smooth(shape, rng):
    yy, xx = np.indices(shape)
    image = np.zeros(shape)
    for _ in range(rng.integers(2, 8)):
        cy, cx, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0.1, 0.4) * min(shape)
        image += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s ** 2))
    return normalised(image)


def sharp(shape, rng):
    image = np.zeros(shape)
    for _ in range(rng.integers(3, 15)):
        top, left = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        image[top:top + rng.integers(4, shape[0] // 2), left:left + rng.integers(4, shape[1] // 2)] += rng.uniform(-1, 1)
    return normalised(image)


#: Sources of amplitude and phase maps by class name: ``make(shape, rng)`` -> float (Ho, Wo) in [0, 1].
CLASSES = {'natural': natural, 'discs': discs, 'lines': lines, 'star': star, 'texture': texture,
           'smooth': smooth, 'sharp': sharp}


def normalised(image):
    """``image`` stretched to [0, 1] (a constant image becomes 0.5)."""
    low, high = float(np.min(image)), float(np.max(image))
    return np.full(np.shape(image), 0.5) if high - low < 1e-12 else (np.asarray(image, float) - low) / (high - low)


def random_object(shape, rng, classes=tuple(CLASSES)):
    """``(object, description)``: a complex transmission (Ho, Wo) whose amplitude and phase come from two
    sources drawn from ``classes``, amplitude in [floor, 1] (floor 0.3-0.9), phase in [0, range] rad
    (range 0.3-2.0), and a dict saying which."""
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown or not classes:
        raise ValueError(f"object classes must be some of {', '.join(CLASSES)}, got {list(classes)}")
    amplitude_class, phase_class = rng.choice(list(classes)), rng.choice(list(classes))
    floor, phase_range = rng.uniform(0.3, 0.9), rng.uniform(0.3, 2.0)
    amplitude = floor + (1 - floor) * CLASSES[amplitude_class](shape, rng)
    phase = phase_range * CLASSES[phase_class](shape, rng)
    description = {'amplitude': str(amplitude_class), 'phase': str(phase_class), 'amplitude_floor': float(floor),
                   'phase_range': float(phase_range)}
    return amplitude * np.exp(1j * phase), description
