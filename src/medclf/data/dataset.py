"""`load_dataset`: a data folder or a `DatasetSpec` -> `Dataset` (records table, class order, metadata types).

The records contract is in docs/architecture.md §1.
"""

from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf.data.layouts import GROUP_COLUMN_CANDIDATES, RawImage, detect_layout, scan
from medclf.data.spec import SPEC_FILENAME, DatasetSpec, compile_capture_regex
from medclf.errors import ConfigError, DataError

__all__ = ["VERIFY_MODES", "Dataset", "load_dataset", "resolve_spec"]

VERIFY_MODES = ("header", "full", "none")
"""How much of each image `load_dataset` checks: header (fast: opens it and reads its size), full (decodes it),
none (only that the file exists)."""


@dataclass
class Dataset:
    """A loaded dataset: one row per (image, fold) in `records`; see docs/architecture.md §1."""

    records: pd.DataFrame
    classes: list[str]
    metadata: dict[str, str]
    spec: DatasetSpec
    layout: str
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    """(path or CSV row, reason) of every input skipped with skip_bad=True."""
    dropped: int = 0
    """Images left out by `subset`."""
    group_rule: str | None = None
    """How `group` was made: a column name, 'regex:PATTERN', or None (each file its own group)."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def root(self) -> Path:
        return Path(str(self.spec.root))

    @property
    def name(self) -> str:
        return self.spec.name or self.root.name

    def class_counts(self) -> pd.DataFrame:
        """Images per class, per split (and fold) when the data has them."""
        keys = [c for c in ("fold", "split") if c in self.records.columns]
        if not keys:
            return self.records["label"].value_counts().reindex(self.classes, fill_value=0).to_frame("images")
        table = self.records.groupby([*keys, "label"]).size().unstack("label", fill_value=0)
        return table.reindex(columns=self.classes, fill_value=0)


def resolve_spec(
    data: str | os.PathLike[str] | DatasetSpec, spec: str | os.PathLike[str] | DatasetSpec | None = None
) -> DatasetSpec:
    """`DATA [--spec SPEC]` on the command line -> one spec.

    DATA is a folder (auto-detected, or described by its own ``dataset.yaml``) or a spec .yaml. An explicit SPEC
    applies its rules (labels, classes, groups, metadata, CSV columns) to DATA: to a folder as they are (its own
    ``dataset.yaml`` is then not read), to a DATA spec wherever that spec leaves a field unset. SPEC's layout
    describes SPEC's own root: on another folder the layout is detected there, unless a DATA spec names one.
    """
    own: dict[str, Any] = {}  # the fields DATA's own spec sets, which SPEC does not override
    if isinstance(data, DatasetSpec):
        base = data
        own = _fields_set(data)
    else:
        p = Path(data).expanduser()
        if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
            base = DatasetSpec.from_yaml(p)
            own = _fields_set(base)
        elif p.is_dir() and spec is None and (p / SPEC_FILENAME).is_file():
            base = DatasetSpec.from_yaml(p / SPEC_FILENAME)
            if base.root is None:
                base = base.with_root(p)
        elif p.exists() and not p.is_dir():
            raise DataError(f"{p} is neither a data folder nor a dataset spec .yaml; pass one of those")
        else:
            base = DatasetSpec(root=str(p.resolve()) if p.exists() else str(p))
    if spec is None:
        return base
    s = spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_yaml(spec)
    merged = dataclasses.replace(s, **own)
    if base.root is None:
        return merged
    root = Path(base.root).expanduser().resolve()
    if "layout" in own or s.root is None or Path(s.root).expanduser().resolve() == root or not root.is_dir():
        return merged.with_root(root)
    # SPEC was written for another folder (a run's dataset.yaml, a recipe's spec): DATA is read in its own layout
    # and named after itself
    return dataclasses.replace(
        merged.with_root(root), layout=_detect_layout(root, merged), name=own.get("name")
    )


def _fields_set(spec: DatasetSpec) -> dict[str, Any]:
    default = DatasetSpec()
    return {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if f.name != "root" and getattr(spec, f.name) != getattr(default, f.name)
    }


def _detect_layout(root: Path, spec: DatasetSpec) -> str:
    if spec.csv and (root / spec.csv).is_file():
        return "csv"  # a table the spec names is the data's, even when other CSVs sit beside it
    return detect_layout(root, tuple(spec.extensions))


def load_dataset(
    spec_or_path: str | os.PathLike[str] | DatasetSpec,
    *,
    skip_bad: bool = False,
    verify: str = "header",
    max_pixels: int | None = None,
) -> Dataset:
    """Load a dataset folder or spec. Bad inputs raise one `DataError` that names them and the fix, or with
    `skip_bad=True` are left out and listed in `Dataset.bad_files`."""
    from medclf.data.images import MAX_PIXELS

    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify={verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    spec, root = _spec_with_root(spec_or_path)
    layout = spec.layout if spec.layout != "auto" else _detect_layout(root, spec)
    report = _BadInputs(skip_bad)
    images, columns = scan(root, layout, spec, report)
    if layout == "files" and spec.label_regex is None:
        raise ConfigError(
            f"{root}: images without class folders or a CSV; set `label_regex:` in a dataset spec (label = first "
            "capture group of the file name), or sort the images into one folder per class"
        )
    kept, dropped = _labelled(images, spec, report)
    kept, classes = _known_classes(kept, spec, root, layout, report)
    if verify != "none":
        kept = _verified(kept, verify, max_pixels or MAX_PIXELS, report)
    report.stop()
    records, metadata, group_rule = _records(kept, spec, layout, columns)
    return Dataset(
        records=records,
        classes=classes,
        metadata=metadata,
        spec=spec if spec.layout != "auto" else _with_layout(spec, layout),
        layout=layout,
        bad_files=report.inputs,
        dropped=dropped,
        group_rule=group_rule,
    )


class _BadInputs:
    """``report(where, reason)`` for every bad input of one `load_dataset` call: they are collected so that one
    error lists them all (or, with ``skip_bad``, they are left out and listed)."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.inputs: list[tuple[str, str]] = []

    def __call__(self, where: str, reason: str) -> None:
        self.inputs.append((where, reason))

    def stop(self) -> None:
        """Raise the one `DataError` for the bad inputs so far, unless they are to be skipped."""
        if self.inputs and not self.skip_bad:
            raise DataError(_bad_inputs_message(self.inputs))


