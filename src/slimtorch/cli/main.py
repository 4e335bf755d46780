"""Entry point of the ``slimtorch`` command: parses arguments, runs a verb, turns errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from slimtorch._version import __version__
from slimtorch.errors import SlimError

VERBS = ("demo", "compress", "measure", "export")


class UsageError(Exception):
    """A command-line value refused while parsing: the message is the whole one-line report."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors (a missing or unknown option, a value its ``type=`` refused) become one line,
    like every other error of the CLI; sub-command parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help' for usage)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    import importlib

    parser = _Parser(
        prog="slimtorch",
        description="Make trained PyTorch models smaller and faster, with measured size, speed and accuracy.",
    )
    parser.add_argument("--version", action="version", version=f"slimtorch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"slimtorch.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 for a usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    if args.verb is None:
        parser.print_help()
        return 2
    from slimtorch._log import set_quiet

    set_quiet(args.quiet)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except SlimError as err:
        if args.debug:
            raise
        print(f"slimtorch {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimtorch {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
