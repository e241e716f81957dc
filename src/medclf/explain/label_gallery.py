"""The gallery of probable label errors (`medclf data audit --predictions`): each suspect's thumbnail beside the
Grad-CAM of its suggested label by the model that scored it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medclf._atomic import atomic_write_text
from medclf.errors import MedclfError
from medclf.explain.overlay import open_for_display, thumbnail_b64

__all__ = ["write_label_issue_gallery"]


def write_label_issue_gallery(
    section: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    explainer: Callable[[str | None], tuple[Any, str | None]] | None = None,
    method: str = "gradcam",
) -> Path:
    """``out_dir/label_issues.html``: the top suspects of an audit's ``label_issues`` section as thumbnails, each
    with the Grad-CAM of the suggested label by the model that scored it. ``explainer`` maps the model folder a
    suspect names to ``(an object with .explain(path, target=, method=), why not)``; None shows thumbnails only."""
    import jinja2

    import medclf
    from medclf._lazy import has_extra

    cards, why_not = [], set()
    gradcam = explainer is not None
    if gradcam and not has_extra("explain"):
        gradcam = False
        why_not.add("Grad-CAM needs the explain extra: pip install 'medclf[explain]'")
    elif not gradcam:
        why_not.add("Grad-CAM was turned off (--no-gradcam)")
    for row in section["issues"][: section["top_n"]]:
        image = open_for_display(row["path"])
        overlay = None
        if gradcam and image is not None:
            predictor, why = explainer(row.get("model"))  # type: ignore[misc]
            if predictor is None:
                why_not.add(str(why))
            else:
                # one unexplainable image costs its overlay, not the page
                try:
                    target = row["suggested_label"]
                    overlay = thumbnail_b64(
                        predictor.explain(row["path"], target=target, method=method).overlay
                    )
                except (MedclfError, OSError) as exc:
                    why_not.add(f"{row['path']}: {exc}")
        cards.append(
            {**row, "thumb": thumbnail_b64(image) if image is not None else None, "overlay": overlay}
        )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medclf.explain", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    html = env.get_template("label_issues.html.j2").render(
        s=section,
        cards=cards,
        explained=any(c["overlay"] for c in cards),
        why_not=sorted(why_not),
        disclaimer=medclf.DISCLAIMER,
    )
    out = Path(out_dir) / "label_issues.html"
    atomic_write_text(out, html)
    return out