def _spec_with_root(spec_or_path: str | os.PathLike[str] | DatasetSpec) -> tuple[DatasetSpec, Path]:
    """The resolved spec, its root made explicit, after checking that the root is an existing folder."""
    spec = resolve_spec(spec_or_path)
    if spec.root is None:
        raise ConfigError("dataset spec has no root; set `root:` to the data folder")
    root = Path(spec.root)
    if not root.exists():
        raise DataError(
            f"dataset root {root} does not exist; fix `root:` in the spec or pass the folder that holds the data"
        )
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder; pass the folder that holds the data")
    return spec.with_root(root), root


def _labelled(
    images: list[RawImage], spec: DatasetSpec, report: _BadInputs
) -> tuple[list[tuple[RawImage, str]], int]:
    """(image, class) of every image with a label after `label_regex` and `class_map`, and how many `subset`
    left out; an image without a label is a bad input."""
    label_rx = compile_capture_regex(spec.label_regex, "label_regex") if spec.label_regex else None
    kept: list[tuple[RawImage, str]] = []
    dropped = 0
    for im in images:
        raw = im.folder_label
        if label_rx is not None:
            m = label_rx.search(os.path.basename(im.path))
            if m and m.group(1) is not None:
                raw = m.group(1)
        if raw is None:
            report(
                im.where,
                f"file name does not match label_regex {spec.label_regex!r}; rename the file, widen the regex, or "
                "move the file out of the data folder",
            )
            continue
        label = spec.class_map.get(raw, raw)
        if spec.subset is not None and label not in spec.subset:
            dropped += 1
            continue
        kept.append((im, label))
    return kept, dropped


