"""Dataset audit: what is wrong with the data before anyone trains on it.

Counts per class and split, image sizes and modes, unreadable files, exact duplicates (content hash), near
duplicates (256-bit perceptual hash) within and across splits with label conflicts flagged, group leakage across
splits, images per group, class imbalance and metadata missingness. Every image is read and decoded once, in a
thread pool (Pillow decodes outside the GIL). Nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf._atomic import atomic_write_json, atomic_write_text
from medclf._lazy import require_extra
from medclf.data.dataset import Dataset, load_dataset
from medclf.data.splits import group_leaks, small_split_warnings, split_makeup_warnings, summarize_split

__all__ = ["NEAR_DUPLICATE_THRESHOLD", "audit_dataset", "format_audit", "write_audit"]

NEAR_DUPLICATE_THRESHOLD = 20
"""Largest Hamming distance (of 256 bits) between perceptual hashes that counts as a near duplicate. On the real
sets here distinct chest X-rays are >= 38 apart and resized/re-encoded copies <= 20."""

_HASH_SIZE = 16  # 16x16 = 256-bit pHash: 64 bits put distinct chest X-rays only ~4 bits apart
# imagehash's pHash looks at a 64x64 copy (hash size x 4); a large JPEG is decoded at a reduced scale that keeps
# at least four times that
_DECODE_SIDE = 4 * 4 * _HASH_SIZE
_SHOW_BAD = 20  # bad files named in the printed summary; audit.json lists them all


@dataclass
class _ImageFacts:
    path: str
    sha: str | None = None
    phash: np.ndarray | None = None
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    error: str | None = None


def _examine(path: str) -> _ImageFacts:
    import imagehash

    from medclf.data.images import describe_image_bytes, load_image_bytes, read_error
    from medclf.errors import BadImageError

    facts = _ImageFacts(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        # the same reason + fix as load_image gives (e.g. "symbolic link loop; replace the link ...")
        facts.error = read_error(Path(path), exc).reason
        return facts
    facts.sha = hashlib.blake2b(data, digest_size=16).hexdigest()
    info = describe_image_bytes(data)
    facts.format, facts.mode = info["format"], info["mode"]  # type: ignore[assignment]
    try:
        im = load_image_bytes(data, path, min_side=_DECODE_SIDE)
    except BadImageError as exc:
        facts.error = exc.reason
        return facts
    stored = info["size"]
    reduced = stored is not None and im.size not in (stored, stored[::-1])  # type: ignore[index]
    # a reduced decode: the size that decoding every pixel gives, from the header and its EXIF orientation
    facts.size = info["shown_size"] if reduced else im.size  # type: ignore[assignment]
    if facts.mode is None:
        facts.mode = im.mode
    bits = imagehash.phash(im, hash_size=_HASH_SIZE).hash.flatten()
    facts.phash = np.packbits(bits).view(">u8").astype(np.uint64)
    return facts


def _components(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for a, b in pairs:
        for i in (a, b):
            comps.setdefault(find(i), [])
    for i in range(n):
        r = find(i)
        if r in comps:
            comps[r].append(i)
    return sorted((sorted(set(c)) for c in comps.values()), key=lambda c: c[0])


def _near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for i in range(len(hashes) - 1):
        d = np.bitwise_count(hashes[i] ^ hashes[i + 1 :]).sum(axis=1)
        for j in np.flatnonzero(d <= threshold):
            out.append((i, i + 1 + int(j), int(d[j])))
    return out


def _roles(rows: pd.DataFrame) -> list[str]:
    """Where each row is used: split, fold/split, or 'all'."""
    if "fold" in rows.columns and "split" in rows.columns:
        return [f"fold{int(f)}/{s}" for f, s in zip(rows["fold"], rows["split"], strict=True)]
    if "fold" in rows.columns:
        return [f"fold{int(f)}" for f in rows["fold"]]
    if "split" in rows.columns:
        return [str(s) for s in rows["split"]]
    return ["all"] * len(rows)


def _describe_group(
    idx: list[int], table: pd.DataFrame, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    sub = table.iloc[idx]
    labels = sorted(set(sub["label"].astype(str)))
    roles = sorted(set(sub["role"]))
    item = {
        "paths": list(sub["path"]),
        "labels": labels,
        "splits": roles,
        "label_conflict": len(labels) > 1,
        "cross_split": len({r for r in roles if r != "all"}) > 1 and _same_fold(roles),
    }
    item.update(extra or {})
    return item


def _same_fold(roles: list[str]) -> bool:
    # pre-made folds: the same picture in fold1/train and fold2/test is by design; only within a fold it leaks
    folds = [r.split("/")[0] for r in roles if "/" in r]
    return not folds or len(folds) != len(set(folds))


def audit_dataset(
    data: str | os.PathLike[str] | Dataset | Any,
    *,
    records: pd.DataFrame | None = None,
    workers: int | None = None,
    near_threshold: int = NEAR_DUPLICATE_THRESHOLD,
    progress: bool = False,
    predictions: str | os.PathLike[str] | None = None,
    label_issues_top: int = 24,
    rank_by: str = "self_confidence",
) -> dict[str, Any]:
    """Audit a dataset (folder, spec, or loaded `Dataset`); `records` (e.g. a split CSV) replaces its records.

    ``predictions`` (a `medclf cv` folder, a run folder or a predictions CSV) adds the ``label_issues`` section:
    probable label errors by confident learning (``medclf.data.label_issues``), the first ``label_issues_top``
    shown in the report. Returns a JSON-serialisable dict; `write_audit` writes audit.json and audit.html (and
    label_issues.csv / label_issues.html), `format_audit` the summary.
    """
    require_extra("audit", "medclf data audit")
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(data, skip_bad=True, verify="none")
    recs = (records if records is not None else ds.records).reset_index(drop=True).copy()
    recs["role"] = _roles(recs)
    classes = list(ds.classes)
    label_issues = None
    if predictions is not None:  # before decoding every image: a wrong predictions folder fails at once
        from medclf.data.label_issues import label_issues_for

        found = label_issues_for(predictions, recs, classes, rank_by=rank_by)
        label_issues = found.to_dict(top=label_issues_top)

    paths = list(dict.fromkeys(recs["path"]))
    workers = workers or min(4, max(2, (os.cpu_count() or 2)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(_examine, paths, chunksize=32))
    by_path = {f.path: f for f in facts}

    bad = [{"path": w, "reason": r} for w, r in ds.bad_files]
    bad += [{"path": f.path, "reason": f.error} for f in facts if f.error]
    readable = {f.path for f in facts if f.error is None}

    uniq = recs.drop_duplicates("path")
    counts = _counts(recs, uniq, classes)
    nonzero = [v for v in counts["by_class"].values() if v > 0]

    sizes = Counter(f"{f.size[0]}x{f.size[1]}" for f in facts if f.size)
    modes = Counter(str(f.mode) for f in facts if f.mode)
    formats = Counter(str(f.format) for f in facts if f.format)

    # duplicates are looked for per fold for pre-made folds: every fold holds a copy of the data by design
    table = recs.copy()
    table["sha"] = [by_path[p].sha for p in table["path"]]
    table["part"] = (
        table["fold"].astype(str) if "fold" in table.columns and "split" in table.columns else "all"
    )
    exact, exact_details = _exact_duplicates(table)
    near = _near_duplicates(table, readable, by_path, near_threshold)

    groups = _groups(uniq, ds.group_rule)
    leakage = group_leaks(recs)
    split_makeup = (
        json.loads(summarize_split(recs, classes).to_json(orient="records"))  # plain JSON types
        if "split" in recs or "fold" in recs
        else []
    )

    meta = _metadata(uniq, ds.metadata)

    report: dict[str, Any] = {
        "dataset": {
            "name": ds.name,
            "root": str(ds.root),
            "layout": ds.layout,
            "classes": classes,
            "records": len(recs),
            "images": len(paths),
            "dropped_by_subset": ds.dropped,
        },
        "counts": counts,
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
        "image_sizes": dict(sizes.most_common()),
        "image_modes": dict(modes.most_common()),
        "image_formats": dict(formats.most_common()),
        "bad_files": bad,
        "exact_duplicates": exact,
        "exact_duplicate_details": exact_details,
        "near_duplicates": near,
        "near_duplicate_threshold": {
            "hash": f"phash {_HASH_SIZE * _HASH_SIZE} bits",
            "max_distance": near_threshold,
        },
        "groups": groups,
        "group_leakage": leakage,
        "split_makeup": split_makeup,
        "metadata": meta,
    }
    if label_issues is not None:
        report["label_issues"] = label_issues
    report["warnings"] = _warnings(report) + split_makeup_warnings(recs) + small_split_warnings(recs, classes)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def _counts(recs: pd.DataFrame, uniq: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    counts: dict[str, Any] = {"by_class": {c: int((uniq["label"] == c).sum()) for c in classes}}
    if "split" in recs.columns or "fold" in recs.columns:
        counts["by_split"] = {
            role: {c: int(n) for c, n in part["label"].value_counts().reindex(classes, fill_value=0).items()}
            for role, part in recs.groupby("role", sort=False)
        }
    return counts


def _exact_duplicates(table: pd.DataFrame) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Byte-identical files within each part of ``table`` (columns sha, part): their paths and descriptions."""
    exact: list[list[str]] = []
    exact_details: list[dict[str, Any]] = []
    for (_, _sha), grp in table[table["sha"].notna()].groupby(["part", "sha"], sort=False):
        if grp["path"].nunique() > 1:
            idx = list(grp.drop_duplicates("path").index)
            exact.append(sorted(table.loc[idx, "path"]))
            exact_details.append(_describe_group([table.index.get_loc(i) for i in idx], table))
    order = np.argsort([g[0] for g in exact], kind="stable")
    return [exact[i] for i in order], [exact_details[i] for i in order]


