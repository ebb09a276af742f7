"""The one image / mask loader.

Every image and mask in laworder is read and written here, so every dataset quirk is handled
once: grayscale or RGBA images, 16-bit files, JPEG-noisy 3-channel masks (Kvasir-SEG), 0/1 and
palette masks. Every failure raises :class:`~laworder.errors.DataError` naming the file.

Mask rule (``read_mask``): the mask is reduced to 8-bit "levels" and thresholded at ``>= 128``.

* 8-bit grayscale: the pixel value. A mask whose maximum is <= 1 is a 0/1 mask (foreground 1).
* palette (``P``): palette index > 0 is lesion (index 0 is background).
* RGB / RGBA: the maximum over the colour channels, not the luma: a pure red lesion on black has
  luma 76 and would vanish. For grey JPEG-noisy masks (Kvasir-SEG) both agree.
* 16-bit / 32-bit integer: scaled from 0..65535 when the maximum exceeds 255.

Every file is read the way a viewer shows it: an EXIF orientation (a phone or camera JPEG stored
sideways) is applied to images and masks alike, so a pair stays aligned. Float (``F``) files must
be finite: one NaN pixel used to turn the whole min-max-stretched image black.
Hidden files (``.DS_Store``, macOS ``._a.png``) are never inputs: every folder scan goes through
``list_image_files`` / ``is_image_file``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from laworder.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSLESS_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp")
MASK_THRESHOLD = 128

# Our own cap, checked on the header before decoding, replaces Pillow's bomb *warning*; Pillow's
# hard limit (DecompressionBombError) still applies and is reported the same way.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # 10000×10000; a 2-D medical slice or photo is far below
_max_image_pixels: int | None = None  # set_max_image_pixels / LAWORDER_MAX_IMAGE_PIXELS / default


def set_max_image_pixels(limit: int | None) -> None:
    """Refuse images with more than ``limit`` pixels (None: ``LAWORDER_MAX_IMAGE_PIXELS`` or the default)."""
    global _max_image_pixels
    if limit is not None and limit < 1:
        raise DataError(f"max image pixels must be >= 1, got {limit}")
    _max_image_pixels = limit


def max_image_pixels() -> int:
    """The pixel cap in force (``set_max_image_pixels`` > ``LAWORDER_MAX_IMAGE_PIXELS`` > 100 M)."""
    if _max_image_pixels is not None:
        return _max_image_pixels
    from laworder.environment import int_variable

    # a ConfigError (not a DataError): a bad variable is not an unreadable image
    value = int_variable("LAWORDER_MAX_IMAGE_PIXELS", 1)
    return DEFAULT_MAX_IMAGE_PIXELS if value is None else value


# PIL modes holding more than 8 bits per pixel in one channel.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# Files operating systems leave beside images: never data, skipped by every scan (macOS writes a
# ``._a.png`` AppleDouble file beside ``a.png`` on non-HFS disks; it is not an image).
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 = upright, 2..8 = mirrored and/or rotated


class NonFinitePixelsError(DataError):
    """A float image or mask holds NaN or infinite pixels."""


def is_hidden(path: str | os.PathLike) -> bool:
    """True for hidden and system files (``.DS_Store``, ``._a.png``, ``Thumbs.db``): never inputs."""
    name = Path(path).name
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file name ending in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return not is_hidden(path) and Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | os.PathLike, ignored: list[Path] | None = None) -> list[Path]:
    """The image files directly in ``folder``, sorted by name: the one scan every reader uses.

    Hidden and system files and sub-folders are skipped silently; other non-image files are
    appended to ``ignored`` when given. A symlink that loops or dangles is kept (it has an image
    name), so reading it reports it by name instead of it vanishing.

    Raises:
        DataError: ``folder`` is not a folder (or a symlink loop).
        OSError: the folder cannot be listed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {'a symbolic link loop' if is_symlink_loop(folder) else 'no such folder'}")
    files = []
    for path in sorted(folder.iterdir()):
        if is_hidden(path) or path.is_dir():
            continue
        if is_image_file(path):
            files.append(path)
        elif ignored is not None:
            ignored.append(path)
    return files


