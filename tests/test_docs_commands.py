"""Every shell command in README.md and docs/*.md is run by a test, or its page says why not.

A fenced ```bash, ```sh, ```shell or ```console block is one of:

- marked: the line right before it is `<!-- not run by the tests: REASON -->` (it needs a GPU or a real data set,
  runs for minutes, starts something that runs until stopped on its own, installs packages, ...), shown to the
  reader with its reason;
- in docs/tutorial.md, which tests/test_docs_tutorial.py runs as one script;
- run here: the page's other blocks, in order, as one bash script (`set -euo pipefail`) in a fresh folder that
  holds the fixtures below. A command that fails fails the test.

The fixtures stand in for the paths the pages name (made once, from `medclf data synth`, never real data):

- `DATA`, `my_images`, `path/to/class_folders`: 120 synthetic images in class folders (`benign`, `malignant`)
  with `patients.csv` (`image,patient_id`) and no dataset spec, the folder a user brings;
- `site_b`: 60 other synthetic images in the same layout (another seed), for `--data` on other images;
- `photos/` (4 images), `one.jpg`, `lesion.jpg`: synthetic images to predict and explain;
- `runs/skin_bm`, `runs/other_run`: run folders trained on `DATA` with the tiny model (same split).

Three substitutions keep the commands quick, as in tests/test_docs_tutorial.py: `medclf train` and `medclf cv`
get `TINY_TRAIN` (a small CNN, one epoch, 32-px inputs) in front of their own options, and `medclf cv` two folds;
`medclf serve` and `medclf app` start in the background and the script waits until they answer over HTTP on
127.0.0.1 (they are stopped when it ends); the ports 8000 and 8501, or a missing `--port`, become free ports;
`curl -s` fails on an HTTP error status (`--fail-with-body`), so a documented request must succeed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _fixtures_docs import HEALTH, PREAMBLE, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!-- not run by the tests: (?P<why>\S.*\S) -->$")
RUN_ELSEWHERE = {"tutorial.md": "tests/test_docs_tutorial.py"}
FENCE = re.compile(r"^```(?P<lang>bash|sh|shell|console)[ \t]*\n(?P<body>.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    body: str
    not_run: str | None  # the page's reason, when it says the tests leave the block out


def page_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = NOT_RUN.match(before)
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(Block(path.name, line, m["lang"], m["body"], mark["why"] if mark else None))
    return blocks


def commands(block: Block) -> list[str]:
    """The block's command lines; a console block's commands are its `$ ` lines (the rest is output)."""
    lines = block.body.splitlines()
    if block.lang == "console":
        return [ln[2:] for ln in lines if ln.startswith("$ ")]
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_script(blocks: list[Block]) -> str:
    """The page's runnable blocks as one bash script, with the substitutions of the module docstring."""
    lines = []
    for block in blocks:
        for line in commands(block):
            line = re.sub(r"^medclf (train|cv) ", rf"medclf \1 {TINY_TRAIN} ", line)
            line = re.sub(r"^curl -s ", "curl -sS --fail-with-body ", line)
            if line.startswith("medclf cv "):
                line = re.sub(r"--folds \d+", "--folds 2", line)
            server = re.match(r"medclf (serve|app) (\S+)", line)
            if server:
                kind = server[1]
                line = line.split("#", 1)[0].rstrip()
                port = re.search(r"--port (\d+)", line)
                if port is None:
                    free = str(_free_port())
                    line, port_no = f"{line} --port {free}", free
                else:
                    port_no = port[1]
                line = f"{line} &\nwait_http http://127.0.0.1:{port_no}{HEALTH[kind]}"
            lines.append(line)
    script = "\n".join(lines)
    for port in ("8000", "8501"):
        script = script.replace(port, str(_free_port()))
    return PREAMBLE + script + "\n"


def all_blocks() -> list[Block]:
    return [b for p in PAGES for b in page_blocks(p)]


def runnable_pages() -> list[str]:
    return sorted(
        {b.page for b in all_blocks() if b.not_run is None and b.page not in RUN_ELSEWHERE},
        key=lambda name: (name != "README.md", name),
    )


def test_every_shell_block_is_run_or_marked() -> None:
    blocks = all_blocks()
    assert len(blocks) > 30
    pages = {b.page for b in blocks}
    assert {"README.md", "index.md", "serving.md", "training.md"} <= pages
    for block in blocks:
        where = f"{block.page}:{block.line}"
        if block.not_run is not None:
            assert len(block.not_run) >= 8, f"{where}: say why the tests leave the block out"
            continue
        assert block.page in RUN_ELSEWHERE or block.page in runnable_pages(), where
        assert commands(block), f"{where}: a block with no command"
        # a placeholder the fixtures do not provide would fail at run time; say so before that
        for line in commands(block):
            assert not re.search(r"\[--|<[a-z ]+>|/path/to/", line), (
                f"{where}: not a runnable command: {line}"
            )


