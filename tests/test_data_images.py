"""load_image on good, odd and hostile files: every failure is a BadImageError that names the file and a fix."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from _fixtures_data import dicom_bytes, image_bytes, png_header_only, write_image
from medclf.data.images import MAX_PIXELS, check_image_header, load_image, load_image_bytes
from medclf.errors import BadImageError, DataError


def _bad(path: Path, match: str, **kw: object) -> BadImageError:
    with pytest.raises(BadImageError, match=match) as info:
        load_image(path, **kw)  # type: ignore[arg-type]
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, DataError)
    return info.value


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".tif", ".gif"])
def test_plain_formats_decode_to_rgb(tmp_path: Path, suffix: str) -> None:
    p = write_image(tmp_path / f"x{suffix}", seed=1)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (24, 20)


def test_grayscale_stays_l(tmp_path: Path) -> None:
    p = write_image(tmp_path / "g.png", mode="L")
    assert load_image(p).mode == "L"


def test_zero_byte(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _bad(p, "empty file")
    with pytest.raises(BadImageError, match="empty file"):
        check_image_header(p)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = image_bytes(3, size=(64, 64), fmt=fmt)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: len(data) // 2])
    err = _bad(p, "truncated|corrupt")
    assert "copy it again" in err.reason or "re-export" in err.reason


def test_text_and_html_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("patient notes, not a picture\n")
    _bad(p, "text file")
    h = tmp_path / "page.jpg"
    h.write_text("<!DOCTYPE html><html><body>404</body></html>")
    _bad(h, "HTML page")
    with pytest.raises(BadImageError, match="text file"):
        check_image_header(p)


def test_wrong_extension_still_decodes(tmp_path: Path) -> None:
    p = tmp_path / "really_a_png.jpg"
    p.write_bytes(image_bytes(2, fmt="PNG"))
    assert load_image(p).size == (24, 20)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(30_000, 30_000))  # 900 megapixels in ~100 bytes
    assert p.stat().st_size < 200
    err = _bad(p, "too large")
    assert "decompression-bomb" in err.reason
    with pytest.raises(BadImageError, match="too large"):
        check_image_header(p)
    # our own documented limit applies below Pillow's
    q = tmp_path / "big.png"
    q.write_bytes(png_header_only(8_000, 8_000))  # 64 MP > MAX_PIXELS (50 MP)
    assert MAX_PIXELS < 8_000 * 8_000
    _bad(q, f"limit {MAX_PIXELS:,}")
    _bad(write_image(tmp_path / "s.png"), "too large", max_pixels=100)


def test_16bit_png_is_stretched_to_8bit(tmp_path: Path) -> None:
    arr = np.tile(np.linspace(1000, 4000, 32, dtype=np.uint16), (8, 1))  # 12-bit values, like an X-ray export
    p = tmp_path / "x16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    im = load_image(p)
    a = np.asarray(im)
    assert im.mode == "L" and a.min() == 0 and a.max() == 255
    assert (np.diff(a[0].astype(int)) >= 0).all()  # order preserved


def test_cmyk_palette_rgba_la_become_rgb_or_l(tmp_path: Path) -> None:
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(image_bytes(1, mode="CMYK", fmt="JPEG"))
    assert Image.open(cmyk).mode == "CMYK"
    assert load_image(cmyk).mode == "RGB"
    pal = write_image(tmp_path / "pal.png", mode="P")
    assert Image.open(pal).mode == "P" and load_image(pal).mode == "RGB"
    rgba = write_image(tmp_path / "a.png", mode="RGBA")
    assert load_image(rgba).mode == "RGB"
    la = write_image(tmp_path / "la.png", mode="LA")
    assert load_image(la).mode == "L"
    one = write_image(tmp_path / "bw.png", mode="1")
    assert load_image(one).mode == "L"


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    im = load_image(p)
    assert im.mode == "RGB"
    r, _, b = im.getpixel((5, 5))
    assert r > 200 and b < 50


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (30, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert Image.open(p).size == (30, 20)
    assert load_image(p).size == (20, 30)


def test_missing_folder_symlink_loop_and_permissions(tmp_path: Path) -> None:
    _bad(tmp_path / "nope.jpg", "file not found")
    d = tmp_path / "dir.jpg"
    d.mkdir()
    _bad(d, "folder")
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    os.symlink(b, a)
    os.symlink(a, b)
    _bad(a, "symbolic link loop")
    with pytest.raises(BadImageError, match="symbolic link loop"):
        check_image_header(a)


def test_unicode_and_spaces_in_path(tmp_path: Path) -> None:
    p = write_image(tmp_path / "Patiënt ñ 画像" / "image one (2).jpg")
    assert load_image(p).size == (24, 20)
    assert check_image_header(p) == (24, 20)


# -- DICOM -------------------------------------------------------------------------------------------------


def _ramp() -> np.ndarray:
    return np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (4, 1))  # 4 x 32, 12-bit


def test_dicom_monochrome2_window_and_rescale(tmp_path: Path) -> None:
    p = tmp_path / "a.dcm"
    p.write_bytes(dicom_bytes(_ramp()))
    a = np.asarray(load_image(p))
    assert a.shape == (4, 32) and a.dtype == np.uint8
    assert a[0, 0] == 0 and a[0, -1] == 255  # no window: own range

    # window centre 1000 width 1000 on rescaled values (slope 2, intercept -1000): 500..1500 -> 0..255
    p2 = tmp_path / "b.dcm"
    p2.write_bytes(dicom_bytes(_ramp(), slope=2.0, intercept=-1000.0, window=(1000.0, 1000.0)))
    b = np.asarray(load_image(p2))
    raw = _ramp()[0].astype(float) * 2 - 1000
    expected = np.clip(np.rint((np.clip(raw, 500, 1500) - 500) * 255 / 1000), 0, 255)
    np.testing.assert_array_equal(b[0], expected.astype(np.uint8))


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    m2, m1 = tmp_path / "m2.dcm", tmp_path / "m1.dcm"
    m2.write_bytes(dicom_bytes(_ramp()))
    m1.write_bytes(dicom_bytes(_ramp(), photometric="MONOCHROME1"))
    a2, a1 = np.asarray(load_image(m2)).astype(int), np.asarray(load_image(m1)).astype(int)
    np.testing.assert_array_equal(a1, 255 - a2)


def test_dicom_without_pixel_data_and_no_identifiers_in_message(tmp_path: Path) -> None:
    p = tmp_path / "report.dcm"
    p.write_bytes(dicom_bytes(_ramp(), pixel_data=False))
    err = _bad(p, "no pixel data")
    assert "SECRET-ID-123" not in str(err) and "Test^Patient" not in str(err)


def test_dicom_detected_by_magic_without_extension(tmp_path: Path) -> None:
    p = tmp_path / "IM0001"
    p.write_bytes(dicom_bytes(_ramp()))
    assert load_image(p).mode == "L"
    q = tmp_path / "fake.dcm"
    q.write_bytes(b"not dicom at all" * 10)
    _bad(q, "DICOM")


# -- fuzz ----------------------------------------------------------------------------------------------------

_PREFIXES = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"\0" * 128 + b"DICM",
]


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(_PREFIXES),
    body=st.binary(max_size=1500),
    name=st.sampled_from(["x.jpg", "x.dcm", "x"]),
)
def test_fuzz_random_bytes(prefix: bytes, body: bytes, name: str) -> None:
    try:
        im = load_image_bytes(prefix + body, name)
    except BadImageError as exc:
        assert exc.reason
        return
    assert isinstance(im, Image.Image) and im.mode in ("RGB", "L")


@settings(max_examples=60, deadline=2000)
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0, max_value=2000))
def test_fuzz_damaged_real_images(cut: int, flip: int) -> None:
    data = bytearray(image_bytes(5, size=(40, 30), fmt="PNG" if cut % 2 else "JPEG"))
    if flip < len(data):
        data[flip] ^= 0xFF
    try:
        im = load_image_bytes(bytes(data[: max(cut, 1)]), "y.img")
    except BadImageError:
        return
    assert im.mode in ("RGB", "L")
    im.tobytes()


def test_load_image_bytes_roundtrip() -> None:
    im = load_image_bytes(image_bytes(7, fmt="PNG"))
    assert im.size == (24, 20)
    assert isinstance(io.BytesIO(), io.BytesIO)


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth colour gradients and sensor-like noise."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 60 * np.sin(x / 97 + c) + 40 * np.cos(y / 53 - c) for c in range(3)], -1)
    rgb += np.random.default_rng(seed).normal(0, 8, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


@pytest.mark.slow
def test_min_side_decodes_large_jpegs_at_a_reduced_scale(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    _photo(2000, 1500).save(big, quality=90)
    assert load_image(big).size == (2000, 1500)
    assert load_image(big, min_side=448).size == (1000, 750)  # 1/2: 1/4 would leave 375 < 448
    assert load_image(big, min_side=224).size == (500, 375)
    assert load_image(big, min_side=1000).size == (2000, 1500)  # under twice min_side: every pixel
    assert load_image_bytes(big.read_bytes(), "big.jpg", min_side=448).size == (1000, 750)
    small = tmp_path / "small.jpg"
    _photo(400, 300).save(small, quality=90)
    assert np.array_equal(np.asarray(load_image(small, min_side=160)), np.asarray(load_image(small)))
    png = tmp_path / "big.png"
    _photo(1000, 800).save(png)
    assert load_image(png, min_side=200).size == (1000, 800)  # only JPEG has DCT scaling
    grey = tmp_path / "grey.jpg"
    _photo(1600, 1200).convert("L").save(grey, quality=90)
    im = load_image(grey, min_side=200)
    assert (im.mode, im.size) == ("L", (400, 300))
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    _photo(2000, 1500).save(rotated, quality=90, exif=exif)
    assert load_image(rotated, min_side=448).size == (750, 1000)
    mpo = tmp_path / "phone.mpo"  # what many phone cameras write: JPEG frames in one file
    frame = _photo(2000, 1500)
    frame.save(mpo, format="MPO", save_all=True, append_images=[frame])
    assert load_image(mpo, min_side=448).size == (1000, 750)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(2048, 1536), (4032, 3024)])
def test_reduced_decode_moves_the_models_input_by_a_grey_level_at_most(tmp_path: Path, size) -> None:
    from medclf.data.transforms import Preprocessing, create_transform

    pre = Preprocessing(input_size=224)
    tf = create_transform(pre)
    path = tmp_path / "photo.jpg"
    _photo(*size).save(path, quality=90)
    reduced = load_image(path, min_side=pre.decode_side())
    assert reduced.size[0] < size[0]
    full = tf(load_image(path)).numpy()
    levels = np.abs(tf(reduced).numpy() - full) * 255 * np.asarray(pre.std, np.float32)[:, None, None]
    assert levels.max() <= 2.0 and levels.mean() < 0.5, (levels.max(), levels.mean())
