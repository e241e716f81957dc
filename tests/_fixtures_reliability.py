"""Hostile-file corpus and identifier-bearing DICOMs for the reliability tests (milliseconds to build).

``make_corpus(root)`` writes a class-per-folder tree (``benign/``, ``malignant/``) that mixes good images, odd but
valid ones (16-bit, CMYK, palette, animated GIF, EXIF-rotated, unicode names) and bad ones (empty, truncated,
text named .jpg, a decompression bomb, a DICOM without pixels, symlink loops). It returns what each file should
do: ``"ok"`` (predicted) or a word the error message must contain.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from _fixtures_serve import synthetic_image

# identifiers written into test DICOMs; none may ever appear in an output, a log or a message
PATIENT_NAME = "Doe^Jane^Q"
PATIENT_ID = "PID-7734-SECRET"
PATIENT_BIRTH_DATE = "19380217"
IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe^Jane", "Jane")


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


def dicom_with_identifiers(arr: np.ndarray | None, *, photometric: str = "MONOCHROME2") -> bytes:
    """A DICOM (Secondary Capture) carrying PatientName/PatientID/PatientBirthDate; no pixels when ``arr`` is None."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.InstitutionName = "St Elsewhere " + PATIENT_ID
    ds.Modality = "OT"
    if arr is not None:
        arr = np.ascontiguousarray(arr.astype(np.uint16))
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _save(im: Image.Image, path: Path, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def make_corpus(root: Path, n_good: int = 3) -> dict[str, str]:
    """Write the corpus under ``root/{benign,malignant}``; returns {relative path: "ok" | reason word}."""
    rng = np.random.default_rng(0)
    ben, mal = root / "benign", root / "malignant"
    expect: dict[str, str] = {}

    def ok(p: Path) -> None:
        expect[p.relative_to(root).as_posix()] = "ok"

    def bad(p: Path, word: str) -> None:
        expect[p.relative_to(root).as_posix()] = word

    for label, folder in ((0, ben), (1, mal)):
        for i in range(n_good):
            ok(_save(synthetic_image(label, rng), folder / f"good_{i}.png"))
    good_jpeg = io.BytesIO()
    synthetic_image(0, rng).save(good_jpeg, format="JPEG", quality=90)
    good_png = io.BytesIO()
    synthetic_image(1, rng).save(good_png, format="PNG")

    # odd but valid: each must be predicted
    x16 = np.tile(np.linspace(1000, 4000, 40, dtype=np.uint16), (40, 1))
    ok(_save(Image.fromarray(x16), ben / "sixteen_bit.png"))
    assert Image.open(ben / "sixteen_bit.png").mode.startswith("I")
    ok(_save(synthetic_image(0, rng).convert("CMYK"), ben / "cmyk.jpg"))
    ok(_save(synthetic_image(1, rng).convert("P"), mal / "palette.png"))
    frames = [synthetic_image(k % 2, rng) for k in range(3)]
    anim = mal / "animated.gif"
    frames[0].save(anim, save_all=True, append_images=frames[1:], duration=50, loop=0)
    ok(anim)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    ok(_save(synthetic_image(0, rng).crop((0, 0, 40, 30)), ben / "exif_rotated.jpg", exif=exif))
    ok(_save(synthetic_image(1, rng), mal / "Patiënt ñ 画像 scan (2).png"))
    ok(_save(synthetic_image(0, rng), root / "benign" / "sub dir ü" / "nested image.jpg"))
    dcm = mal / "with_pixels.dcm"
    dcm.write_bytes(dicom_with_identifiers(np.tile(np.arange(0, 4096, 100, dtype=np.uint16), (41, 1))))
    ok(dcm)

    # bad: each must be named with a reason, never a traceback
    (ben / "zero_bytes.jpg").write_bytes(b"")
    bad(ben / "zero_bytes.jpg", "empty")
    data = good_jpeg.getvalue()
    (ben / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad(ben / "truncated.jpg", "truncated")
    data = good_png.getvalue()
    (mal / "truncated.png").write_bytes(data[: len(data) // 2])
    bad(mal / "truncated.png", "truncated")
    (mal / "notes.jpg").write_text("Referral letter: this is text, not a picture.\n" * 5, encoding="utf-8")
    bad(mal / "notes.jpg", "not an image")
    (mal / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    bad(mal / "bomb.png", "too large")
    (ben / "report_no_pixels.dcm").write_bytes(dicom_with_identifiers(None))
    bad(ben / "report_no_pixels.dcm", "no pixel data")
    loop = ben / "loop.jpg"
    os.symlink(loop.name, loop)  # a link to itself: ELOOP on open
    bad(loop, "symbolic link loop")
    os.symlink("..", ben / "back_up")  # a folder loop: recursive listings must not descend forever
    return expect


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 180, env: dict[str, str] | None = None):
    """``python -m medclf ARGS`` in a subprocess (never hangs the suite: ``timeout`` seconds at most)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "medclf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=full_env,
    )
