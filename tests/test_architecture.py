"""The package layers of src/medclf (docs/architecture.md): imports point one way, and no private name crosses a
module boundary.

Every import in the source counts, at module level or inside a function (a lazy import is still a dependency).
The command-line modules (``cli.py``, ``<area>/_cli.py``, ``demo.py``, ``__main__.py``) sit above every package:
they wire the packages together and may import any of them.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "medclf"

LAYERS = ["medclf", "data", "runtime", "models", "explain", "evaluate", "serve", "train", "app"]
"""Lowest first: a package may import its own layer and the ones before it. ``medclf`` is the root package and
its private helper modules (errors, config, _atomic, _lazy); ``app`` is the command line and the demo."""
APP_MODULES = {"medclf.cli", "medclf.__main__", "medclf.demo", "medclf.demo_cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(module: str) -> str:
    """The layer a module belongs to: its top-level subpackage, ``medclf`` or ``app``."""
    parts = module.split(".")
    if module in APP_MODULES or parts[-1] == "_cli":
        return "app"
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "medclf"


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every medclf import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "medclf"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "medclf":
                continue
            for alias in node.names:
                # `from medclf.pkg import module` imports that module; anything else is a name of `source`
                if _is_module(f"{source}.{alias.name}"):
                    out.append((node.lineno, f"{source}.{alias.name}", None))
                else:
                    out.append((node.lineno, source, alias.name))
    return out


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS and docs/architecture.md"


def test_imports_follow_the_layers() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in _sources():
        here = _layer(_module_name(path))
        for line, target, _ in _imports(path):
            there = _layer(target)
            if rank[there] > rank[here]:
                upward.append(f"{path.relative_to(SRC)}:{line}: {here} imports {target} ({there})")
    assert not upward, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in _sources():
        here = _layer(_module_name(path))
        for _, target, _ in _imports(path):
            if _layer(target) != here:
                edges[here].add(_layer(target))
    # depth-first search for a back edge
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, [*trail, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, "import cycle between packages: " + " -> ".join(cycle)


def test_no_private_name_crosses_a_module() -> None:
    """``from medclf.x import _name`` from another module, or a private module of another package, fails."""
    found = []
    for path in _sources():
        module = _module_name(path)
        for line, target, name in _imports(path):
            where = f"{path.relative_to(SRC)}:{line}"
            if name is not None and _private(name) and target != module:
                found.append(f"{where}: private name {name} of {target}")
            parts = target.split(".")
            for i, part in enumerate(parts):
                # a private module is open to its own package (its parent) and that package's modules
                if (
                    _private(part)
                    and not module.startswith(".".join(parts[:i]) + ".")
                    and module != ".".join(parts[:i])
                ):
                    found.append(f"{where}: private module {target}")
                    break
    assert not found, "private names used outside their module:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from medclf.serve.predictor import _softmax\n", "private name _softmax"),
        ("from medclf.models import _registry\n", "private module medclf.models._registry"),
    ],
)
def test_the_private_name_check_catches(tmp_path: Path, monkeypatch, source: str, message: str) -> None:
    """The checks above can fail: a module of another package importing a private name or module is reported."""
    pkg = tmp_path / "medclf" / "train"
    pkg.mkdir(parents=True)
    for p in (tmp_path / "medclf", pkg):
        (p / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(source)
    for rel in ("serve/predictor.py", "models/_registry.py", "models/__init__.py", "serve/__init__.py"):
        target = tmp_path / "medclf" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "medclf")
    with pytest.raises(AssertionError, match=re.escape(message)):
        test_no_private_name_crosses_a_module()


def test_the_layer_check_catches(tmp_path: Path, monkeypatch) -> None:
    """A runtime module importing the serving package is an upward import and a cycle."""
    for rel, text in {
        "medclf/__init__.py": "",
        "medclf/runtime/__init__.py": "",
        "medclf/runtime/engine.py": "from medclf.serve import predictor\n",
        "medclf/serve/__init__.py": "",
        "medclf/serve/predictor.py": "from medclf.runtime import engine\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "medclf")
    with pytest.raises(AssertionError, match=re.escape("runtime imports medclf.serve.predictor")):
        test_imports_follow_the_layers()
    with pytest.raises(AssertionError, match="import cycle between packages"):
        test_no_import_cycle_between_packages()