def _known_classes(
    kept: list[tuple[RawImage, str]], spec: DatasetSpec, root: Path, layout: str, report: _BadInputs
) -> tuple[list[tuple[RawImage, str]], list[str]]:
    """The images whose label is one of the classes, and the class order; every declared class needs images
    and the data at least two classes."""
    classes = list(spec.classes) if spec.classes else (list(spec.subset) if spec.subset else None)
    if classes is not None:
        known = set(classes)
        ok = []
        for im, label in kept:
            if label in known:
                ok.append((im, label))
            else:
                report(
                    im.where,
                    f"label {label!r} is not one of the classes ({', '.join(classes)}); add it to `classes:`, rename "
                    "it with `class_map:`, or leave it out with `subset:`",
                )
        kept = ok
    else:
        classes = sorted({label for _, label in kept})
    if not kept:
        report.stop()
        raise DataError(f"{root}: no usable images (layout {layout}); check the folder and the dataset spec")
    present = {label for _, label in kept}
    for c in classes:
        if c not in present:
            report(
                f"{root} class {c!r}",
                "has no images; add images of this class, or remove it from `classes:`/`subset:` in the spec",
            )
    if len(present) < 2:
        report.stop()
        raise DataError(
            f"{root}: only one class ({next(iter(present))!r}) found; a classifier needs at least two — check the "
            "layout (class folders, CSV label column, or label_regex)"
        )
    return kept, classes


def _verified(
    kept: list[tuple[RawImage, str]], verify: str, max_pixels: int, report: _BadInputs
) -> list[tuple[RawImage, str]]:
    """The images that pass the `verify` check (header or full decode); the others are bad inputs."""
    problems = _verify_images([im.path for im, _ in kept], verify, max_pixels)
    if not problems:
        return kept
    ok = []
    for im, label in kept:
        reason = problems.get(im.path)
        if reason is None:
            ok.append((im, label))
        else:
            report(im.where if im.where != im.path else im.path, reason)
    return ok


def _records(
    kept: list[tuple[RawImage, str]], spec: DatasetSpec, layout: str, columns: dict[str, str]
) -> tuple[pd.DataFrame, dict[str, str], str | None]:
    """The records table of the kept images (docs/architecture.md §1), its metadata types and its group rule."""
    table: dict[str, Any] = {
        "path": [im.path for im, _ in kept],
        "label": [label for _, label in kept],
    }
    group_rule = _group_rule(spec, layout, columns, kept)
    table["group"] = _groups(kept, group_rule, layout)
    if any(im.split is not None for im, _ in kept):
        table["split"] = [im.split for im, _ in kept]
    if any(im.fold is not None for im, _ in kept):
        table["fold"] = [int(im.fold) if im.fold is not None else -1 for im, _ in kept]
        table["augmented"] = [bool(im.augmented) for im, _ in kept]
    metadata: dict[str, str] = {}
    if layout == "csv":
        meta_cols = _metadata_columns(spec, columns, kept, group_rule)
        for col, kind in meta_cols.items():
            values, kind = _typed_column(
                [im.row[col] for im, _ in kept], [im.where for im, _ in kept], col, kind, spec
            )
            table[col] = values
            metadata[col] = kind
    # object columns keep None as None (pandas >= 3 would infer a string dtype that turns it into NaN)
    records = pd.DataFrame(
        {
            col: pd.Series(values, dtype="float64" if metadata.get(col) == "numeric" else object)
            if col not in ("fold", "augmented")
            else pd.Series(values)
            for col, values in table.items()
        }
    )
    # a CSV's group column becomes `group` and is not kept under its own name: the rule travels with the
    # records so that a later group_by naming that column (`--group-by lesion_id`) is understood
    records.attrs["group_rule"] = group_rule
    return records, metadata, group_rule


_BAD_INPUTS_SHOWN = 5
"""How many bad inputs the error of `load_dataset` names (the rest are counted)."""


def _bad_inputs_message(bad: list[tuple[str, str]]) -> str:
    """One line for `load_dataset`'s error: the first `_BAD_INPUTS_SHOWN` bad inputs by reason, the count, the fix."""
    fix = "pass --skip-bad / skip_bad=True to skip and list bad inputs"
    if len(bad) == 1:
        where, reason = bad[0]
        return f"{where}: {reason} (or {fix})"
    by_reason: dict[str, list[str]] = {}
    for where, reason in bad:
        by_reason.setdefault(reason, []).append(where)
    parts, named, covered = [], 0, 0  # covered: inputs whose reason is given (named or counted)
    for reason, wheres in by_reason.items():
        room = _BAD_INPUTS_SHOWN - named
        if room <= 0:
            break
        names = wheres[:room]
        named, covered = named + len(names), covered + len(wheres)
        extra = f" and {len(wheres) - len(names)} more" if len(wheres) > len(names) else ""
        parts.append(f"{', '.join(names)}{extra}: {reason}")
    more = f"; and {len(bad) - covered} more" if len(bad) > covered else ""
    return f"{len(bad)} bad inputs — {'; '.join(parts)}{more} (fix or remove them, or {fix})"


