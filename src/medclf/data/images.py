"""Decode one image file, whatever is on a clinic's disk, into an RGB or grayscale (L) PIL image.

Every way a file can be unusable ends in `BadImageError(path, reason)` whose reason says what to do; nothing else
escapes `load_image`. Only raster formats are opened (never PostScript or other formats that run programs).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from medclf.errors import BadImageError

__all__ = [
    "IMAGE_FORMATS",
    "MAX_PIXELS",
    "check_image_header",
    "decoded_size",
    "describe_image_bytes",
    "is_dicom_bytes",
    "load_image",
    "load_image_bytes",
    "read_error",
    "to_8bit",
    "too_big_reason",
]

MAX_PIXELS = 50_000_000
"""Decompression-bomb limit: an image with more pixels (width x height x frames) than this is refused before it
is decoded. 50 megapixels is larger than any dermatoscope or chest X-ray detector; raise it per call with
`load_image(path, max_pixels=...)` for bigger images."""

IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM")
"""Pillow formats medclf opens (DICOM goes through pydicom)."""

_DICOM_SUFFIXES = (".dcm", ".dicom")
_OPENABLE: list[str] = []


def _formats() -> list[str]:
    # Pillow registers MPO, WebP etc. only after Image.init(); opening with an unregistered name fails
    if not _OPENABLE:
        Image.init()
        _OPENABLE.extend(f for f in IMAGE_FORMATS if f in Image.OPEN)
    return _OPENABLE


def describe_image_bytes(data: bytes) -> dict[str, object]:
    """Format, mode and size of an encoded image as stored (before `load_image` converts it), and the size
    `load_image` gives it when it decodes every pixel (``shown_size``: EXIF orientation applied); cheap."""
    if is_dicom_bytes(data):
        return {"format": "DICOM", "mode": None, "size": None, "shown_size": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=_formats())
            w, h = im.size
            try:
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
            except Exception:  # a broken EXIF block: load_image keeps such an image unrotated
                turned = False
            return {
                "format": im.format,
                "mode": im.mode,
                "size": (w, h),
                "shown_size": (h, w) if turned else (w, h),
            }
    except Exception:
        return {"format": None, "mode": None, "size": None, "shown_size": None}


def is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_error(path: Path, exc: OSError) -> BadImageError:
    """The error for an image file the OS cannot read (missing, a folder, no permission, ...), with the fix."""
    if isinstance(exc, FileNotFoundError):
        return BadImageError(path, "file not found; check the path or remove the row/file that names it")
    if isinstance(exc, IsADirectoryError):
        return BadImageError(path, "is a folder, not an image file; rename it or move it out of the data")
    if isinstance(exc, PermissionError):
        return BadImageError(path, "permission denied; make the file readable (chmod +r)")
    if exc.errno == errno.ELOOP:
        return BadImageError(path, "symbolic link loop; replace the link with the real file")
    return BadImageError(path, f"cannot be read ({exc.strerror or exc}); check the disk and the file")


def check_image_header(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Cheap check that `path` is a usable image (reads the header only; DICOM is decoded); returns (w, h).

    A truncated body is only found by `load_image`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if not head:
                raise BadImageError(path, "empty file (0 bytes); copy it again from the source or delete it")
            if is_dicom_bytes(head) or path.suffix.lower() in _DICOM_SUFFIXES:
                return load_image(path, max_pixels=max_pixels).size
            fh.seek(0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im = Image.open(fh, formats=_formats())
                    w, h = im.size
            except Image.DecompressionBombError:
                raise BadImageError(path, too_big_reason(None, max_pixels)) from None
            except UnidentifiedImageError:
                raise BadImageError(path, _not_an_image_reason(head + fh.read(380))) from None
            except Exception as exc:
                raise BadImageError(
                    path, f"unreadable image header ({_short(exc)}); re-export the image or delete it"
                ) from None
    except OSError as exc:
        raise read_error(path, exc) from None
    if w <= 0 or h <= 0:
        raise BadImageError(path, f"image has no pixels ({w}x{h}); re-export it or delete it")
    if w * h > max_pixels:
        raise BadImageError(path, too_big_reason((w, h), max_pixels))
    return w, h


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode `path` (JPEG, PNG 8/16-bit, BMP, TIFF, GIF, WebP, DICOM) into an RGB or L image.

    EXIF orientation is applied; animated images give their first frame; 16-bit and float grayscale are
    stretched to 8 bits; CMYK, palette and alpha images become RGB. Raises `BadImageError` for anything unusable.

    ``min_side``: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling, Pillow's ``draft``), the smallest that keeps both sides at ``min_side`` or more. That skips most
    of the decoding of a large photo; ``Preprocessing.decode_side`` says what a model's input can take. None
    (the default) decodes every pixel.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise read_error(path, exc) from None
    return load_image_bytes(data, path, max_pixels=max_pixels, min_side=min_side)


def load_image_bytes(
    data: bytes,
    path: str | os.PathLike[str] = "<bytes>",
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """`load_image` for bytes already in memory (an upload, or a file read once for hashing too)."""
    if len(data) == 0:
        raise BadImageError(path, "empty file (0 bytes); copy it again from the source or delete it")
    if is_dicom_bytes(data) or str(path).lower().endswith(_DICOM_SUFFIXES):
        from medclf.data._dicom import decode_dicom

        return decode_dicom(data, path, max_pixels=max_pixels)
    return _decode_pillow(data, path, max_pixels, min_side)


def _decode_pillow(
    data: bytes, path: str | os.PathLike[str], max_pixels: int, min_side: int | None = None
) -> Image.Image:
    # Pillow warns about corrupt EXIF, palette transparency etc.: the caller gets an image or a BadImageError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode_pillow_quiet(data, path, max_pixels, min_side)


def _decode_pillow_quiet(
    data: bytes, path: str | os.PathLike[str], max_pixels: int, min_side: int | None
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # we check the pixel count ourselves, below, against our own documented limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError:
        raise BadImageError(path, too_big_reason(None, max_pixels)) from None
    except UnidentifiedImageError:
        raise BadImageError(path, _not_an_image_reason(data)) from None
    except Exception as exc:  # a malformed header can raise nearly anything inside a Pillow plugin
        raise BadImageError(
            path, f"unreadable image header ({_short(exc)}); re-export the image or delete it"
        ) from None

    try:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise BadImageError(path, f"image has no pixels ({w}x{h}); re-export it or delete it")
        if w * h > max_pixels:  # only the first frame is ever decoded
            raise BadImageError(path, too_big_reason((w, h), max_pixels))
        if getattr(im, "is_animated", False):
            im.seek(0)
        _draft(im, min_side)
        im.load()
    except BadImageError:
        raise
    except Exception as exc:
        if ImageFile.LOAD_TRUNCATED_IMAGES is False and "truncated" in str(exc).lower():
            raise BadImageError(
                path,
                "truncated image (the file ends early, e.g. an interrupted copy); copy it again or delete it",
            ) from None
        raise BadImageError(
            path, f"corrupt image data ({_short(exc)}); re-export the image or delete it"
        ) from None

    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the image: keep it unrotated
        # in place: without an orientation tag this is a no-op, where the copying form duplicates every image
        ImageOps.exif_transpose(im, in_place=True)
    return _normalise_mode(im)


def _draft(im: Image.Image, min_side: int | None) -> None:
    """Have a large JPEG decode at the reduced DCT scale that keeps both sides at ``min_side`` or more."""
    w, h = im.size
    if min_side and im.format in ("JPEG", "MPO") and min(w, h) >= 2 * min_side:
        # mode None keeps the image's own mode: libjpeg's greyscale conversion differs from Pillow's
        im.draft(None, (min_side, min_side))


def decoded_size(data: bytes, *, min_side: int | None = None) -> tuple[int, int] | None:
    """(width, height) of the pixels `load_image_bytes(data, min_side=...)` decodes, read from the header alone:
    a JPEG's reduced DCT scale counts. None for DICOM and for what Pillow cannot open (`load_image_bytes` then
    says what is wrong)."""
    if is_dicom_bytes(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_formats()) as im:
                _draft(im, min_side)
                return im.size
    except Exception:
        return None


def _normalise_mode(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(to_8bit(np.asarray(im)), mode="L")
    if mode == "LA":
        return im.getchannel("L")
    if mode in ("P", "PA"):
        rgb = im.convert("RGBA").convert("RGB")
        return rgb
    return im.convert("RGB")  # RGBA, RGBa, CMYK, YCbCr, LAB, HSV


def to_8bit(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly map [lo, hi] (default: the array's own min..max) to 0..255 uint8; a flat image becomes 0."""
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, np.nan)
    if lo is None:
        lo = float(np.nanmin(a)) if finite.any() else 0.0
    if hi is None:
        hi = float(np.nanmax(a)) if finite.any() else 0.0
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def too_big_reason(size: tuple[int, int] | None, max_pixels: int) -> str:
    """The reason an image of ``size`` (width, height; None: unknown) over ``max_pixels`` is refused, with the fix."""
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return (
        f"image is too large ({dims}; limit {max_pixels:,}, a decompression-bomb guard); downscale it, "
        "or raise the limit with load_image(..., max_pixels=N) if you trust the file"
    )


def _not_an_image_reason(data: bytes) -> str:
    head = data[:512]
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        kind = "an HTML page (a failed download?)"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        kind = "a text file"
    else:
        kind = "not a supported image format"
    return (
        f"not an image: {kind}; supported are JPEG, PNG, BMP, TIFF, GIF, WebP and DICOM — replace the file or "
        "delete it"
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
