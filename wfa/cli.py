"""The ``wfa`` command line: one subcommand per module in :mod:`wfa.commands`.

Only the module of the sub-command being run is imported: the others are listed with the first line of their
docstring, read from the source. So ``wfa --help`` and ``wfa shards ...`` start without torch, which only
the commands that need it (``train``, ``eval``, ``demo``) import.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Collection, Sequence

import wfa
from wfa import __version__
from wfa.commands import COMMANDS
from wfa.errors import ConfigError, WfaError
from wfa.plugins import IMPORT_HELP, IMPORT_OPTION, import_modules, split_imports


def command_doc(name: str) -> str:
    """The docstring of ``wfa.commands.<name>``, read from its source without importing it."""
    module = sys.modules.get(f"wfa.commands.{name}")
    if module is not None:
        return module.__doc__ or ""
    spec = importlib.util.find_spec(f"wfa.commands.{name}")
    source = spec.loader.get_source(spec.name) if spec is not None and spec.loader is not None else None
    return ast.get_docstring(ast.parse(source or "")) or ""


def build_parser(load: Collection[str] = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser listing every subcommand; those in ``load`` (default all) have their module
    imported and their arguments added."""
    parser = argparse.ArgumentParser(prog="wfa", description=wfa.__doc__.splitlines()[0] + " Every command has --help.")
    parser.add_argument("--version", action="version", version=f"wfa {__version__}")
    parser.add_argument(IMPORT_OPTION, dest="imports", action="append", metavar="MODULE",
                        help=IMPORT_HELP + "; may stand anywhere on the line, e.g. wfa shards --import my_readers "
                             "my-source ...")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if name not in load:
            doc = command_doc(name)
            sub.add_parser(name, help=doc.strip().splitlines()[0] if doc.strip() else None, description=doc)
            continue
        module = importlib.import_module(f"wfa.commands.{name}")
        help_text = (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wfa`` console script; returns the exit code.

    ``--import MODULE`` (anywhere on the line) is imported before the parser is built, so the readers and
    methods it registers are there. Expected failures (:class:`wfa.errors.WfaError`) and a configuration
    error become one line on stderr, ``wfa COMMAND: error: ...``, with their exit code (1, or 2 for unusable
    arguments); Ctrl-C exits 130. Anything else is a bug and keeps its traceback.
    """
    try:
        modules, rest = split_imports(list(sys.argv[1:] if argv is None else argv))
    except WfaError as error:
        return _failed("wfa", error, error.exit_code)
    command = next((token for token in rest if not token.startswith("-")), None)
    prog = f"wfa {command}" if command in COMMANDS else "wfa"
    try:
        import_modules(modules)
        parser = build_parser([command] if command in COMMANDS else [])
    except WfaError as error:
        return _failed(prog, error, error.exit_code)
    args = parser.parse_args(rest)
    try:
        return int(args._run(args) or 0)
    except WfaError as error:
        return _failed(prog, error, error.exit_code)
    except ConfigError as error:
        return _failed(prog, error, 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _failed(prog: str, error: BaseException, code: int) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code

if __name__ == "__main__":
    sys.exit(main())