def _with_layout(spec: DatasetSpec, layout: str) -> DatasetSpec:
    import dataclasses

    return dataclasses.replace(spec, layout=layout)


def _verify_images(paths: list[str], mode: str, max_pixels: int) -> dict[str, str]:
    from medclf.data.images import check_image_header, load_image
    from medclf.errors import BadImageError

    def check(p: str) -> str | None:
        try:
            if mode == "full":
                load_image(p, max_pixels=max_pixels)
            else:
                check_image_header(p, max_pixels=max_pixels)
        except BadImageError as exc:
            return exc.reason
        return None

    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, paths, chunksize=64))
    return {p: r for p, r in zip(paths, results, strict=True) if r is not None}


def _group_rule(
    spec: DatasetSpec, layout: str, columns: dict[str, str], kept: list[tuple[RawImage, str]]
) -> str | None:
    if spec.group_by:
        return spec.group_by
    if layout == "csv" and kept:
        header = list(kept[0][0].row)
        lower = {c.lower(): c for c in header}
        for cand in GROUP_COLUMN_CANDIDATES:
            if cand in lower and lower[cand] not in (columns.get("image"), columns.get("label")):
                return lower[cand]
    return None


def _default_groups(kept: list[tuple[RawImage, str]], layout: str) -> list[str]:
    stems = [Path(im.path).stem for im, _ in kept]
    if layout == "kfold":
        return stems  # one image appears in every fold: the same stem is the same image
    counts: dict[str, set[str]] = {}
    for s, (im, _) in zip(stems, kept, strict=True):
        counts.setdefault(s, set()).add(im.path)
    # two different files with one stem (benign/10.jpg, malignant/10.jpg) must not become one group
    return [
        s if len(counts[s]) == 1 else str(Path(im.rel).with_suffix(""))
        for s, (im, _) in zip(stems, kept, strict=True)
    ]


def _groups(kept: list[tuple[RawImage, str]], rule: str | None, layout: str) -> list[str]:
    default = _default_groups(kept, layout)
    if rule is None:
        return default
    if rule.startswith("regex:"):
        rx = compile_capture_regex(rule[len("regex:") :], "group_by")
        out = []
        for (im, _), d in zip(kept, default, strict=True):
            m = rx.search(os.path.basename(im.path))
            out.append(m.group(1) if m and m.group(1) else d)
        return out
    if not kept:
        return []
    if rule not in kept[0][0].row:
        cols = ", ".join(kept[0][0].row) or "none: this layout has no table"
        raise ConfigError(
            f"group_by column {rule!r} not found (columns: {cols}); use a column name or 'regex:PATTERN' on the file name"
        )
    return [im.row.get(rule) or d for (im, _), d in zip(kept, default, strict=True)]


def _metadata_columns(
    spec: DatasetSpec, columns: dict[str, str], kept: list[tuple[RawImage, str]], group_rule: str | None
) -> dict[str, str | None]:
    header = list(kept[0][0].row) if kept else []
    if spec.metadata is None:
        used = {columns.get("image"), columns.get("label"), group_rule}
        return {c: None for c in header if c not in used}
    wanted = spec.metadata if isinstance(spec.metadata, dict) else {c: None for c in spec.metadata}
    for col in wanted:
        if col not in header:
            raise ConfigError(
                f"metadata column {col!r} is not in the CSV (columns: {', '.join(header)}); fix `metadata:` in the spec"
            )
    return dict(wanted)


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _typed_column(
    raw: list[str], where: list[str], col: str, kind: str | None, spec: DatasetSpec
) -> tuple[list[Any], str]:
    missing = set(spec.missing_values) | {""}
    cells = [None if v is None or v.strip() in missing else v.strip() for v in raw]
    if kind is None:
        present = [c for c in cells if c is not None]
        kind = "numeric" if present and all(_NUMBER.match(c) for c in present) else "categorical"
    if kind == "numeric":
        out: list[Any] = []
        for c, w in zip(cells, where, strict=True):
            if c is None:
                out.append(np.nan)
            elif _NUMBER.match(c):
                out.append(float(c))
            else:
                raise DataError(
                    f"{w}: metadata column {col!r} is numeric but holds {c!r}; fix the cell, add the value to "
                    "`missing_values:`, or declare the column categorical in `metadata:`"
                )
        return out, kind
    return cells, kind