def _near_duplicates(
    table: pd.DataFrame, readable: set[str], by_path: dict[str, Any], threshold: int
) -> list[dict[str, Any]]:
    """Groups of perceptually near-identical images (not byte-identical) within each part of ``table``."""
    near: list[dict[str, Any]] = []
    for _part, grp in table[table["path"].isin(readable)].groupby("part", sort=False):
        grp = grp.drop_duplicates("path")
        if len(grp) < 2:
            continue
        hashes = np.stack([by_path[p].phash for p in grp["path"]])
        pairs = _near_pairs(hashes, threshold)
        for comp in _components([(a, b) for a, b, _ in pairs], len(grp)):
            sub = grp.iloc[comp]
            if sub["sha"].nunique() == 1:
                continue  # byte-identical: already an exact duplicate
            in_comp = set(comp)
            max_d = max(d for a, b, d in pairs if a in in_comp and b in in_comp)
            near.append(
                _describe_group([table.index.get_loc(i) for i in sub.index], table, {"max_distance": max_d})
            )
    near.sort(key=lambda g: g["paths"][0])
    return near


def _groups(uniq: pd.DataFrame, rule: Any) -> dict[str, Any]:
    per_group = uniq.groupby("group").size() if len(uniq) else pd.Series(dtype=int)
    multi = per_group[per_group > 1]
    return {
        "rule": rule,
        "n_groups": int(per_group.size),
        "multi_image_groups": int(multi.size),
        "images_in_multi_image_groups": int(multi.sum()),
        "max_images_per_group": int(per_group.max()) if per_group.size else 0,
        "mean_images_per_group": round(float(per_group.mean()), 3) if per_group.size else 0.0,
        "largest": [
            {"group": str(g), "images": int(n)}
            for g, n in per_group.sort_values(ascending=False)[:10].items()
        ],
    }


