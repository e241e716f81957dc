"""Stratified (and patient-grouped) bootstrap, as per-image resampling weights.

A bootstrap resample is represented by how many times each image was drawn: a ``[B, n]`` count matrix ``W``.
Every metric in ``medclf.evaluate.metrics`` is a weighted statistic, so one matrix product evaluates it on all
``B`` resamples at once, instead of ``B`` separate evaluations.

Stratified: each class keeps its size in every resample (the class mix of the test set is a design choice, not
sampling noise). Grouped: when images share a patient/lesion id, whole groups are drawn (stratified by the
group's majority class), because images of one patient are not independent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

__all__ = ["MIN_DISTINCT_REPLICATES", "degenerate_reason", "percentile_interval", "resample_weights"]

MIN_DISTINCT_REPLICATES = 10
"""A percentile interval read off fewer distinct replicate values than this is treated as degenerate."""
# a proportion over a handful of cases takes only a few values across resamples: its percentiles are then a step
# function of one or two images, not an interval


def _units(y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(unit index of each image, stratum of each unit): images are units, or groups are."""
    if groups is None:
        return np.arange(y.size), y
    unit_of, _ = pd.factorize(pd.Series(groups).astype(str), sort=False)
    # a group's stratum is its most frequent label (a patient's images usually share one)
    table = pd.crosstab(unit_of, y)
    stratum = table.columns.to_numpy()[table.to_numpy().argmax(axis=1)]
    return unit_of.astype(np.int64), stratum


def resample_weights(
    y: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 200,
) -> Iterator[np.ndarray]:
    """Yield float64 count matrices ``[b, n]`` (``b <= chunk``, ``n_boot`` rows in all) of a stratified bootstrap.

    The same ``(y, groups, n_boot, seed)`` always gives the same resamples, so two models evaluated on the same
    images can be compared on identical resamples (a paired bootstrap).
    """
    y = np.asarray(y).ravel()
    unit_of, stratum = _units(y, groups)
    n_units = stratum.size
    members = [np.flatnonzero(stratum == s) for s in np.unique(stratum)]
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        drawn = np.concatenate([m[rng.integers(0, m.size, size=(b, m.size))] for m in members], axis=1)
        flat = (drawn + np.arange(b)[:, None] * n_units).ravel()
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units)
        yield counts[:, unit_of].astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, ignoring undefined (NaN) replicates."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def degenerate_reason(
    samples: np.ndarray, interval: tuple[float, float], point: float, proportion: bool = False
) -> str | None:
    """Why a percentile interval says nothing about the uncertainty of ``point``, or None when it is usable.

    Degenerate: zero width, fewer than ``MIN_DISTINCT_REPLICATES`` distinct replicate values, or (``proportion``)
    an estimate of exactly 0 or 1, which no resample of the same cases can move beyond."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    lo, hi = interval
    if samples.size == 0 or not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(point)):
        return None  # undefined, not degenerate: reported as null
    if proportion and point in (0.0, 1.0):
        return f"the estimate is {point:g}: resampling the same cases cannot give a value beyond it"
    if hi - lo <= 1e-12:
        return "every resample gave the same value"
    distinct = np.unique(samples).size
    if distinct < MIN_DISTINCT_REPLICATES:
        return f"the resamples took only {distinct} distinct values (too few cases)"
    return None