def is_symlink_loop(path: str | os.PathLike) -> bool:
    """True when ``path`` is a symbolic link whose target chain loops (reading it gives ELOOP)."""
    path = Path(path)
    if not path.is_symlink():
        return False
    try:
        os.stat(path)
    except OSError as exc:
        import errno

        return exc.errno == errno.ELOOP
    return False


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1 = upright; 5..8 swap width and height)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  a broken EXIF block: Pillow's own readers ignore it too
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(W, H)`` of ``image`` as shown, after its EXIF orientation."""
    width, height = image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


def open_image(path: str | os.PathLike, decode: bool = True) -> Image.Image:
    """Open ``path`` with Pillow; ``decode=True`` forces a full decode so truncation shows now.

    The header is checked against the pixel cap (``max_image_pixels``) before any pixel data is
    decoded, so a decompression bomb is refused without being read into memory.

    Raises:
        DataError: the file is missing, not an image, truncated, over the pixel cap or otherwise unreadable.
    """
    path = Path(path)
    if is_symlink_loop(path):
        raise DataError(f"{path}: a symbolic link loop, not an image file")
    if not path.exists():
        raise DataError(f"{path}: {'broken symbolic link' if path.is_symlink() else 'file not found'}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    limit = max_image_pixels()
    try:
        image = Image.open(path)  # reads the header only
        width, height = image.size
        if width * height > limit:
            image.close()
            raise DataError(f"{path}: {width}×{height} = {width * height} pixels is over the cap of {limit} "
                            "(--max-image-pixels / LAWORDER_MAX_IMAGE_PIXELS); not decoded")
        if decode:
            image.load()
            if image.mode == "F":  # every decode refuses NaN / inf (a read-check passes only what reads right)
                _finite(np.asarray(image), path, "file")
            if orientation(image) != 1:  # as a viewer shows it; masks get the same turn as images
                upright = ImageOps.exif_transpose(image)
                image.close()
                image = upright
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's own hard limit (2 × Image.MAX_IMAGE_PIXELS)
        raise DataError(f"{path}: refused as a decompression bomb, not decoded ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncation as OSError("image file is truncated ..."), a broken PNG as
        # SyntaxError, and an unknown format as UnidentifiedImageError (an OSError).
        raise DataError(f"{path}: unreadable or truncated image file ({exc})") from exc
    return image


def _finite(values: np.ndarray, path: str | os.PathLike, what: str) -> np.ndarray:
    """``values`` unchanged, or ``NonFinitePixelsError`` when a float array holds NaN / inf."""
    if values.dtype.kind == "f":
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise NonFinitePixelsError(f"{path}: {bad} of {values.size} pixels of this float {what} are NaN or "
                                       "infinite; refused (replace them, e.g. with 0, and save again)")
    return values


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max stretch of >8-bit data to 0..255 per image (a constant image becomes 0)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _decode(path: str | os.PathLike, convert: Callable[[Image.Image], np.ndarray], what: str) -> np.ndarray:
    """Open, fully decode and ``convert`` a file; conversion failures become a DataError too."""
    with open_image(path) as image:
        try:
            return convert(image)
        except DataError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot convert {what} mode {image.mode!r} ({exc})") from exc


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image as ``uint8`` ``H×W×channels``.

    Args:
        path: an image file (see :data:`IMAGE_EXTENSIONS`).
        channels: 3 (RGB; grayscale is repeated, alpha dropped, palette/CMYK converted) or
            1 (grayscale; RGB converted with Pillow's ITU-R 601-2 luma).

    16-bit and float images are min-max stretched to 0..255 per image: a fixed /257 would leave
    a 12-bit scan with 16 grey levels.

    Raises:
        DataError: missing, unreadable or truncated file, or an unsupported pixel mode.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")

    def convert(image: Image.Image) -> np.ndarray:
        if image.mode in _WIDE_MODES:
            gray = _stretch_to_uint8(_finite(np.asarray(image), path, "image"))[..., None]
            return gray if channels == 1 else np.repeat(gray, 3, axis=2)
        pixels = np.array(image.convert("L" if channels == 1 else "RGB"))  # a writable copy
        return pixels[..., None] if channels == 1 else pixels

    return _decode(path, convert, "image")


def _mask_raw(image: Image.Image, path: str | os.PathLike = "mask") -> np.ndarray:
    """One 2-D channel whose large values mean lesion (see the module docstring)."""
    if image.mode in ("P", "PA"):
        index = np.asarray(image)
        index = index[..., 0] if index.ndim == 3 else index
        return (index > 0).astype(np.uint8) * 255
    if image.mode == "1":
        return np.asarray(image, dtype=bool).astype(np.uint8) * 255
    if image.mode in ("L", "LA"):
        return np.asarray(image.getchannel(0))
    if image.mode in _WIDE_MODES:
        return _finite(np.asarray(image), path, "mask")
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def mask_levels(path: str | os.PathLike) -> np.ndarray:
    """A mask file as ``uint8`` ``H×W`` levels (0 = background, 255 = lesion), before thresholding.

    ``read_mask`` thresholds these at 128; ``laworder.data.check`` uses them to tell a mask from
    a photo. See the module docstring for how each file kind maps to levels.

    Raises:
        DataError: missing, unreadable or truncated file, or an unsupported pixel mode.
    """
    return _normalise_levels(_decode(path, lambda image: _mask_raw(image, path), "mask"))


def _normalise_levels(raw: np.ndarray) -> np.ndarray:
    peak = float(raw.max()) if raw.size else 0.0
    if peak <= 1:  # a 0/1 mask (any dtype): foreground is 1
        return (raw >= (0.5 if raw.dtype.kind == "f" else 1)).astype(np.uint8) * 255
    if raw.dtype == np.uint8:
        return np.array(raw)  # a writable copy
    if raw.dtype.kind in "iu" and peak > 255:  # 16-bit / 32-bit integer mask
        return np.clip(np.round(raw.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return np.clip(np.round(raw.astype(np.float64)), 0, 255).astype(np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as a ``bool`` ``H×W`` array: ``mask_levels(path) >= 128``.

    Accepts 0/255, 0/1, palette, RGB and JPEG-noisy masks (see the module docstring).

    Raises:
        DataError: missing, unreadable or truncated file, or an unsupported pixel mode.
    """
    return mask_levels(path) >= MASK_THRESHOLD


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unsupported extension {suffix!r}; use one of {list(IMAGE_EXTENSIONS)}")
    options = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
    try:
        image.save(path, **options)
    except OSError as exc:
        raise DataError(f"{path}: cannot write image ({exc})") from exc


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``H×W``, ``H×W×1``, ``H×W×3`` or ``H×W×4`` pixels; format from the extension.

    ``uint8`` arrays are written as they are; float arrays must lie in [0, 1] and are scaled to
    0..255 (rounded). JPEG is written at quality 95. Parent folders are created.

    Raises:
        ValueError: wrong shape, dtype or value range.
        DataError: unsupported extension or the file cannot be written.
    """
    pixels = np.asarray(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise ValueError(f"image array must be H×W, H×W×1, H×W×3 or H×W×4, got shape {pixels.shape}")
    if pixels.dtype.kind == "f":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(f"float image must lie in [0, 1], got range [{low}, {high}] for {path}")
        pixels = np.round(pixels * 255.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 or float in [0, 1], got dtype {pixels.dtype}")
    _save(Image.fromarray(np.ascontiguousarray(pixels)), Path(path))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a binary ``H×W`` mask as an 8-bit 0/255 file (lossless formats only: PNG advised).

    ``mask`` is a bool array, or a numeric one holding only 0 and 1.

    Raises:
        ValueError: wrong shape or values other than 0/1.
        DataError: a lossy (JPEG) or unknown extension, or the file cannot be written.
    """
    path = Path(path)
    values = np.asarray(mask)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {values.shape} for {path}")
    if values.dtype != bool:
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"mask must be bool or hold only 0/1, got values {np.unique(values)[:8]} for {path}")
        values = values.astype(bool)
    if path.suffix.lower() not in LOSSLESS_EXTENSIONS:
        raise DataError(f"{path}: masks must be written losslessly; use one of {list(LOSSLESS_EXTENSIONS)}")
    _save(Image.fromarray(values.astype(np.uint8) * 255), path)
