"""Probable label errors: confident learning (cleanlab) on out-of-sample predicted probabilities.

An image whose given label the held-out model finds improbable is a suspect; ``find_label_issues`` flags them with
``cleanlab.filter.find_label_issues``, ranks them by cleanlab's label-quality score (self-confidence or normalised
margin; lower is more suspect) and estimates the noise matrix from cleanlab's confident joint. The predictions must
come from models that did not train on the image: ``medclf cv``'s ``oof_predictions.csv`` covers every image once,
a trained run's ``val_predictions.csv`` and ``test_predictions.csv`` cover only its val and test splits.

Nothing here deletes or relabels an image. ``exclude_from_train`` (``data.exclude``) takes a list of paths out of
the training part of a split only, so val and test, and the figures measured on them, stay as they were.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf._atomic import atomic_path
from medclf.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_TOP",
    "MIN_PER_CLASS",
    "RANK_METHODS",
    "LabelIssues",
    "Predictions",
    "exclude_from_train",
    "excluded_images",
    "find_label_issues",
    "label_issues_for",
    "load_predictions",
    "match_predictions",
    "write_label_issues_csv",
]

log = logging.getLogger(__name__)

MIN_PER_CLASS = 10
"""Fewest images of a class in the predictions: below it cleanlab's per-class thresholds and noise rates are noise."""
RANK_METHODS = ("self_confidence", "normalized_margin")
DEFAULT_TOP = 24
_SHOW = 8  # paths named in an error message


def _cleanlab() -> Any:
    from medclf._lazy import require_extra

    require_extra("labels", "finding label issues (medclf data audit --predictions)")
    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank

    return cleanlab


def _key(path: str) -> str:
    # the same file reached through a symlinked or relative root still matches
    return os.path.realpath(str(path))


