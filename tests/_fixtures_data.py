"""Small generated data trees and image files for the data tests (no real data, milliseconds each)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(
    seed: int = 0, size: tuple[int, int] = (24, 20), mode: str = "RGB", fmt: str = "JPEG", **save: object
) -> bytes:
    """A small random-ish image (a gradient plus a seeded square, so distinct seeds give distinct pictures)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    x, y = rng.integers(0, max(1, w // 2)), rng.integers(0, max(1, h // 2))
    arr[y : y + h // 3, x : x + w // 3, 2] = rng.integers(50, 255)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def write_image(path: Path, seed: int = 0, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}.get(
        path.suffix.lower(), "JPEG"
    )
    path.write_bytes(image_bytes(seed, fmt=fmt, **kw))  # type: ignore[arg-type]
    return path


def class_tree(root: Path, classes: dict[str, int], prefix: str = "", seed: int = 0) -> Path:
    """root/<class>/<prefix><i>.jpg"""
    k = seed
    for c, n in classes.items():
        for i in range(n):
            k += 1
            write_image(root / c / f"{prefix}{c}_{i}.jpg", seed=k)
    return root


def msld_tree(
    root: Path, n_per_class: int = 5, folds: int = 3, classes: tuple[str, ...] = ("Mpox", "Others")
) -> Path:
    """MSLD v2.0 style: root/Original/FOLDS/foldK/{Train,Valid,Test}/<class>/ + root/Augmented/FOLDS_AUG/..."""
    items = [(c, f"{c}_P{i:02d}_1") for c in classes for i in range(n_per_class)]
    for f in range(1, folds + 1):
        for j, (c, stem) in enumerate(items):
            role = "Test" if j % folds == f - 1 else ("Valid" if j % folds == f % folds else "Train")
            write_image(root / "Original" / "FOLDS" / f"fold{f}" / role / c / f"{stem}.jpg", seed=j)
            if role == "Train":
                aug = root / "Augmented" / "FOLDS_AUG" / f"fold{f}_AUG" / "Train" / c / f"{stem}_rot.jpg"
                write_image(aug, seed=1000 + j)
    return root


def ham_tree(
    root: Path, n: int = 12, header: str = "lesion_id,image_id,dx,dx_type,age,sex,localization"
) -> Path:
    """HAM10000 style: images/ISIC_*.jpg + HAM10000_metadata.csv (2 images per lesion, one unknown sex, one
    empty age)."""
    lines = [header]
    for i in range(n):
        dx = ("nv", "mel", "bkl")[i % 3]
        lesion = f"HAM_{i // 2:07d}"
        dx = ("nv", "mel", "bkl")[(i // 2) % 3]
        age = "" if i == 3 else f"{30 + i}.0"
        sex = "unknown" if i == 5 else ("male" if i % 2 else "female")
        write_image(root / "images" / f"ISIC_{i:07d}.jpg", seed=i)
        lines.append(f"{lesion},ISIC_{i:07d},{dx},histo,{age},{sex},back")
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def cxr_tree(root: Path) -> Path:
    """Chest X-ray style names: NORMAL/IM-*.jpeg, PNEUMONIA/personN_bacteria_M.jpeg / personN_virus_M.jpeg."""
    k = 0
    for p in range(1, 7):
        for m in range(2):
            k += 1
            write_image(root / "train" / "NORMAL" / f"IM-{p:04d}-000{m + 1}.jpeg", seed=k, mode="L")
    for p in range(1, 9):
        kind = "bacteria" if p % 2 else "virus"
        for _ in range(2):
            k += 1
            write_image(root / "train" / "PNEUMONIA" / f"person{p}_{kind}_{k}.jpeg", seed=k, mode="L")
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    pixel_data: bool = True,
    tags: dict[str, str] | None = None,
) -> bytes:
    """A minimal valid DICOM file (Secondary Capture, explicit VR little endian) written with pydicom.

    ``arr=None`` writes no image attributes at all (a report-only object); ``tags`` sets or overrides elements
    by keyword (e.g. identifiers for the privacy tests)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = "SECRET-ID-123"
    ds.Modality = "OT"
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    if arr is None:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_data:
        ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
