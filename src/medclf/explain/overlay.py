"""Heat map on top of the image, with an adjustable intensity."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from medclf._lazy import require_extra

__all__ = ["heatmap_image", "model_view", "overlay_cam"]


def heatmap_image(cam: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> Image.Image:
    """A [H, W] map in [0, 1] as an RGB colour image of ``size`` (width, height)."""
    require_extra("explain", "the Grad-CAM heat map")
    from matplotlib import colormaps

    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    small = Image.fromarray((cam * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    # a 256-entry colour table looked up per pixel gives the same colours as colouring the full-size map, without
    # the float64 RGBA copy of a large image that matplotlib's colormap call would allocate
    lut = (colormaps[colormap](np.arange(256, dtype=np.float32) / 255.0)[:, :3] * 255).astype(np.uint8)
    return Image.fromarray(lut[np.asarray(small)], mode="RGB")


def model_view(image: Image.Image, resize: str = "squash") -> Image.Image:
    """The part of the image the model saw: all of it (squash) or the centre square (center_crop)."""
    image = image.convert("RGB")
    if resize != "center_crop":
        return image
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def overlay_cam(
    image: Image.Image, cam: np.ndarray, alpha: float = 0.5, *, resize: str = "squash", colormap: str = "jet"
) -> Image.Image:
    """Blend the heat map over the image: ``alpha`` = 0 shows the image only, 1 the heat map only.

    ``resize`` is the run's preprocessing mode, so the map lands on the region the model saw.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    base = model_view(image, resize)
    heat = heatmap_image(cam, base.size, colormap)
    return Image.blend(base, heat, float(alpha))


THUMBNAIL = 224


def thumbnail_b64(image: Image.Image, size: int = THUMBNAIL) -> str:
    """A JPEG thumbnail (longest side ``size``) as base64, for a self-contained HTML page."""
    im = image.convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=82)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def open_for_display(path: str) -> Image.Image | None:
    """The image at ``path`` for a page's thumbnail, or None if it cannot be read."""
    # the data layer's decoder first (DICOM, 16-bit); plain Pillow as a fallback; a missing or unreadable
    # image must not stop the report (its gallery card says "image unavailable"); a large JPEG is decoded at a
    # reduced scale that still leaves twice the thumbnail's pixels
    try:
        from medclf.data.images import load_image

        return load_image(path, min_side=2 * THUMBNAIL)
    except Exception:
        pass
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception:
        return None