def _some(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


# ---- predictions ------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Out-of-sample class probabilities: ``table`` has ``path``, ``label``, ``prob_<class>`` and ``model`` (the run
    folder that scored the image, or None)."""

    table: pd.DataFrame
    classes: list[str]
    kind: str
    """``cv`` (out-of-fold: every image), ``run`` (a trained run's val + test splits) or ``csv`` (a predictions
    file)."""
    origin: Path

    @property
    def covers_all(self) -> bool:
        return self.kind == "cv"

    @property
    def note(self) -> str:
        if self.kind == "cv":
            return (
                f"out-of-fold predictions of {self.origin}: every image was scored by the fold model that did "
                "not train on it"
            )
        if self.kind == "run":
            return (
                f"the val and test predictions of the run {self.origin}: only those images are checked (its "
                "training images are not; only out-of-fold predictions from `medclf cv` cover every image)"
            )
        return (
            f"the predictions file {self.origin}: only its images are checked, and only if the model that made "
            "them did not train on them (out-of-fold predictions from `medclf cv` cover every image)"
        )


def _classes_of(table: pd.DataFrame, where: Path) -> list[str]:
    classes = [c[len("prob_") :] for c in table.columns if str(c).startswith("prob_")]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing or len(classes) < 2:
        raise DataError(
            f"{where}: not a medclf predictions file (needs path, label and a prob_<class> column per class); "
            "pass a `medclf cv` folder, a `medclf train` run folder or a predictions.csv of `medclf evaluate`"
        )
    return classes


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None


def load_predictions(source: str | os.PathLike[str]) -> Predictions:
    """Read predictions from a ``medclf cv`` folder (``oof_predictions.csv`` + ``fold_k`` runs), a ``medclf train``
    run folder (``val_predictions.csv`` + ``test_predictions.csv``) or a predictions CSV."""
    src = Path(source)
    if src.is_dir() and (src / "oof_predictions.csv").is_file():
        table = _read_csv(src / "oof_predictions.csv")
        if "fold" not in table.columns:
            raise DataError(f"{src / 'oof_predictions.csv'}: no fold column; re-run `medclf cv` into {src}")
        table["model"] = [str(src / f"fold_{int(k)}") for k in table["fold"]]
        kind = "cv"
    elif src.is_dir() and (src / "run.json").is_file():
        parts = [src / f"{s}_predictions.csv" for s in ("val", "test")]
        parts = [p for p in parts if p.is_file()]
        if not parts:
            raise DataError(
                f"{src}: the run has no val_predictions.csv or test_predictions.csv; train it again"
            )
        table = pd.concat([_read_csv(p) for p in parts], ignore_index=True)
        table["model"] = str(src)
        kind = "run"
    elif src.is_file():
        table = _read_csv(src)
        table["model"] = None
        kind = "csv"
    else:
        raise DataError(
            f"--predictions {src}: neither a `medclf cv` folder (oof_predictions.csv), a run folder (run.json) nor "
            "a predictions CSV; run `medclf cv DATA --out DIR` and pass DIR"
        )
    where = src / "oof_predictions.csv" if kind == "cv" else src
    classes = _classes_of(table, where)
    if table["path"].duplicated().any():
        dup = table.loc[table["path"].duplicated(), "path"].astype(str).tolist()
        raise DataError(f"{where}: {len(dup)} image(s) scored more than once, e.g. {_some(dup)}")
    return Predictions(table=table, classes=classes, kind=kind, origin=src)


def match_predictions(pred: Predictions, records: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The predictions of the data's images, with the data's labels: ``path``, ``label``, probabilities in the
    data's class order, ``model``. Refuses other classes, images the data lacks, labels that differ, and (for
    out-of-fold predictions) images of the data that were not scored."""
    if sorted(pred.classes) != sorted(classes):
        only_pred = sorted(set(pred.classes) - set(classes))
        only_data = sorted(set(classes) - set(pred.classes))
        raise DataError(
            f"{pred.origin}: the predictions' classes ({', '.join(pred.classes)}) are not the data's "
            f"({', '.join(classes)}): only in the predictions {only_pred or 'none'}, only in the data "
            f"{only_data or 'none'}; predict with a model trained on this data"
        )
    recs = records
    if "augmented" in recs.columns:  # offline-augmented copies train only: no fold ever scores them
        recs = recs[~recs["augmented"].fillna(False).astype(bool)]
    recs = recs.drop_duplicates("path")
    data_label = dict(zip(map(_key, recs["path"]), recs["label"].astype(str), strict=True))
    table = pred.table.copy()
    table["key"] = [_key(p) for p in table["path"].astype(str)]
    unknown = table.loc[~table["key"].isin(data_label), "path"].astype(str).tolist()
    if unknown:
        raise DataError(
            f"{pred.origin}: {len(unknown)} scored image(s) are not in the data: {_some(unknown)}; pass the data "
            "the predictions were made on"
        )
    if pred.covers_all:
        scored = set(table["key"])
        missing = [p for p in recs["path"].astype(str) if _key(p) not in scored]
        if missing:
            raise DataError(
                f"{pred.origin}: {len(missing)} image(s) of the data have no out-of-fold prediction: {_some(missing)};"
                " re-run `medclf cv` on this data"
            )
    given = table["key"].map(data_label)
    differ = table.loc[given != table["label"].astype(str), "path"].astype(str).tolist()
    if differ:
        raise DataError(
            f"{pred.origin}: {len(differ)} image(s) have another label in the predictions than in the data: "
            f"{_some(differ)}; the labels changed after the predictions were made, so re-run `medclf cv`"
        )
    probs = table[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError(f"{pred.origin}: probabilities must be finite and non-negative")
    out = pd.DataFrame(
        {"path": table["path"].astype(str), "label": given.to_numpy(), "model": table["model"]}
    )
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, i]
    return out


