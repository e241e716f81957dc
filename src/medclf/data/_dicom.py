"""DICOM -> 8-bit PIL image: modality LUT (rescale slope/intercept), VOI LUT or window, MONOCHROME1 inversion.

Patient identifiers in the header are never read into messages or logs: errors name the file and the problem only.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from medclf._lazy import require_extra
from medclf.errors import BadImageError

__all__ = ["decode_dicom"]


def decode_dicom(data: bytes, path: str | os.PathLike[str], *, max_pixels: int) -> Image.Image:
    """Decode the first frame of a DICOM file into L (grayscale) or RGB."""
    require_extra("dicom", "reading DICOM files")
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from medclf.data.images import to_8bit, too_big_reason

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise BadImageError(
            path, f"not a readable DICOM file ({_short(exc)}); re-export it or delete it"
        ) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise BadImageError(
            path,
            "DICOM file has no pixel data (a report, presentation state or header-only file); "
            "remove it from the data folder",
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:
        raise BadImageError(
            path, "DICOM file lacks Rows/Columns; re-export it from the PACS or delete it"
        ) from None
    if rows <= 0 or cols <= 0:
        raise BadImageError(path, f"DICOM image has no pixels ({cols}x{rows}); re-export it or delete it")
    if rows * cols > max_pixels:
        raise BadImageError(path, too_big_reason((cols, rows), max_pixels))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = (
            f"compressed transfer syntax {ts.name if ts is not None else '?'} may need a decoder: "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        )
        raise BadImageError(path, f"cannot decode DICOM pixel data ({_short(exc)}); {hint}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames:
        arr = arr[0]  # first frame, like an animated GIF

    try:
        if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
            return Image.fromarray(
                _grayscale(ds, arr, photometric, apply_modality_lut, apply_voi_lut, to_8bit), "L"
            )
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        elif photometric.startswith("YBR") and samples == 3:
            pass  # pydicom >= 3 returns YBR pixel data already converted to RGB (pixel_array's as_rgb=True)
        elif photometric != "RGB" or samples != 3:
            raise BadImageError(
                path,
                f"unsupported DICOM photometric interpretation {photometric!r} with {samples} samples per pixel; "
                "convert the file to MONOCHROME2 or RGB",
            )
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise BadImageError(path, f"DICOM colour image has shape {arr.shape}; expected rows x cols x 3")
        if arr.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8) or 8)
            arr = to_8bit(arr, 0, 2**bits - 1)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(
            path, f"cannot convert DICOM pixels ({_short(exc)}); re-export the image"
        ) from None


def _grayscale(ds, arr, photometric, apply_modality_lut, apply_voi_lut, to_8bit) -> np.ndarray:  # type: ignore[no-untyped-def]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale frame, got shape {arr.shape}")
    values = apply_modality_lut(arr, ds).astype(
        np.float64
    )  # rescale slope/intercept -> e.g. Hounsfield units
    center, width = _window(ds)
    if center is not None and width is not None and width > 0:
        # linear window, DICOM PS3.3 C.11.2.1.2: the clinically chosen contrast range
        lo, hi = center - width / 2.0, center + width / 2.0
        out = to_8bit(np.clip(values, lo, hi), lo, hi)
    elif "VOILUTSequence" in ds:
        out = to_8bit(apply_voi_lut(arr, ds))
    else:
        out = to_8bit(values)  # no window in the file: stretch to the image's own range
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def _window(ds) -> tuple[float | None, float | None]:  # type: ignore[no-untyped-def]
    def first(v):  # type: ignore[no-untyped-def]
        if v is None:
            return None
        try:
            return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
        except (TypeError, ValueError, IndexError):
            return None

    return first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
