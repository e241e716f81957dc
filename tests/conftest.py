"""Suite-wide settings and fixtures: small thread pools, a private cache, the real-data switch, and the tiny
trained run folders that the serve, explain and evaluate tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# two cores shared by the suite: one thread each for torch/BLAS keeps tests predictable
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_datasets_dir() -> Path:
    """`../shared/datasets` beside the checkout, or $MEDCLF_SHARED_DATASETS."""
    env = os.environ.get("MEDCLF_SHARED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = shared_datasets_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (a fresh clone has no ../shared/datasets)")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained two-class tiny_cnn run folder (``_fixtures_serve.make_run``)."""
    import torch

    from _fixtures_serve import make_run

    torch.set_num_threads(1)
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def fusion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` with age/sex metadata fused into the model."""
    import torch

    from _fixtures_serve import make_run

    torch.set_num_threads(1)
    return make_run(tmp_path_factory.mktemp("serve_fusion"), fusion=True)


@pytest.fixture(scope="session")
def group_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained three-class run whose positive group is mel + bcc (``_fixtures_serve.make_group_run``)."""
    import torch

    from _fixtures_serve import make_group_run

    torch.set_num_threads(1)
    return make_group_run(tmp_path_factory.mktemp("serve_group"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # feature caches and exported models go to a per-session temp folder, never ~/.cache
    monkeypatch.setenv("MEDCLF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "medclf-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = shared_datasets_dir()
    if root.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {root} (a fresh clone has no ../shared/datasets)")
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)
