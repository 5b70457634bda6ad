"""`zaptrix-admin`: one CLI for the operator's work. `zaptrix-admin --help` lists the command groups.

Each group is a module of this package with `register(subparsers)`; its commands set `handler`, an async
function `(args, out) -> int` (the exit code). Add a group by adding its module to GROUPS.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from types import ModuleType

from zaptrix.logging import configure_logging

from zaptrix_admin import channels, dead_letters, erase, portals, templates, tokens, usage
from zaptrix_admin.output import Output, UsageError

GROUPS: tuple[ModuleType, ...] = (portals, channels, tokens, dead_letters, templates, usage, erase)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zaptrix-admin", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (for scripts)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr at INFO")
    sub = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for group in GROUPS:
        group.register(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """argparse takes `--access-token X` for `--access-token-env X`: a secret typed into argv would be
    accepted (and shown by `ps`). Only whole option names, in every (sub)command."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("zaptrix-admin", "INFO" if args.verbose else "WARNING")
    out = Output(as_json=args.json)
    try:
        code: int = asyncio.run(args.handler(args, out))
    except UsageError as exc:
        out.error(str(exc))
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
