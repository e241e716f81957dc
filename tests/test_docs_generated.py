"""The user guide stays true: generated pages are up to date, every error message is catalogued, the Python
API examples run, and DDP training works with two CPU processes."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "medclf"


def _generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("generator", "page"),
    [
        ("gen_config_reference", "config-reference.md"),
        ("gen_cli_reference", "cli-reference.md"),
        pytest.param("gen_troubleshooting", "troubleshooting.md", marks=pytest.mark.slow),
    ],
)
def test_generated_page_is_up_to_date(generator: str, page: str) -> None:
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert _generator(generator).render() == committed, (
        f"docs/{page} is out of date: run .venv/bin/python docs/{generator}.py"
    )


def test_cli_reference_does_not_depend_on_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator("gen_cli_reference")
    monkeypatch.setenv("COLUMNS", "40")
    narrow = gen.render()
    monkeypatch.setenv("COLUMNS", "250")
    assert gen.render() == narrow


def test_cli_reference_lists_every_subcommand_and_option() -> None:
    from medclf.cli import build_parser

    page = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    parser = build_parser()
    seen = 0
    stack = [("medclf", parser)]
    while stack:
        path, p = stack.pop()
        assert f"`{path}`" in page, path
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack += [(f"{path} {n}", sub) for n, sub in action.choices.items()]
            elif action.help != "==SUPPRESS==" and "--help" not in action.option_strings:
                for opt in action.option_strings:
                    assert f"`{opt}" in page or f", {opt}" in page, (path, opt)
                    seen += 1
    assert seen > 50


def _error_classes() -> set[str]:
    names = {"MedclfError"}
    trees = [ast.parse(p.read_text(encoding="utf-8")) for p in SRC.rglob("*.py")]
    classes = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    for _ in range(5):
        names |= {
            c.name for c in classes if {getattr(b, "id", getattr(b, "attr", "")) for b in c.bases} & names
        }
    return names


def _literal_fragments(node: ast.AST) -> list[str]:
    """The literal text pieces of a message expression (constants and f-string constant parts)."""
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value.strip()) >= 8
    ]


@pytest.mark.slow
def test_every_error_raise_in_src_is_in_troubleshooting() -> None:
    classes = _error_classes()
    assert {"ConfigError", "DataError", "BadImageError"} <= classes
    page = " ".join((DOCS / "troubleshooting.md").read_text(encoding="utf-8").split()).replace("\\|", "|")
    missing, checked = [], 0
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            if getattr(func, "id", getattr(func, "attr", None)) not in classes:
                continue
            fragments = [" ".join(f.split()) for a in node.exc.args for f in _literal_fragments(a)]
            if not fragments:
                continue  # a message built entirely at run time (e.g. re-raised str(exc))
            checked += 1
            if not any(f.strip() in page for f in fragments):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {fragments[0]!r}")
    assert checked > 150
    assert not missing, "messages missing from docs/troubleshooting.md (regenerate it):\n" + "\n".join(
        missing
    )


def test_troubleshooting_lists_the_rest_api_errors_and_common_situations() -> None:
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    for text in ("missing or wrong API key", "| 401 |", "| 413 |", "| 415 |", "--resume", "pylibjpeg"):
        assert text in page, text


def test_limits_quote_the_disclaimer_and_index_links_every_page() -> None:
    import medclf

    assert medclf.DISCLAIMER in (DOCS / "limits.md").read_text(encoding="utf-8")
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"]({page.name}" in index, f"docs/index.md does not link {page.name}"


GUIDE_PAGES = (
    "index",
    "install",
    "limits",
    "dicom",
    "scaling",
    "python-api",
    "cli-reference",
    "troubleshooting",
)


@pytest.mark.parametrize("name", GUIDE_PAGES)
def test_guide_links_point_to_existing_pages(name: str) -> None:
    text = (DOCS / f"{name}.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
        assert (DOCS / target).is_file(), f"docs/{name}.md links a missing page: {target}"


@pytest.mark.slow
def test_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of docs/python-api.md, in order, in one namespace, in an empty folder."""
    import torch

    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "python-api.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    namespace: dict[str, object] = {"__name__": "python_api_md"}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/python-api.md block {i + 1}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "runs" / "tiny" / "eval" / "report.html").is_file()
    assert (tmp_path / "tiny.onnx").is_file() and (tmp_path / "cam.png").is_file()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    """`medclf train` with two CPU processes (Lightning DDP, gloo): one run folder, exit 0, one summary."""
    from medclf.data import synth_dataset

    synth_dataset(tmp_path / "data", n=40, size=32, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDCLF_CACHE_DIR": str(tmp_path / "cache")}
    sets = [
        "model.name=tiny_cnn",
        "model.pretrained=false",
        "train.strategy=full",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.epochs=2",
        "train.batch_size=8",
        "train.augment=none",
        "data.val=0.25",
        "data.test=0.2",
    ]
    cmd = [sys.executable, "-m", "medclf", "train", "--data", str(tmp_path / "data"), "--out", "run"]
    cmd += [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr or "MEMBER: 2/2" in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # the rank-1 process reports nothing
    info = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert info["epochs_run"] == 2 and info["strategy"] == "full"
    assert (tmp_path / "run" / "model.safetensors").is_file()
    history = (tmp_path / "run" / "history.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(history) == 3  # header + 2 epochs, written once (rank 0)


def test_no_gpu_and_bad_num_nodes_are_one_line_config_errors(tmp_path: Path) -> None:
    """troubleshooting.md and scaling.md promise a ConfigError (one line, exit 2), not a Lightning traceback."""
    import torch

    from medclf.config import load_config
    from medclf.data import synth_dataset
    from medclf.errors import ConfigError
    from medclf.train import train

    synth_dataset(tmp_path / "data", n=24, size=32, seed=0)
    base = [f"data.root={tmp_path / 'data'}", "model.name=tiny_cnn", "model.pretrained=false"]
    base += ["train.strategy=full", "train.epochs=1", "data.val=0.25", "data.test=0.25"]
    with pytest.raises(ConfigError, match="num_nodes"):
        train(load_config(None, [*base, "train.num_nodes=0"]), tmp_path / "r0", progress=False)
    if torch.cuda.is_available():
        return
    with pytest.raises(ConfigError, match=r"train\.accelerator='gpu'.*train\.accelerator=cpu"):
        train(load_config(None, [*base, "train.accelerator=gpu"]), tmp_path / "r1", progress=False)
