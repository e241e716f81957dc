"""What glibc's allocator costs a training run, and what `medclf.runtime.malloc.retain_freed_memory` saves.

Runs ``medclf train CONFIG`` for a few epochs (a ``cached`` recipe on a warm feature cache, so that the epochs
dominate), in rounds that
alternate ``MEDCLF_MALLOC=system`` (glibc's defaults: large buffers mapped afresh and faulted in every step) and
``retain`` (medclf's default while training), and reports each child process's wall time, training-loop time
(the sum of the run's ``history.csv`` ``seconds``: each epoch from its start to the end of its validation), user
and system CPU time, minor page faults and peak resident memory (from ``wait4``). It also checks that both modes train the same model: their ``history.csv`` files must be identical but
for the time columns.

    python benchmarks/train_malloc.py configs/skin_bm.yaml --epochs 2 --rounds 2

Writes its section of docs/benchmarks-training.md (``--doc`` for another page). Research use only: no output of
medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]
MODES = ("system", "retain")


def one_run(config: Path, out: Path, cache: Path, epochs: int, mode: str, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "medclf",
        "train",
        str(config),
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        f"train.cache_dir={cache}",
        *extra,
    ]
    env = {**os.environ, "MEDCLF_MALLOC": mode}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    loop = float(pd.read_csv(out / "history.csv")["seconds"].sum())  # the epochs, validation included
    return {
        "mode": mode,
        "wall": wall,
        "head": loop,
        "user": usage.ru_utime,
        "system": usage.ru_stime,
        "minflt": usage.ru_minflt,
        "maxrss_gb": usage.ru_maxrss / 2**20,
        "history": out / "history.csv",
    }


def same_training(a: Path, b: Path) -> bool:
    drop = ["seconds", "wall_time"]
    x, y = (pd.read_csv(p).drop(columns=drop, errors="ignore") for p in (a, b))
    return x.equals(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "skin_bm.yaml"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra key=value for every run")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks-training.md"))
    a = ap.parse_args()
    config = Path(a.config).resolve()
    extra = [x for s in a.sets for x in ("--set", s)]
    from medclf.config import load_config

    strategy = load_config(config, a.sets).train.strategy

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        warm = one_run(config, work / "warm", cache, 1, "retain", extra)  # fills the feature cache (cached recipes)
        print(f"warm-up run (fills the feature cache of a cached recipe): {warm['wall']:.1f} s")
        rows: list[dict] = []
        for r in range(a.rounds):
            for mode in MODES:
                row = one_run(config, work / f"{mode}-{r}", cache, a.epochs, mode, extra)
                rows.append(row)
                print(
                    f"round {r} {mode}: wall {row['wall']:.1f} s, loop {row['head']:.1f} s, "
                    f"sys {row['system']:.1f} s, {row['minflt']:,} minor faults, {row['maxrss_gb']:.2f} GB"
                )
        identical = all(same_training(rows[0]["history"], row["history"]) for row in rows[1:])

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["mode"] == mode)

    def best(mode: str, key: str) -> float:
        return min(r[key] for r in rows if r["mode"] == mode)

    label = {"system": "glibc defaults (`MEDCLF_MALLOC=system`)", "retain": "freed memory kept (default)"}
    lines = [
        "## Memory allocator",
        "",
        f"`medclf train {config.name}` (strategy `{strategy}`), {a.epochs} epochs"
        + (" on a warm feature cache" if strategy == "cached" else "")
        + (f" ({', '.join(a.sets)})" if a.sets else "")
        + f"; {a.rounds} rounds alternating the two modes, each a fresh process. Median (best) of the rounds. "
        "Training loop: the sum of the run's `history.csv` `seconds` (the epochs, validation included).",
        "",
        "| allocator | process wall (s) | training loop (s) | user CPU (s) | system CPU (s) | minor page faults "
        "| peak RSS (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        lines.append(
            f"| {label[mode]} | {med(mode, 'wall'):.1f} ({best(mode, 'wall'):.1f}) "
            f"| {med(mode, 'head'):.1f} ({best(mode, 'head'):.1f}) | {med(mode, 'user'):.1f} "
            f"| {med(mode, 'system'):.1f} | {med(mode, 'minflt'):,.0f} | {med(mode, 'maxrss_gb'):.2f} |"
        )
    loop = 1 - med("retain", "head") / med("system", "head")
    lines += [
        "",
        f"Training loop {loop:.0%} shorter with freed memory kept (medians). Both modes trained the same model "
        f"(history.csv identical but for its time columns): **{'yes' if identical else 'NO'}**.",
    ]
    write_section("train_malloc", "\n".join(lines), doc=Path(a.doc))


if __name__ == "__main__":
    main()
