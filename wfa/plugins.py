"""Readers and methods from outside wfa: ``--import MODULE`` and the ``wfa.readers`` / ``wfa.methods`` entry points.

A user's reader or method is a module that registers it (``@register_reader``, ``@register_method``). wfa finds
such a module in two ways:

- **entry points** of an installed package (the ``pytest11`` way): in its ``pyproject.toml``::

      [project.entry-points."wfa.readers"]
      my-captions = "my_package.readers"
      [project.entry-points."wfa.methods"]
      first = "my_package.methods"

  The entry point's name is the name it registers. A registry loads its group the first time it is asked
  (:func:`load_entry_points`), so the package's readers and methods exist in every process -- ``wfa shards``,
  ``wfa train``, ``accelerate launch -m wfa.trainer``, the Python API -- with nothing on the command line;
- **``--import MODULE``** on the command line (a dotted module name, found in the current folder or the
  environment, or a path to a ``.py`` file), for code that is not packaged: ``wfa`` accepts it anywhere on
  the line (:func:`split_imports`), ``python -m wfa.trainer`` after the module name.

This module is stdlib only: the light command line (``wfa --help``, ``wfa shards``) goes through it.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Container, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from wfa.errors import PluginError

IMPORT_OPTION = "--import"
IMPORT_HELP = ("import MODULE first, e.g. a module registering your own readers or methods: a dotted name "
               "(found in the current folder or the environment) or a path to a .py file; repeatable")

_loaded_groups: set[str] = set()


def split_imports(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(modules, rest)``: the values of every ``--import MODULE`` / ``--import=MODULE`` in ``argv`` (up to a
    ``--``), and ``argv`` without them, in order. ``PluginError`` when ``--import`` has no value."""
    modules: list[str] = []
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            rest.append(token)
            rest.extend(tokens)
            break
        if token == IMPORT_OPTION:
            value = next(tokens, None)
            if value is None or value.startswith("-"):
                raise PluginError(f"{IMPORT_OPTION} needs a module name or a .py file after it")
            modules.append(value)
        elif token.startswith(IMPORT_OPTION + "="):
            modules.append(token.split("=", 1)[1])
        else:
            rest.append(token)
    return modules, rest


def import_modules(names: Iterable[str]) -> list[ModuleType]:
    """Import each ``--import`` value: a dotted module name or a path to a ``.py`` file (imported under its
    stem, with its folder added to ``sys.path``). Importing the same module again is a no-op.

    ``PluginError`` (one line) when a module cannot be found; an exception raised by the module's own code
    keeps its traceback (it is a bug in that code).
    """
    return [_import_one(name) for name in names]


def _import_one(name: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        path = Path(name).resolve()
        if not path.is_file():
            raise PluginError(f"{IMPORT_OPTION} {name}: no such file")
        _add_to_path(str(path.parent))
        module = _import_named(path.stem, name)
        origin = getattr(module, "__file__", None)
        if origin is None or Path(origin).resolve() != path:
            raise PluginError(f"{IMPORT_OPTION} {name}: a module named {path.stem!r} is already imported from "
                              f"{origin or 'a built-in'}; rename the file")
        return module
    if not all(part.isidentifier() for part in name.split(".")):
        raise PluginError(f"{IMPORT_OPTION} {name!r} is neither a dotted module name nor a path to a .py file")
    _add_to_path(os.getcwd(), first=False)  # as `python -m` finds modules in the current folder
    return _import_named(name, name)


def _import_named(module_name: str, given: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name or module_name.startswith(f"{error.name}."):  # the module itself, not its imports
            raise PluginError(f"{IMPORT_OPTION} {given}: no module named {error.name!r} in the current folder "
                              "or the environment") from None
        raise


def _add_to_path(folder: str, first: bool = True) -> None:
    if folder not in sys.path:
        if first:
            sys.path.insert(0, folder)
        else:
            sys.path.append(folder)


def load_entry_points(group: str, registry: Container[str], what: str) -> None:
    """Load, once per process, every entry point of ``group`` (``wfa.readers``, ``wfa.methods``) that installed
    packages declare; each must register a ``what`` under its own name in ``registry``.

    ``PluginError`` names the entry point and its package when loading fails or registers nothing.
    """
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)  # first: a plugin that looks the registry up while loading does not recurse
    from importlib.metadata import entry_points

    for point in entry_points(group=group):
        package = point.dist.name if point.dist is not None else "an unknown package"
        where = f"entry point {point.name!r} = {point.value!r} of {package} (group {group})"
        try:
            point.load()
        except Exception as error:  # a broken plugin: say which one, not a traceback from importlib
            module = point.value.split(":")[0]
            raise PluginError(f"{where} failed to load: {type(error).__name__}: {error} "
                              f"(python -c 'import {module}' shows the traceback); fix or uninstall {package}"
                              ) from error
        if point.name not in registry:
            raise PluginError(f"{where} registered no {what} named {point.name!r}; its module must register it "
                              "under the entry point's name")
