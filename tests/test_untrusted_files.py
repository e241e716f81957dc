"""Nothing medclf loads can execute code: no pickle, no plain torch.load, no unsafe YAML, no allow_pickle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medclf"

FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b", re.M), "pickle-family import"),
    (re.compile(r"yaml\.(load|unsafe_load|full_load)\("), "unsafe YAML loader (use yaml.safe_load)"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"pd\.read_pickle|\.to_pickle\("), "pandas pickle"),
]


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert files, f"no sources under {SRC}"
    return files


@pytest.mark.parametrize(("pattern", "what"), FORBIDDEN, ids=[w for _, w in FORBIDDEN])
def test_no_unsafe_deserialisation(pattern: re.Pattern[str], what: str) -> None:
    hits = [
        f"{p.relative_to(SRC)}:{m.group(0)!r}" for p in _sources() for m in pattern.finditer(p.read_text())
    ]
    assert not hits, f"{what}: {hits}"


def test_every_torch_load_is_weights_only() -> None:
    calls = [
        (p, m)
        for p in _sources()
        for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", p.read_text())
    ]
    bad = [f"{p.relative_to(SRC)}: {m.group(0)}" for p, m in calls if "weights_only=True" not in m.group(0)]
    assert not bad, f"torch.load without weights_only=True unpickles arbitrary objects: {bad}"


def test_the_scan_would_catch_a_violation(tmp_path: Path) -> None:
    # the patterns are live: each one matches the thing it forbids
    samples = ["import pickle\n", "yaml.load(f)\n", "np.load(p, allow_pickle=True)\n", "pd.read_pickle(p)\n"]
    for (pattern, _), text in zip(FORBIDDEN, samples, strict=True):
        assert pattern.search(text)
