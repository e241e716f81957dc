"""docs/tutorial.md runs as written: its ```bash blocks, one after the other, in one shell in an empty folder.

Three changes keep it quick and self-contained, and nothing else is changed:

- `medclf train` gets tiny settings (`TINY_TRAIN`: a small CNN, one epoch, 32-px inputs) in front of its own
  options; the tutorial's default recipe is exercised by the demo and the training tests;
- `medclf serve` and `medclf app`, which run until stopped, start in the background and the script waits until
  they answer over HTTP on 127.0.0.1; they are stopped when the script ends;
- the ports 8000 and 8501 become free ones.

A block with `<!-- not run by the tests: REASON -->` right before it (part 2: a real data set to download) is left
out, the marker tests/test_docs_commands.py reads on every page.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _fixtures_docs import HEALTH, PREAMBLE, TINY_TRAIN

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
NOT_RUN = "<!-- not run by the tests: "


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks; a block marked as not run starts with its marker line."""
    found = re.findall(r"^(<!-- .* -->\n)?```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [mark + body for mark, body in found]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tutorial_script(text: str) -> str:
    lines = []
    for block in bash_blocks(text):
        if block.startswith(NOT_RUN):
            continue
        for line in block.splitlines():
            if line.startswith("medclf train "):
                line = line.replace("medclf train ", f"medclf train {TINY_TRAIN} ", 1)
            server = re.match(r"medclf (serve|app) .*--port (\d+)", line)
            if server:
                kind, port = server.groups()
                line = f"{line} &\nwait_http http://127.0.0.1:{port}{HEALTH[kind]}"
            lines.append(line)
    script = "\n".join(lines)
    for port in ("8000", "8501"):
        script = script.replace(port, str(_free_port()))
    return PREAMBLE + script + "\n"


def test_the_page_has_the_steps_the_script_checks() -> None:
    text = PAGE.read_text(encoding="utf-8")
    run = [b for b in bash_blocks(text) if not b.startswith(NOT_RUN)]
    commands = "\n".join(run)
    for step in (
        "data synth",
        "data info",
        "data audit",
        "data split",
        "train",
        "evaluate",
        "card",
        "predict",
    ):
        assert f"medclf {step} " in commands, step
    assert re.search(r"^medclf serve .*--port 8000$", commands, flags=re.MULTILINE)
    assert re.search(r"^medclf app .*--port 8501$", commands, flags=re.MULTILINE)
    # part 2 is a real data set: its block says why the tests leave it out
    skipped = [b for b in bash_blocks(text) if b.startswith(NOT_RUN)]
    assert len(skipped) == 1 and "needs the downloaded data" in skipped[0]


@pytest.mark.slow
def test_tutorial_commands_run(tmp_path: Path) -> None:
    for module in ("streamlit", "fastapi", "uvicorn"):
        pytest.importorskip(module)
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the tutorial's commands need bash and curl")
    script = tutorial_script(PAGE.read_text(encoding="utf-8"))
    (tmp_path / "tutorial.sh").write_text(script, encoding="utf-8")
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", str(tmp_path / "tutorial.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": env_path},
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for made in (
        "lesions/patients.csv",
        "audit/audit.html",
        "split.csv",
        "runs/lesions/run.json",
        "runs/lesions/eval/report.html",
        "runs/lesions/model_card.md",
        "predictions.csv",
    ):
        assert (tmp_path / made).is_file(), made
    out = proc.stdout
    assert "layout    csv" in out and "groups    68 (rule: patient_id)" in out
    assert '"status":"ok"' in out and '"decision":' in out and '"disclaimer":' in out
    assert "To fill in:" in (tmp_path / "runs/lesions/model_card.md").read_text(encoding="utf-8")
