from __future__ import annotations

import subprocess
import sys

import pytest

from medclf.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "not a diagnosis" in out.replace("\n", " ")


@pytest.mark.slow
def test_console_script_runs_as_module():
    res = subprocess.run(
        [sys.executable, "-m", "medclf", "--version"], capture_output=True, text=True, check=True
    )
    assert res.stdout.startswith("medclf ")