# ---- confident learning -----------------------------------------------------------------------------------------
@dataclass
class LabelIssues:
    """Every scored image (``table``: path, given_label, suggested_label, score, issue, rank, model) and cleanlab's
    estimates. ``score`` is cleanlab's label-quality score of the given label (0..1, low = suspect); ``rank`` 1 is
    the most suspect flagged image (NaN for an image not flagged)."""

    table: pd.DataFrame
    classes: list[str]
    rank_by: str
    confident_joint: np.ndarray
    """Counts [given, true]: images confidently counted as having that given and that true label."""
    noise_matrix: np.ndarray
    """P(given label = row | true label = column); columns sum to 1."""
    note: str = ""
    kind: str = "cv"

    @property
    def issues(self) -> pd.DataFrame:
        """The flagged images, most suspect first."""
        return self.table[self.table["issue"]].sort_values("rank").reset_index(drop=True)

    def per_class(self) -> dict[str, dict[str, Any]]:
        t = self.table
        flagged = t[t["issue"]]
        out = {}
        for c in self.classes:
            n = int((t["given_label"] == c).sum())
            k = int((flagged["given_label"] == c).sum())
            out[c] = {
                "images": n,
                "flagged": k,
                "flagged_fraction": round(k / n, 4) if n else 0.0,
                "suggested_for_flagged": int((flagged["suggested_label"] == c).sum()),
            }
        return out

    def to_dict(self, top: int = DEFAULT_TOP) -> dict[str, Any]:
        """The ``label_issues`` section of audit.json: every flagged image, most suspect first (``issues``); the
        report and the gallery show the first ``top``."""
        import cleanlab

        issues = self.issues
        cols = ["rank", "path", "given_label", "suggested_label", "score", "model"]
        rows = json.loads(issues[cols].astype({"rank": int}).to_json(orient="records"))
        c = self.classes
        return {
            "source": self.note,
            "kind": self.kind,
            "covers_all_images": self.kind == "cv",
            "method": {
                "library": f"cleanlab {cleanlab.__version__}",
                "filter_by": "prune_by_noise_rate",
                "rank_by": self.rank_by,
            },
            "images": len(self.table),
            "flagged": len(issues),
            "flagged_fraction": round(len(issues) / max(len(self.table), 1), 4),
            "per_class": self.per_class(),
            "confident_joint": {
                g: {t: int(self.confident_joint[i, j]) for j, t in enumerate(c)} for i, g in enumerate(c)
            },
            "noise_matrix": {
                g: {t: round(float(self.noise_matrix[i, j]), 4) for j, t in enumerate(c)}
                for i, g in enumerate(c)
            },
            "issues": rows,
            "top_n": top,
        }


