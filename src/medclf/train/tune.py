"""`medclf tune`: Optuna search over the recipe's ``search_space`` (random, as the HAM10000 study did, or TPE).

Every trial trains on the same split and is scored on its *validation* metric (``train.monitor``); the test part
is never looked at. Lightning strategies report each epoch to a MedianPruner. The study lives in
``DIR/study.db`` (re-running the command adds trials to it); results go to ``DIR/results.csv`` / ``results.md``
and the best configuration to ``DIR/best_config.yaml``, a recipe for `medclf train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from medclf._atomic import atomic_path, atomic_write_text
from medclf._lazy import require_extra
from medclf.config import RunConfig, apply_overrides, dump_config
from medclf.errors import ConfigError

__all__ = ["SAMPLERS", "run_tune", "suggest"]

SAMPLERS = ("random", "tpe")
_TYPES = ("loguniform", "uniform", "int", "categorical")


def _check_space(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    space = cfg.search_space
    if not space:
        raise ConfigError(
            "the recipe has no search_space; add e.g. `search_space: {train.lr: {type: loguniform, low: 1e-4, "
            "high: 1e-2}}` (see docs/training.md)"
        )
    for key, spec in space.items():
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            raise ConfigError(f"search_space.{key}: needs type: one of {', '.join(_TYPES)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"search_space.{key}: a categorical entry needs a non-empty `choices` list")
        elif "low" not in spec or "high" not in spec or not float(spec["low"]) < float(spec["high"]):
            raise ConfigError(f"search_space.{key}: needs low < high")
        apply_overrides(cfg, [f"{key}={_sample_value(spec)}"])  # the key must exist in the config
    return space


def _sample_value(spec: dict[str, Any]) -> str:
    return (
        _yaml_value(spec["choices"][0]) if spec["type"] == "categorical" else _yaml_value(float(spec["low"]))
    )


def _yaml_value(v: Any) -> str:
    # `--set` values are parsed as YAML, which reads 1e-05 as a string: always write floats with a mantissa dot
    if isinstance(v, float):
        return f"{v:.12e}"
    return json.dumps(v)


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per search-space key from an Optuna trial."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "loguniform":
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=True)
        elif kind == "uniform":
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]))
        elif kind == "int":
            params[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1))
            )
        else:
            params[key] = trial.suggest_categorical(key, spec["choices"])
    return params


def _with_params(cfg: RunConfig, params: dict[str, Any]) -> RunConfig:
    return apply_overrides(cfg, [f"{k}={_yaml_value(v)}" for k, v in params.items()])


def _pruning_callback(trial: Any, monitor: str) -> Any:
    import lightning.pytorch as pl
    import optuna

    class OptunaPruning(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            value = trainer.callback_metrics.get(monitor)
            if value is None or trainer.sanity_checking:
                return
            trial.report(float(value), step=trainer.current_epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {trainer.current_epoch}: {monitor}={float(value):.4f}")

    return OptunaPruning()


def run_tune(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    trials: int = 20,
    sampler: str = "random",
    data: str | Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run ``trials`` trials (added to any already in ``out_dir/study.db``); returns the results table."""
    require_extra("train", "medclf tune")
    import optuna

    from medclf.models import RunDir
    from medclf.train.engine import load_data, named, resolve_split, train
    from medclf.train.metrics import monitor_mode

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    space = _check_space(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    monitor = cfg.train.monitor
    direction = "minimize" if monitor_mode(monitor) == "min" else "maximize"
    dataset = load_data(cfg, data)
    cfg = named(cfg, dataset)
    split = resolve_split(cfg, dataset)  # one split for every trial: trials differ only in their parameters
    seed = cfg.train.seed
    opt_sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=seed)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        load_if_exists=True,
        direction=direction,
        sampler=opt_sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        tcfg = _with_params(cfg, params)
        tcfg = dataclasses.replace(tcfg, name=f"{cfg.name}-trial{trial.number}")
        run_dir = out / "trials" / f"trial_{trial.number:03d}"
        callbacks = [] if tcfg.train.strategy == "cached" else [_pruning_callback(trial, monitor)]
        train(tcfg, run_dir, dataset=dataset, split=split, callbacks=callbacks, progress=progress)
        info = RunDir(run_dir).load_info()
        trial.set_user_attr("run_dir", str(run_dir))
        score = info.best_score
        if score is None or math.isnan(score):
            score = (info.val_metrics or {})[monitor.removeprefix("val_")]
        return float(score)

    study.optimize(objective, n_trials=trials, catch=())
    table = _results_table(study, monitor)
    with atomic_path(out / "results.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out / "results.md", _markdown(table, monitor))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if finished:
        best = study.best_trial
        best_cfg = dataclasses.replace(
            _with_params(cfg, best.params), name=f"{cfg.name}-best", search_space={}
        )
        header = (
            f"# best of {len(finished)} trials by {monitor} = {best.value:.4f} (validation), "
            f"trial {best.number}: {best.user_attrs.get('run_dir', '')}\n"
        )
        atomic_write_text(out / "best_config.yaml", header + dump_config(best_cfg))
    return table


def _results_table(study: Any, monitor: str) -> pd.DataFrame:
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                monitor: t.value,
                **t.params,
                "epochs": len(t.intermediate_values) or None,
                "seconds": t.duration.total_seconds() if t.duration else None,
                "run_dir": t.user_attrs.get("run_dir", ""),
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        ascending = monitor == "val_loss"
        table = table.sort_values(monitor, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def _markdown(table: pd.DataFrame, monitor: str) -> str:
    cols = [c for c in table.columns if c != "run_dir"]
    lines = [f"# Tuning results (sorted by {monitor}, validation)", "", "| " + " | ".join(cols) + " |"]
    lines.append("|" + "---|" * len(cols))
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(
                f"{v:.4g}"
                if isinstance(v, float) and not math.isnan(v)
                else ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
