"""The ``wfa`` command line: one subcommand per module in :mod:`wfa.commands`."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from wfa import __version__
from wfa.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="wfa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"wfa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"wfa.commands.{name}")
        help_text = (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wfa`` console script; returns the exit code.

    Expected failures (:class:`wfa.errors.WfaError`) and a configuration error become one line on stderr,
    ``wfa COMMAND: error: ...``, with their exit code (1, or 2 for unusable arguments); Ctrl-C exits 130.
    Anything else is a bug and keeps its traceback.
    """
    from wfa.config import ConfigError
    from wfa.errors import WfaError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except WfaError as error:
        print(f"wfa {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except ConfigError as error:
        print(f"wfa {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wfa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
