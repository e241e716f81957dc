from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medclf._atomic import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"v": np.float32(0.5), "a": np.arange(3)})
    assert json.loads(p.read_text()) == {"v": 0.5, "a": [0, 1, 2]}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_file_has_ordinary_permissions(tmp_path):
    p = tmp_path / "r.html"
    atomic_write_text(p, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