def _metadata(uniq: pd.DataFrame, kinds: dict[str, str]) -> dict[str, Any]:
    """Missing values and ranges (numeric) or the most common values of each metadata column."""
    meta: dict[str, Any] = {}
    for col, kind in kinds.items():
        if col not in uniq.columns:
            continue
        values = uniq[col]
        n_missing = int(values.isna().sum())
        entry: dict[str, Any] = {
            "type": kind,
            "missing": n_missing,
            "missing_fraction": round(n_missing / max(len(values), 1), 4),
        }
        if kind == "numeric" and values.notna().any():
            v = values.astype(float)
            entry.update(min=float(v.min()), max=float(v.max()), mean=round(float(v.mean()), 3))
        else:
            entry["values"] = {
                str(k): int(n) for k, n in values.dropna().astype(str).value_counts()[:15].items()
            }
        meta[col] = entry
    return meta


def _warnings(r: dict[str, Any]) -> list[str]:
    w = []
    if r["bad_files"]:
        w.append(
            f"{len(r['bad_files'])} unreadable or unusable file(s): fix or delete them, or train with --skip-bad"
        )
    ex = r["exact_duplicate_details"]
    if ex:
        conf = sum(g["label_conflict"] for g in ex)
        cross = sum(g["cross_split"] for g in ex)
        w.append(
            f"{len(ex)} group(s) of exact duplicates ({conf} with conflicting labels, {cross} across splits): "
            "keep one copy of each"
        )
    nd = r["near_duplicates"]
    if nd:
        conf = sum(g["label_conflict"] for g in nd)
        cross = sum(g["cross_split"] for g in nd)
        w.append(
            f"{len(nd)} group(s) of near duplicates ({conf} with conflicting labels, {cross} across splits): review "
            "them; group them (--group-by) so each stays in one split"
        )
    if r["group_leakage"]:
        w.append(
            f"{len(r['group_leakage'])} group(s) appear in more than one split: patient leakage inflates test "
            "results; re-split with `medclf data split --group-by ...`"
        )
    g = r["groups"]
    if g["multi_image_groups"]:
        w.append(
            f"{g['multi_image_groups']} group(s) hold several images ({g['images_in_multi_image_groups']} images, up "
            f"to {g['max_images_per_group']} per group): split by group ({g['rule']}) or results leak"
        )
    if r["imbalance_ratio"] and r["imbalance_ratio"] >= 3:
        w.append(
            f"class imbalance {r['imbalance_ratio']}:1 — report balanced accuracy / per-class recall, and keep "
            "class weights on"
        )
    for col, m in r["metadata"].items():
        if m["missing"]:
            w.append(f"metadata {col!r}: {m['missing']} missing value(s) ({m['missing_fraction']:.1%})")
    li = r.get("label_issues")
    if li and li["flagged"]:
        w.append(
            f"{li['flagged']} image(s) ({li['flagged_fraction']:.1%} of {li['images']} scored) have an improbable "
            "given label (confident learning): review them (label_issues.csv); nothing was deleted or relabelled, "
            "and `--exclude label_issues.csv` retrains without them"
        )
    return w


