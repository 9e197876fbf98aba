"""Names of a package that load their module on first use (PEP 562), so importing the package stays light."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_names(package: str, namespace: dict[str, Any], names: dict[str, str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``names`` map a public name to the module defining it.

    A name is imported on first use and then kept in ``namespace`` (the package's ``globals()``), so later
    look-ups are plain attribute reads; ``dir(package)`` (and so ``help``) lists the names before first use.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
