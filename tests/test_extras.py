"""The core install (no extras) imports, predicts and evaluates; a command that needs an extra names its install.

Each scenario runs in a fresh interpreter whose import system refuses the extras' libraries, as if they were not
installed (``BLOCKER``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medclf._lazy import EXTRAS, MissingExtraError, has_extra, require_extra
from medclf.evaluate.pipeline import INCOMPLETE_FILE

ROOT = Path(__file__).resolve().parents[1]

# every library of an extra; onnx and onnxruntime are core (the Predictor's default engine)
BLOCKED = (
    "lightning",
    "pytorch_lightning",
    "optuna",
    "tensorboard",
    "matplotlib",
    "jinja2",
    "onnxscript",
    "pydicom",
    "pytorch_grad_cam",
    "imagehash",
    "cleanlab",
    "fastapi",
    "uvicorn",
    "streamlit",
    "openvino",
)

BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def _run(code: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "scenario.py"
    script.write_text(BLOCKER + code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def _cli(*args: str) -> str:
    return f"""
from medclf.cli import main
code = main({list(args)!r})
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
print("LOADED", loaded)
sys.exit(code)
"""


def test_import_and_help_need_no_extra(tmp_path: Path) -> None:
    r = _run(
        """
import medclf, medclf.cli, medclf.train, medclf.evaluate, medclf.explain, medclf.serve, medclf.models
medclf.cli.build_parser().format_help()
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)))
""",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout


@pytest.mark.slow
def test_predict_and_evaluate_need_no_extra(tiny_run: Path, tmp_path: Path) -> None:
    images = sorted((tiny_run.parent / "images").glob("*.png"))[:3]
    r = _run(_cli("predict", str(tiny_run), *map(str, images)), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 predicted, 0 skipped" in r.stdout
    assert "not a diagnosis" in r.stdout
    assert "LOADED []" in r.stdout

    out = tmp_path / "eval"
    r = _run(_cli("evaluate", str(tiny_run), "--out", str(out), "--bootstrap", "20"), tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == len((out / "predictions.csv").read_text(encoding="utf-8").splitlines()) - 1
    assert any("pip install 'medclf[report]'" in note for note in metrics["notes"])
    assert "pip install 'medclf[report]'" in r.stdout
    assert not (out / "report.html").exists() and not (out / "plots").exists()
    assert not (out / INCOMPLETE_FILE).exists()
    assert "LOADED []" in r.stdout


COMMANDS = {
    "medclf train needs the train extra": ["train", "--data", "no-such-folder", "--out", "run"],
    "medclf tune needs the train extra": [
        "tune",
        str(ROOT / "configs" / "skin_backbones.yaml"),
        "--out",
        "t",
    ],
    "medclf data audit needs the audit extra": ["data", "audit", "no-such-folder", "--out", "audit"],
    "medclf demo needs the audit extra": ["demo", "--out", "demo"],
    "medclf serve (the REST API) needs the serve extra": ["serve", "no-such-run"],
}


@pytest.mark.slow
def test_a_command_without_its_extra_names_the_install(tmp_path: Path) -> None:
    # one interpreter for all the commands: starting one costs seconds
    r = _run(
        f"""
import contextlib, io, json
from medclf.cli import main

results = {{}}
for hint, args in {COMMANDS!r}.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    results[hint] = [code, err.getvalue()]
print(json.dumps(results))
""",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.splitlines()[-1])
    for hint, (code, stderr) in results.items():
        extra = hint.split(" the ")[1].split()[0]
        assert code == 2, (hint, stderr)
        assert hint in stderr and f"pip install 'medclf[{extra}]'" in stderr, stderr
        assert "Traceback" not in stderr


@pytest.mark.slow
def test_evaluate_pdf_without_the_report_extra_stops_before_predicting(
    tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    r = _run(_cli("evaluate", str(tiny_run), "--out", str(out), "--pdf"), tmp_path)
    assert r.returncode == 2
    assert "medclf evaluate --pdf needs the report extra" in r.stderr
    assert "pip install 'medclf[report]'" in r.stderr
    assert not (out / "predictions.csv").exists()


def test_require_extra_names_the_missing_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXTRAS, "dicom", ("pydicom", "no_such_module_medclf"))
    assert not has_extra("dicom")
    with pytest.raises(
        MissingExtraError, match=r"DICOM needs the dicom extra \(no_such_module_medclf not"
    ) as e:
        require_extra("dicom", "DICOM")
    assert "pip install 'medclf[dicom]'" in str(e.value)
    assert isinstance(e.value, ImportError)
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        require_extra("nope", "x")


def test_every_extra_is_in_pyproject_and_in_all() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras), set(EXTRAS) - set(extras)
    (everything,) = extras["all"]
    listed = set(everything.removeprefix("medclf[").removesuffix("]").split(","))
    assert listed == set(extras) - {"all"}
    core = " ".join(project["dependencies"])
    for heavy in (
        "lightning",
        "optuna",
        "matplotlib",
        "jinja2",
        "pydicom",
        "grad-cam",
        "imagehash",
        "tensorboard",
    ):
        assert heavy not in core, f"{heavy} is a core dependency"
