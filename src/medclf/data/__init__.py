"""Datasets: one `DatasetSpec` per dataset, every folder layout, image decoding (incl. DICOM), leakage-safe
splits, the dataset audit and synthetic data. The records contract is in docs/architecture.md §1."""

from __future__ import annotations

from medclf.data.audit import audit_dataset
from medclf.data.dataset import Dataset, load_dataset, resolve_spec
from medclf.data.images import MAX_PIXELS, load_image, load_image_bytes
from medclf.data.layouts import detect_layout
from medclf.data.spec import DatasetSpec
from medclf.data.splits import (
    make_folds,
    make_split,
    read_split_csv,
    select_fold,
    small_split_warnings,
    summarize_split,
    write_split_csv,
)
from medclf.data.synth import synth_dataset
from medclf.errors import BadImageError

__all__ = [
    "MAX_PIXELS",
    "BadImageError",
    "Dataset",
    "DatasetSpec",
    "audit_dataset",
    "detect_layout",
    "load_dataset",
    "load_image",
    "load_image_bytes",
    "make_folds",
    "make_split",
    "read_split_csv",
    "resolve_spec",
    "select_fold",
    "small_split_warnings",
    "summarize_split",
    "synth_dataset",
    "write_split_csv",
]
