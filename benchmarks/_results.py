"""Write one benchmark's section into a docs page (default docs/benchmarks-serving.md), between its own markers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-serving.md"

_HEADER = """# Serving benchmarks

Measured by the scripts in `benchmarks/`; each script rewrites its own section below. Random-weight models are
fine for latency (the arithmetic is the same); the OOD validation uses the offline ImageNet weights.
Research use only: no output of medclf is a diagnosis.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    # the 1-minute load average says whether other work shared the CPU while this ran
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def write_section(name: str, body: str, doc: Path = DOC, header: str = _HEADER) -> None:
    """Replace (or append) the section ``name`` of ``doc``; the page starts with ``header`` when it is new."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else header
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    shown = script.relative_to(root).as_posix() if script.is_relative_to(root) else script.name
    cmd = "python " + " ".join([shown, *sys.argv[1:]])
    block = f"{start}\n{body.rstrip()}\n\n_Machine: {machine()}. Date: {stamp}. Command: `{cmd}`._\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from medclf._atomic import atomic_write_text

    atomic_write_text(doc, text)
    print(f"updated {doc}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; `|` in a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"
