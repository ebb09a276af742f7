"""Built-in procedural lesion dataset: seeded, no download, the default for the demo and tests.

Each image is an endoscopy-like RGB scene: tissue colour under uneven illumination, two scales
of smoothed-noise texture and thin vessel-like streaks (zero crossings of a smoothed noise
field). One to three small irregular lesions (perturbed ellipses with a noisy rim) are blended
in with a shifted colour, a finer grain, dome shading and fewer vessels. Specular highlights are
scattered over lesion and background alike so that "bright" alone does not mean "lesion".

Lesion area: the total lesion fraction of an image is log-uniform in [0.8 %, 11 %] (about 96 %
of images below 10 %, about 40 % within 1-3 %), split among the lesions.

Image ``index`` under ``seed`` depends on nothing else (``numpy.random.default_rng([seed,
index])``), so a dataset of N images is a prefix of one with more, and test images can be taken
from indices after the training ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from laworder.data.io import write_image, write_mask
from laworder.errors import ConfigError, DataError

GENERATOR_VERSION = 1
AREA_RANGE = (0.008, 0.11)
MAX_IMAGES = 1_000_000  # a bound on a typo (2**70 built a list of stems until memory ran out)
MAX_CLASSES = 256  # label maps are 8-bit PNGs: class values 0..255
GENERATOR_ARRAYS = 24  # float64 size×size arrays alive at once while one image is drawn (measured: < 20)


def check_procedural_args(num_images: int, size: int, seed: int, num_classes: int = 2, start_index: int = 0,
                          where: str = "procedural") -> None:
    """Every argument of ``generate_procedural`` in range, before anything is allocated or written.

    Raises:
        ConfigError: naming the argument, its value and the accepted range.
    """
    from laworder.config import check_seed
    from laworder.resources import check_fits

    for name, value in (("num_images", num_images), ("size", size), ("num_classes", num_classes),
                        ("start_index", start_index)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    if not 1 <= num_images <= MAX_IMAGES:
        raise ConfigError(f"{where}: num_images={num_images} is out of range; accepted: 1 .. {MAX_IMAGES}")
    if size < 16:
        raise ConfigError(f"procedural images need size >= 16, got {size}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"{where}: classes={num_classes} is out of range; accepted: 2 (binary masks) .. "
                          f"{MAX_CLASSES} (8-bit label maps), background included")
    if start_index < 0:
        raise ConfigError(f"{where}: start_index must be >= 0, got {start_index}")
    check_seed(f"{where}: seed", seed)
    check_fits(f"{where}: one {size}×{size} image", GENERATOR_ARRAYS * 8 * size * size, "Lower the size")
# RGB tints of lesion kinds 1, 2, ... in multi-class datasets (kind 1 keeps the binary look).
CLASS_TINTS = ((0.0, 0.0, 0.0), (-0.30, 0.12, 0.28), (0.05, 0.30, -0.20), (0.25, -0.20, 0.25))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _lesion_shape(rng: np.random.Generator, size: int, area_px: float) -> np.ndarray:
    """A perturbed ellipse of about ``area_px`` pixels with a noisy rim."""
    aspect = rng.uniform(0.55, 1.0)
    radius_x = max(np.sqrt(area_px / (np.pi * aspect)), 2.0)
    radius_y = max(radius_x * aspect, 2.0)
    margin = max(radius_x, radius_y) + 2
    low, high = min(margin, size / 2), max(size - margin, size / 2)
    centre_y, centre_x = rng.uniform(low, high, size=2)
    angle = rng.uniform(0, np.pi)
    lobes = [(rng.uniform(0.0, 0.24 / k), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    rim_noise = _smooth_noise(rng, size, sigma=max(size / 64, 1.0))
    # Only a box around the centre can be inside (lobes + rim noise stay well below 1.8x radius).
    reach = int(1.8 * max(radius_x, radius_y)) + 3
    top, left = max(int(centre_y) - reach, 0), max(int(centre_x) - reach, 0)
    box = (slice(top, min(int(centre_y) + reach + 1, size)), slice(left, min(int(centre_x) + reach + 1, size)))
    yy, xx = np.mgrid[box].astype(np.float32)
    dy, dx = yy - centre_y, xx - centre_x
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius_x
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius_y
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    boundary = np.ones_like(phi)
    for k, (amplitude, phase) in enumerate(lobes, start=2):  # low-order lobes: irregular but blob-like
        boundary += amplitude * np.cos(k * phi + phase)
    shape = np.zeros((size, size), dtype=bool)
    shape[box] = rho < boundary + 0.12 * rim_noise[box]
    return shape


def procedural_pair(index: int, size: int = 128, seed: int = 0, num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the procedural dataset: ``(uint8 size×size×3, bool size×size)``.

    ``num_classes`` > 2 (background included) returns a ``uint8`` label map instead of the bool
    mask: each lesion gets a kind 1..K-1 (drawn from a separate stream, so the geometry equals the
    binary image's) with its own colour tint (``CLASS_TINTS``). ``num_classes=2`` is the binary
    dataset, unchanged.
    """
    check_procedural_args(1, size, seed, num_classes, index)
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ny, nx = yy / size * 2 - 1, xx / size * 2 - 1

    # Tissue under a light source: radial fall-off plus a tilt.
    tissue = np.array([rng.uniform(0.62, 0.85), rng.uniform(0.28, 0.45), rng.uniform(0.25, 0.40)])
    light_y, light_x = rng.uniform(-0.5, 0.5, size=2)
    illumination = 1.0 - 0.35 * ((ny - light_y) ** 2 + (nx - light_x) ** 2) / 2 + 0.1 * rng.uniform(-1, 1) * nx
    texture = 0.05 * _smooth_noise(rng, size, size / 16) + 0.03 * _smooth_noise(rng, size, size / 48)
    vessels = np.exp(-((_smooth_noise(rng, size, size / 20) / 0.09) ** 2))
    image = tissue[None, None, :] * (illumination + texture)[..., None]

    # Lesions: total area log-uniform in AREA_RANGE, split between 1-3 blobs.
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    total_area = np.exp(rng.uniform(np.log(AREA_RANGE[0]), np.log(AREA_RANGE[1])))
    shares = 0.5 / count + 0.5 * rng.dirichlet(np.full(count, 2.0))  # no lesion below half a fair share
    mask = np.zeros((size, size), dtype=bool)
    kinds = np.random.default_rng([seed, index, 1]).integers(1, num_classes, size=count) if num_classes > 2 else None
    labels = np.zeros((size, size), dtype=np.uint8)
    for lesion, share in enumerate(shares):
        shape = _lesion_shape(rng, size, total_area * share * size * size)
        mask |= shape
        if kinds is not None:
            labels[shape] = kinds[lesion]

    # Lesion look: shifted colour, a finer grain and dome shading (brighter towards the centre).
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.07, 0.16) / np.linalg.norm(shift)
    depth = ndimage.distance_transform_edt(mask)
    dome = depth / (depth.max() + 1e-8)
    grain = 0.07 * _smooth_noise(rng, size, 0.7)
    colour = (tissue + shift)[None, None, :]
    if kinds is not None:  # the lesion kind shows as a colour tint
        tints = np.array([(0.0, 0.0, 0.0)] + [CLASS_TINTS[(k - 1) % len(CLASS_TINTS)] for k in range(1, num_classes)])
        colour = colour + ndimage.gaussian_filter(tints[labels], (0.8, 0.8, 0))
    lesion = colour * (illumination + 0.6 * texture + grain + 0.12 * dome)[..., None]
    alpha = ndimage.gaussian_filter(mask.astype(np.float64), 0.8)[..., None]
    image = (1 - alpha) * image + alpha * lesion
    vessel_strength = 0.35 * (1 - 0.7 * alpha[..., 0]) * vessels
    image *= 1 - vessel_strength[..., None] * np.array([0.5, 1.0, 0.9])

    # Specular highlights anywhere (endoscope light), so brightness alone is no lesion cue.
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, size, size=2)
        width = rng.uniform(0.6, 1.8)
        top, left = max(int(cy) - 6, 0), max(int(cx) - 6, 0)
        window = (slice(top, int(cy) + 7), slice(left, int(cx) + 7))
        spot = np.exp(-((yy[window] - cy) ** 2 + (xx[window] - cx) ** 2) / (2 * width**2))
        image[window] += (1.0 - image[window]) * 0.9 * spot[..., None]

    image += 0.012 * rng.standard_normal(image.shape)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return pixels, (mask if kinds is None else labels)


