"""`medclf card`: the model card of a trained run, with the fields its owner fills in, shown by the app and /model."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from _fixtures_train import make_folder_data
from medclf import DISCLAIMER
from medclf.cli import main
from medclf.evaluate.card import OWNER_FIELDS, PLACEHOLDER, model_card

torch.set_num_threads(1)

TINY = [
    *("--set", "model.name=tiny_cnn", "--set", "model.pretrained=false", "--set", "train.strategy=scratch"),
    *("--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "data.group_by=regex:^(P\\d+)_"),
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("card")
    data = make_folder_data(root / "lesions", n_per_class=16)
    assert main(["train", "--data", str(data), *TINY, "--out", str(root / "run")]) == 0
    return root / "run"


def _sections(card: str) -> list[str]:
    return re.findall(r"^## (.+)$", card, flags=re.MULTILINE)


def test_card_before_evaluation_has_every_owner_field(run: Path) -> None:
    card = model_card(run)
    assert card.startswith("# Model card: lesions\n") and DISCLAIMER in card
    assert set(OWNER_FIELDS) <= set(_sections(card))
    for section, prompt in OWNER_FIELDS.items():  # each owner field opens with its placeholder
        body = card.split(f"## {section}\n\n", 1)[1]
        assert body.startswith(f"**{PLACEHOLDER}** {prompt}")
    assert card.count(PLACEHOLDER) == len(OWNER_FIELDS) + 1  # once per field, once in the instructions
    assert "second reader" not in card.lower() and "not a medical device" in card
    assert "No held-out evaluation yet" in card and "medclf evaluate" in card
    assert "| task | binary classification: benign, malignant |" in card


@pytest.mark.slow
def test_card_after_evaluation_gives_intervals_and_no_file_names(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run), "--out", str(run / "eval"), "--bootstrap", "50", "--no-gradcam"]) == 0
    assert main(["card", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = (run / "model_card.md").read_text(encoding="utf-8")
    assert set(OWNER_FIELDS) <= set(_sections(card)) and "second reader" not in card.lower()
    assert "| metric | value | 95% interval |" in card and re.search(
        r"\| accuracy \| \d\.\d{3} \| \d\.\d{3} – ", card
    )
    # counts only: no file names, paths or group ids of the data
    split = pd.read_csv(run / "split.csv")
    assert not any(Path(p).name in card for p in split["path"])
    assert not any(f"| {g} " in card for g in split["group"].astype(str))
    assert str(run.parent) not in card
    # the owner's edits are never overwritten
    assert main(["card", str(run)]) == 2
    assert "already exists and may hold your edits" in capsys.readouterr().err


def test_the_app_and_api_show_the_card(run: Path) -> None:
    from medclf.serve.predictor import Predictor

    if not (run / "model_card.md").exists():
        assert main(["card", str(run)]) == 0
    card = Predictor.from_run(run, backend="torch", ood=False).model_card()
    assert card["card"] == (run / "model_card.md").read_text(encoding="utf-8")


def test_card_errors_name_the_folder(tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["card", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["card", str(run), "--eval", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    assert "has no metrics.json" in capsys.readouterr().err
