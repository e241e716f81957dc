"""`kill -9` in the middle of `medclf train`, then `medclf train --resume`: same result as an uninterrupted run.

Everything goes through the real command in subprocesses (SIGKILL gives the process no chance to clean up). A
killed run folder must never load as a finished run: `load_run`, `medclf predict` and `medclf evaluate` refuse
it with a one-line error, and a fresh `medclf train` into it points at `--resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medclf.cli import main
from medclf.errors import MedclfError
from medclf.models import load_run

EPOCHS = 8
SETTINGS = [
    "model.name=tiny_cnn",
    "model.pretrained=false",
    "model.drop_rate=0.2",  # dropout draws random numbers: the resumed run must draw the same ones
    "train.strategy=scratch",
    f"train.epochs={EPOCHS}",
    "train.batch_size=8",
    "train.lr=0.01",
    "train.patience=0",
    "train.augment=standard",  # so do the augmentations
    "train.monitor=val_loss",
    "train.seed=3",
    "data.val=0.25",
    "data.test=0.2",
]


def _train_cmd(data: Path, out: Path) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "medclf", "train", "--data", str(data), *sets, "--out", str(out), "--quiet"]


def _env() -> dict[str, str]:
    # one thread everywhere: identical float reductions in the reference and the resumed run
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _history_rows(run: Path) -> int:
    try:
        return len(pd.read_csv(run / "history.csv"))
    except (OSError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medclf.data import synth_dataset

    data = tmp_path / "data"
    synth_dataset(data, layout="folders", n=64, size=32, seed=0)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("ref", "killed", "resume")}  # noqa: SIM115
    try:
        # the reference runs alongside the run that gets killed (wall time: the two share the cores)
        ref_proc = subprocess.Popen(
            _train_cmd(data, ref), env=_env(), stdout=logs["ref"], stderr=subprocess.STDOUT
        )
        proc = subprocess.Popen(
            _train_cmd(data, killed), env=_env(), stdout=logs["killed"], stderr=subprocess.STDOUT
        )
        last = killed / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        # kill once a checkpoint exists and at least one epoch more has started, but long before the end
        while not (last.is_file() and _history_rows(killed) >= 2):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "training never wrote checkpoints/last.ckpt"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        done_at_kill = _history_rows(killed)
        assert ref_proc.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text(errors="replace")
    finally:
        for fh in logs.values():
            fh.close()
        for p in (locals().get("proc"), locals().get("ref_proc")):
            if p is not None and p.poll() is None:
                p.kill()

    # -- the killed folder is not a run: nothing loads it as one --------------------------------------------
    assert 2 <= done_at_kill < EPOCHS, f"killed after {done_at_kill} of {EPOCHS} epochs: not mid-training"
    assert not (killed / "run.json").exists()
    with pytest.raises(MedclfError, match=r"not a medclf run folder \(no run.json\)"):
        load_run(killed)
    capsys.readouterr()
    img = next((data / "benign").glob("*.jpg"))
    assert main(["predict", str(killed), str(img), "--backend", "torch"]) == 2
    assert main(["evaluate", str(killed), "--out", str(tmp_path / "ev")]) == 2
    assert main(["train", "--data", str(data), "--set", "model.name=tiny_cnn", "--out", str(killed)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medclf ")]
    assert len(lines) == 3 and "Traceback" not in err, err
    assert "no run.json" in lines[0] and "no run.json" in lines[1] and "--resume" in lines[2]

    # -- resume in a fresh process ---------------------------------------------------------------------------
    resumed = subprocess.run(
        [sys.executable, "-m", "medclf", "train", "--out", str(killed), "--resume", "--quiet"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr

    ha, hb = (pd.read_csv(r / "history.csv") for r in (ref, killed))
    assert list(hb["epoch"]) == list(range(EPOCHS))
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"), rtol=1e-5)
    ia, ib = (json.loads((r / "run.json").read_text()) for r in (ref, killed))
    assert ib["resumed"] is True and ia["resumed"] is False
    for key in ("best_epoch", "epochs_run", "classes", "threshold_rule", "data_fingerprint"):
        assert ia[key] == ib[key], key
    for key in ("best_score", "threshold", "temperature"):
        assert ib[key] == pytest.approx(ia[key], rel=1e-5, abs=1e-7), key
    assert ia["val_metrics"].keys() == ib["val_metrics"].keys()
    for key, value in ia["val_metrics"].items():
        assert ib["val_metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
    wa, wb = (load_file(r / "model.safetensors") for r in (ref, killed))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-5, atol=1e-6), k
    ta, tb = (pd.read_csv(r / "test_predictions.csv") for r in (ref, killed))
    pd.testing.assert_frame_equal(ta, tb, rtol=1e-5)
    # and the resumed folder is a complete, verified run
    assert load_run(killed).classes == ia["classes"]