def format_audit(r: dict[str, Any]) -> str:
    """The printed summary of an audit."""
    d = r["dataset"]
    lines = [
        f"Audit of {d['name']} ({d['root']}): layout {d['layout']}, {d['images']} images, "
        f"{len(d['classes'])} classes, {r['seconds']} s",
        "",
        "images per class: "
        + ", ".join(f"{c} {n}" for c, n in r["counts"]["by_class"].items())
        + (f"  (imbalance {r['imbalance_ratio']}:1)" if r["imbalance_ratio"] else ""),
    ]
    for role, per in (r["counts"].get("by_split") or {}).items():
        lines.append(f"  {role:>12}: " + ", ".join(f"{c} {n}" for c, n in per.items()))
    lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in list(r["image_sizes"].items())[:6]))
    lines.append("modes: " + ", ".join(f"{k} ({v})" for k, v in r["image_modes"].items()))
    g = r["groups"]
    lines.append(
        f"groups ({g['rule'] or 'none: one image per group'}): {g['n_groups']}, "
        f"{g['multi_image_groups']} with several images (max {g['max_images_per_group']})"
    )
    lines.append(
        f"bad files: {len(r['bad_files'])}; exact-duplicate groups: {len(r['exact_duplicates'])}; "
        f"near-duplicate groups: {len(r['near_duplicates'])}; groups leaking across splits: {len(r['group_leakage'])}"
    )
    for group in r["exact_duplicates"][:5]:
        lines.append("  duplicate: " + " = ".join(group))
    if len(r["exact_duplicates"]) > 5:
        lines.append(f"  ... {len(r['exact_duplicates']) - 5} more in audit.json")
    for b in r["bad_files"][:_SHOW_BAD]:
        lines.append(f"  bad: {b['path']}: {b['reason']}")
    if len(r["bad_files"]) > _SHOW_BAD:
        lines.append(f"  ... {len(r['bad_files']) - _SHOW_BAD} more bad files in audit.json")
    if r["metadata"]:
        lines.append(
            "metadata missing: " + ", ".join(f"{c} {m['missing']}" for c, m in r["metadata"].items())
        )
    li = r.get("label_issues")
    if li:
        lines.append(
            f"probable label errors: {li['flagged']} of {li['images']} scored images ("
            + ", ".join(f"{c} {v['flagged']}" for c, v in li["per_class"].items())
            + f"); ranked by {li['method']['rank_by']}, {li['method']['library']}"
        )
        lines.append(f"  source: {li['source']}")
        for row in li["issues"][:5]:
            lines.append(
                f"  #{row['rank']} {row['path']}: given {row['given_label']}, suggested {row['suggested_label']} "
                f"(score {row['score']:.3f})"
            )
    if r["warnings"]:
        lines.append("")
        lines.extend(f"! {w}" for w in r["warnings"])
    return "\n".join(lines)


def write_audit(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `audit.json` and a self-contained `audit.html` (inline CSS, no scripts, no images); with a
    ``label_issues`` section also `label_issues.csv` (its gallery: ``medclf.explain.label_gallery``)."""
    require_extra("audit", "medclf data audit")
    import jinja2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if report.get("label_issues"):
        from medclf.data.label_issues import write_label_issues_csv

        write_label_issues_csv(report["label_issues"], out / "label_issues.csv")
    atomic_write_json(out / "audit.json", report)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medclf.data", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    html = env.get_template("audit.html.j2").render(r=report)
    atomic_write_text(out / "audit.html", html)
    return out / "audit.json", out / "audit.html"