def find_label_issues(
    table: pd.DataFrame,
    classes: list[str],
    *,
    rank_by: str = "self_confidence",
    min_per_class: int = MIN_PER_CLASS,
) -> LabelIssues:
    """Flag and rank the images of ``table`` (``label`` + ``prob_<class>`` columns, from ``match_predictions``) whose
    given label is improbable, with confident learning (``cleanlab.filter.find_label_issues``)."""
    cl = _cleanlab()
    if rank_by not in RANK_METHODS:
        raise ConfigError(f"rank_by={rank_by!r}: choose one of {', '.join(RANK_METHODS)}")
    index = {c: i for i, c in enumerate(classes)}
    labels = table["label"].astype(str).map(index)
    if labels.isna().any():
        bad = sorted(set(table.loc[labels.isna(), "label"].astype(str)))
        raise DataError(f"labels {bad} are not among the classes {classes}")
    counts = np.bincount(labels.to_numpy(dtype=np.int64), minlength=len(classes))
    few = [f"{c} ({int(n)})" for c, n in zip(classes, counts, strict=True) if n < min_per_class]
    if few:
        raise DataError(
            f"too few scored images per class to estimate label noise (at least {min_per_class} each): "
            f"{', '.join(few)}; score every image with `medclf cv` (out-of-fold predictions), or add images"
        )
    y = labels.to_numpy(dtype=np.int64)
    probs = table[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    # n_jobs=1: the CPU is shared, and cleanlab's process pool costs more than it saves at these sizes
    flagged = cl.filter.find_label_issues(
        y, probs, filter_by="prune_by_noise_rate", return_indices_ranked_by=rank_by, n_jobs=1
    )
    scores = cl.rank.get_label_quality_scores(y, probs, method=rank_by)
    joint_counts = cl.count.compute_confident_joint(y, probs)
    _, noise, _ = cl.count.estimate_latent(joint_counts, y)
    out = pd.DataFrame(
        {
            "path": table["path"].astype(str).to_numpy(),
            "given_label": [classes[i] for i in y],
            "suggested_label": [classes[i] for i in probs.argmax(axis=1)],
            "score": np.round(scores, 6),
            "issue": False,
            "rank": np.nan,
            "model": table["model"].to_numpy() if "model" in table.columns else None,
        }
    )
    out.loc[flagged, "issue"] = True
    out.loc[flagged, "rank"] = np.arange(1, len(flagged) + 1)
    return LabelIssues(
        table=out, classes=list(classes), rank_by=rank_by, confident_joint=joint_counts, noise_matrix=noise
    )


def label_issues_for(
    predictions: str | os.PathLike[str],
    records: pd.DataFrame,
    classes: list[str],
    *,
    rank_by: str = "self_confidence",
) -> LabelIssues:
    """``load_predictions`` → ``match_predictions`` → ``find_label_issues`` for one data set's records."""
    _cleanlab()  # before reading anything: the fix is an install
    pred = load_predictions(predictions)
    issues = find_label_issues(match_predictions(pred, records, classes), classes, rank_by=rank_by)
    issues.note, issues.kind = pred.note, pred.kind
    return issues


def write_label_issues_csv(issues: LabelIssues | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``path,given_label,suggested_label,score,rank`` of the flagged images, most suspect first (usable as
    ``data.exclude``); ``issues`` is a ``LabelIssues`` or its ``to_dict()`` section."""
    out = Path(path)
    cols = ["path", "given_label", "suggested_label", "score", "rank"]
    if isinstance(issues, LabelIssues):
        table = issues.issues[cols].astype({"rank": int})
    else:
        table = pd.DataFrame(issues["issues"], columns=cols)
    with atomic_path(out, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return out


# ---- retraining without them ------------------------------------------------------------------------------------
def _read_exclude(csv: str | os.PathLike[str]) -> list[str]:
    path = Path(csv)
    if not path.is_file():
        raise ConfigError(
            f"data.exclude={csv}: no such file; pass a CSV with a `path` column (e.g. the label_issues.csv of "
            "`medclf data audit --predictions`)"
        )
    table = _read_csv(path)
    if "path" not in table.columns:
        raise ConfigError(
            f"data.exclude={csv}: the CSV has no `path` column (columns: {', '.join(map(str, table.columns))})"
        )
    paths = [str(p) for p in table["path"].dropna()]
    # relative entries are relative to the CSV's own folder, like the relative paths of a recipe
    return [p if os.path.isabs(p) else str(path.parent / p) for p in paths]


def exclude_from_train(split: pd.DataFrame, csv: str | os.PathLike[str]) -> pd.DataFrame:
    """``split`` without the training rows whose image is listed in ``csv`` (a ``path`` column); val and test rows
    are kept, so the held-out figures stay comparable. ``attrs["excluded_images"]`` holds the count removed."""
    listed = {_key(p) for p in _read_exclude(csv)}
    if not listed:
        raise DataError(f"data.exclude={csv}: the CSV lists no paths")
    keys = split["path"].astype(str).map(_key)
    if not keys.isin(listed).any():
        raise DataError(
            f"data.exclude={csv}: none of its {len(listed)} paths is an image of this data; pass the list made "
            "for this data (absolute paths, or relative to the CSV's folder)"
        )
    drop = keys.isin(listed) & (split["split"] == "train")
    held_out = int((keys.isin(listed) & (split["split"] != "train")).sum())
    out = split.loc[~drop].reset_index(drop=True)
    out.attrs = dict(split.attrs)
    n = int(split.loc[drop, "path"].nunique())
    out.attrs["excluded_images"] = n
    log.warning(
        "data.exclude: %d image(s) listed in %s removed from training (%d listed image(s) stay in val/test)",
        n,
        csv,
        held_out,
    )
    return out


def excluded_images(exclude: str | None, split: pd.DataFrame) -> int | None:
    """The count ``exclude_from_train`` removed from ``split`` (run.json ``excluded_images``): 0 without
    ``data.exclude``; None when the split was read back from a run folder (a resumed run)."""
    if not exclude:
        return 0
    n = split.attrs.get("excluded_images")
    return None if n is None else int(n)
