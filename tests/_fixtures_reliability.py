"""Hostile-file corpus and identifier-bearing DICOMs for the reliability tests (milliseconds to build).

``make_corpus(root)`` writes a class-per-folder tree (``benign/``, ``malignant/``) that mixes good images, odd but
valid ones (16-bit, CMYK, palette, animated GIF, EXIF-rotated, unicode names) and bad ones (empty, truncated,
text named .jpg, a decompression bomb, a DICOM without pixels, symlink loops). It returns what each file should
do: ``"ok"`` (predicted) or a word the error message must contain.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from _fixtures_data import dicom_bytes, png_header_only
from _fixtures_serve import synthetic_image

# identifiers written into test DICOMs; none may ever appear in an output, a log or a message
PATIENT_NAME = "Doe^Jane^Q"
PATIENT_ID = "PID-7734-SECRET"
PATIENT_BIRTH_DATE = "19380217"
IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe^Jane", "Jane")


def dicom_with_identifiers(arr: np.ndarray | None, *, photometric: str = "MONOCHROME2") -> bytes:
    """A DICOM (Secondary Capture) carrying PatientName/PatientID/PatientBirthDate; no pixels when ``arr`` is None."""
    tags = {
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": PATIENT_BIRTH_DATE,
        "InstitutionName": "St Elsewhere " + PATIENT_ID,
    }
    return dicom_bytes(arr, photometric=photometric, tags=tags)


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
