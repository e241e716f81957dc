from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from medclf.explain.gallery import run_explainer


def test_run_explainer_gives_an_overlay_for_a_path(tiny_run: Path) -> None:
    explain = run_explainer(tiny_run)
    assert explain is not None
    path = pd.read_csv(tiny_run / "split.csv")["path"].iloc[0]
    overlay = explain(str(path))
    assert isinstance(overlay, Image.Image)
    assert overlay.size[0] > 0
    # an overlay is not the plain image: the heat map is drawn over it
    plain = Image.open(path).convert("RGB").resize(overlay.size)
    diff = sum(abs(a - b) for a, b in zip(plain.tobytes(), overlay.convert("RGB").tobytes(), strict=True))
    assert diff > 0