def test_the_marker_is_what_the_tutorial_test_expects_too() -> None:
    """docs/tutorial.md marks its real-data block the same way, and its test reads that marker."""
    tutorial = page_blocks(ROOT / "docs" / "tutorial.md")
    assert [b for b in tutorial if b.not_run], "the tutorial's real-data block lost its marker"


def test_readme_keeps_the_ci_test_command_and_the_quick_start() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # CI runs the README's test command; its `|| exit $?` only makes a failed step fatal there
    ci_cmd = [ln for ln in ci.splitlines() if ln.startswith("python3 -m venv") and "-m pytest" in ln]
    assert len(ci_cmd) == 1
    assert ci_cmd[0].removesuffix(" || exit $?") in readme.splitlines()
    assert ".venv/bin/medclf demo --out medclf-demo" in readme
    quick = [b for b in page_blocks(ROOT / "README.md") if b.not_run is None]
    steps = "\n".join(commands(quick[0]))
    for step in ("data audit", "data split", "train", "evaluate", "serve"):
        assert f"medclf {step} " in steps, step
    assert len(readme.splitlines()) <= 90


def test_a_failing_command_fails_its_page(tmp_path: Path) -> None:
    """The page script stops at the first failing command, inside a pipeline too, and exits non-zero."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    block = Block("x.md", 1, "bash", "echo one\nfalse | cat\necho never\n", None)
    (tmp_path / "page.sh").write_text(page_script([block]), encoding="utf-8")
    proc = subprocess.run(["bash", "page.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "one" in proc.stdout and "never" not in proc.stdout


def test_servers_start_in_the_background_and_training_gets_tiny_settings() -> None:
    body = "medclf train --data DATA --out r\nmedclf serve r   # comment 8000\ncurl -s http://127.0.0.1:8000/model\n"
    script = page_script([Block("x.md", 1, "bash", body, None)])
    assert f"medclf train {TINY_TRAIN} --data DATA" in script
    port = re.search(r"medclf serve r --port (\d+) &\nwait_http http://127\.0\.0\.1:(\d+)/health", script)
    assert port and port[1] == port[2] and "8000" not in script
    assert "curl -sS --fail-with-body http://127.0.0.1:" in script


def _sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _env(tmp: Path) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "MEDCLF_CACHE_DIR": str(tmp / ".cache")}


def _class_folders(out: Path, n: int, seed: int, cwd: Path, env: dict[str, str]) -> None:
    """Synthetic class folders with a patients.csv and no spec: the folder a user brings (as in the tutorial)."""
    medclf = [sys.executable, "-m", "medclf"]
    _sh(
        [
            *medclf,
            "data",
            "synth",
            "--out",
            str(out),
            "--layout",
            "folders",
            "--n",
            str(n),
            "--seed",
            str(seed),
        ],
        cwd,
        env,
    )
    (out / "dataset.yaml").unlink()
    rows = ["image,patient_id"]
    rows += [f"{p.name},{p.name.split('_')[0]}" for p in sorted(out.glob("*/*.jpg"))]
    (out / "patients.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs_fixtures")
    env = _env(root)
    _class_folders(root / "DATA", 120, 0, root, env)
    _class_folders(root / "site_b", 60, 1, root, env)
    (root / "path" / "to").mkdir(parents=True)
    (root / "my_images").symlink_to("DATA")
    (root / "path" / "to" / "class_folders").symlink_to("../../DATA")
    images = sorted((root / "DATA").glob("*/*.jpg"))
    (root / "photos").mkdir()
    for image in images[:2] + images[-2:]:
        shutil.copy(image, root / "photos" / image.name)
    shutil.copy(images[0], root / "one.jpg")
    shutil.copy(images[-1], root / "lesion.jpg")
    for run in ("skin_bm", "other_run"):
        cmd = [sys.executable, "-m", "medclf", "train", "--data", "DATA", "--out", f"runs/{run}"]
        _sh(cmd + TINY_TRAIN.split(), root, env)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("page", runnable_pages())
def test_page_commands_run(page: str, fixtures: Path, tmp_path: Path) -> None:
    for tool in ("bash", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the documented commands need {tool}")
    for module in ("streamlit", "fastapi", "uvicorn"):
        pytest.importorskip(module)
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    blocks = [b for b in page_blocks(path) if b.not_run is None]
    work = tmp_path / "work"
    shutil.copytree(fixtures, work, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    (work / "page.sh").write_text(page_script(blocks), encoding="utf-8")
    proc = subprocess.run(
        ["bash", "page.sh"], cwd=work, capture_output=True, text=True, timeout=300, env=_env(tmp_path)
    )
    assert proc.returncode == 0, f"a command of {page} failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
