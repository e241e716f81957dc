"""Optional dependencies: package names that load on first use (PEP 562), so that ``medclf --help`` imports no heavy
library, and the pip extras that bring the libraries only some commands use.

``pip install medclf`` predicts and evaluates; training, the HTML reports, Grad-CAM, the dataset audit, DICOM,
the REST server and the web app each need an extra (docs/install.md). Code that needs one calls
:func:`require_extra` before importing it, so a missing library is one line that names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from medclf.errors import MedclfError

__all__ = ["EXTRAS", "MissingExtraError", "has_extra", "lazy_names", "missing_extra", "require_extra"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("lightning", "optuna", "matplotlib"),
    "report": ("matplotlib", "jinja2"),
    "explain": ("pytorch_grad_cam", "matplotlib"),
    "audit": ("imagehash", "jinja2"),
    "dicom": ("pydicom",),
    "labels": ("cleanlab",),
    "serve": ("fastapi", "uvicorn"),
    "app": ("streamlit",),
    "openvino": ("openvino",),
}
"""Each extra of pyproject.toml -> the modules (import names) medclf uses from it."""


class MissingExtraError(MedclfError, ImportError):
    """A command needs a library of an extra that is not installed; the message names the ``pip install``."""


def lazy_names(package: str, where: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: name -> ``getattr(import_module(package + "." + where[name]), name)``.

    The value is stored in ``namespace`` (the package's globals) on first use, so later lookups cost nothing.
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a module without a spec
        return False


def _missing(extra: str) -> list[str]:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [m for m in EXTRAS[extra] if not _installed(m)]


def has_extra(extra: str) -> bool:
    """Whether every module medclf uses from ``extra`` is installed (found, not imported)."""
    return not _missing(extra)


def missing_extra(extra: str, what: str, modules: list[str] | None = None) -> MissingExtraError:
    """The error for ``what`` (a command or feature) when ``extra`` is not installed."""
    names = f" ({', '.join(modules)} not installed)" if modules else ""
    return MissingExtraError(f"{what} needs the {extra} extra{names}: pip install 'medclf[{extra}]'")


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'medclf[extra]'`` unless ``extra`` is installed."""
    missing = _missing(extra)
    if missing:
        raise missing_extra(extra, what, missing)
