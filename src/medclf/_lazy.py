"""Package names that load on first use (PEP 562), so that ``medclf --help`` imports no heavy library."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_names"]


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
