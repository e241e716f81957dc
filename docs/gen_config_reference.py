"""Write docs/config-reference.md from the config dataclasses' attribute docstrings (medclf.config.field_docs).

.venv/bin/python docs/gen_config_reference.py
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from medclf.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, field_docs

SECTIONS = (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig))


def _type(tp: object) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(f"`{c}`" for c in typing.get_args(tp))
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")


def _default(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    return "null" if value is None else f"`{value!r}`".replace("'", "")


def _rows(prefix: str, cls: type) -> list[str]:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        desc = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(hints[f.name])} | {_default(f)} | {desc} |")
    return rows


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every key of a recipe (`configs/*.yaml`) and of `--set key=value`. Generated from the attribute docstrings",
        "in `src/medclf/config.py` by `docs/gen_config_reference.py`; do not edit by hand.",
        "",
    ]
    for name, cls in (*SECTIONS, ("", RunConfig)):
        lines += [f"## `{name}`" if name else "## top level", "", (cls.__doc__ or "").strip(), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(name, cls), ""]
    return "\n".join(lines)


OUT = Path(__file__).resolve().parent / "config-reference.md"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
