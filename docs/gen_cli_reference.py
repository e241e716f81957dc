"""Write docs/cli-reference.md by walking the real argparse parser of `medclf` (medclf.cli.build_parser).

.venv/bin/python docs/gen_cli_reference.py

The page is formatted here, never by argparse's HelpFormatter, so it does not depend on the terminal width.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medclf.cli import build_parser

OUT = Path(__file__).resolve().parent / "cli-reference.md"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    text = _cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _help(action: argparse.Action) -> str:
    # as argparse's HelpFormatter._expand_help: help strings are %-formatted (%(default)s, %%)
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    return _cell((action.help or "") % {**params, "prog": "medclf"})


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        name = "{" + ",".join(map(str, action.choices)) + "}"
    elif isinstance(action.metavar, tuple):
        name = " ".join(action.metavar)
    else:
        name = str(action.metavar or (action.dest if not action.option_strings else action.dest.upper()))
    if action.nargs in ("*", argparse.REMAINDER):
        return f"[{name} ...]"
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    if action.nargs == "?":
        return f"[{name}]"
    return name


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or d is False or d == [] or action.nargs == 0:
        return ""
    return _code(repr(d) if isinstance(d, str) else str(d))


def _usage(path: str, parser: argparse.ArgumentParser) -> str:
    parts = [path]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._VersionAction) or a.help == argparse.SUPPRESS:
            continue
        if isinstance(a, argparse._SubParsersAction):
            parts.append(f"{a.metavar or 'COMMAND'} ...")
        elif not a.option_strings:
            parts.append(_metavar(a))
        else:
            opt = a.option_strings[-1] if a.option_strings[-1].startswith("--") else a.option_strings[0]
            arg = f"{opt} {_metavar(a)}".strip()
            parts.append(arg if a.required else f"[{arg}]")
    return " ".join(parts)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: _help(c) for c in a._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in a.choices.items()]
    return out


def _section(path: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    description = _cell(parser.description or summary)
    if description:
        lines += [description, ""]
    lines += ["```", _usage(path, parser), "```", ""]
    rows = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
            continue
        name = ", ".join(a.option_strings) if a.option_strings else _metavar(a)
        arg = _metavar(a) if a.option_strings else "(positional)"
        if a.required and a.option_strings:
            arg = f"{arg} (required)".strip()
        if isinstance(a, argparse._AppendAction):
            arg = f"{arg} (repeatable)"
        choices = ", ".join(map(str, a.choices)) if a.choices is not None else ""
        helptext = _help(a) + (f" Choices: {choices}." if choices and "{" not in arg else "")
        rows.append(f"| {_code(name)} | {_cell(arg)} | {_default(a)} | {helptext.strip()} |")
    if rows:
        lines += ["| option | argument | default | meaning |", "|---|---|---|---|", *rows, ""]
    subs = _subcommands(parser)
    if subs:
        lines += ["| subcommand | what |", "|---|---|"]
        lines += [f"| [`{path} {n}`](#{_anchor(f'{path} {n}')}) | {_cell(h)} |" for n, h, _ in subs]
        lines.append("")
        for name, helptext, sub in subs:
            lines += _section(f"{path} {name}", helptext, sub, level + 1)
    return lines


def _anchor(path: str) -> str:
    # GitHub's heading anchors: lower case, spaces -> '-', punctuation dropped
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render() -> str:
    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Every `medclf` command and option, generated from the real argparse parser (`medclf.cli.build_parser`)",
        "by `docs/gen_cli_reference.py`; do not edit by hand. Every command also takes `-h`/`--help`, which",
        "prints the same text.",
        "A problem the user can fix is printed as one line `medclf COMMAND: error: ...` with exit status 2",
        "(`--debug` or `MEDCLF_DEBUG=1` shows the traceback); see [troubleshooting.md](troubleshooting.md).",
        "Config keys for `--set KEY=VALUE` are in [config-reference.md](config-reference.md).",
        "",
    ]
    lines += _section("medclf", "", parser, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