def procedural_stem(index: int) -> str:
    return f"proc_{index:05d}"


def generate_procedural(
    root: str | os.PathLike, num_images: int = 200, size: int = 128, seed: int = 0, start_index: int = 0,
    num_classes: int = 2,
) -> Path:
    """Write images ``start_index .. start_index+num_images-1`` as a pair folder and return ``root``.

    Layout: ``root/images/proc_00000.png``, ``root/masks/proc_00000.png`` (0/255) and
    ``root/procedural.json`` (the parameters). Same arguments give byte-identical files.
    ``num_classes`` > 2: masks are label maps (values 0..K-1) declared in ``root/labels.json``
    (background, lesion_1, lesion_2, ...).

    Raises:
        DataError: ``root/images`` or ``root/masks`` already holds files this call would not
            write (a folder from another run would silently enlarge the dataset).
    """
    check_procedural_args(num_images, size, seed, num_classes, start_index)
    root = Path(root)
    stems = [procedural_stem(start_index + i) for i in range(num_images)]
    expected = {f"{stem}.png" for stem in stems}
    for folder in (root / "images", root / "masks"):
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in expected) if folder.is_dir() else []
        if foreign:
            raise DataError(f"{folder}: holds files from another dataset ({foreign[:5]}...); use an empty folder")
    for offset, stem in enumerate(stems):
        pixels, mask = procedural_pair(start_index + offset, size=size, seed=seed, num_classes=num_classes)
        write_image(root / "images" / f"{stem}.png", pixels)
        if num_classes > 2:
            write_image(root / "masks" / f"{stem}.png", mask)  # label map: one 8-bit channel of class indices
        else:
            write_mask(root / "masks" / f"{stem}.png", mask)
    meta = {"generator_version": GENERATOR_VERSION, "num_images": num_images, "size": size, "seed": seed,
            "start_index": start_index}
    if num_classes > 2:
        from laworder.data.labels import write_labels

        meta["num_classes"] = num_classes
        write_labels(root, ["background"] + [f"lesion_{k}" for k in range(1, num_classes)])
    (root / "procedural.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


PROCEDURAL_ENTRIES = ("images", "masks", "procedural.json", "labels.json")


def write_procedural(root: str | os.PathLike, num_images: int = 200, size: int = 128, seed: int = 0,
                     num_classes: int = 2, overwrite: bool = False) -> Path:
    """``laworder data procedural``: :func:`generate_procedural` into a folder it may write.

    A non-empty ``root`` needs ``overwrite``, which replaces only an earlier procedural dataset
    written there (its ``.laworder-manifest.json``), never other files; a failed write (a full
    disk) removes what it wrote and puts the earlier dataset back.

    Raises:
        ConfigError: bad counts or sizes. RunDirError: ``root`` is a file, or not empty (without
            ``overwrite``, or holding files laworder did not write).
    """
    from laworder.outputs import OutputFolder

    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    try:  # size, seed and classes checked before any write
        procedural_pair(0, size=size, seed=seed, num_classes=num_classes)
    except ValueError as exc:
        raise ConfigError(f"data procedural: {exc}") from None
    folder = OutputFolder(root, PROCEDURAL_ENTRIES, overwrite, what="output", kind="data procedural",
                          hint="choose an empty folder or pass --overwrite (replaces an earlier procedural dataset only)")
    with folder:
        return generate_procedural(root, num_images=num_images, size=size, seed=seed, num_classes=num_classes)
