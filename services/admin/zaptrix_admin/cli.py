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

from zaptrix_admin import templates
from zaptrix_admin.output import Output, UsageError

GROUPS: tuple[ModuleType, ...] = (templates,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zaptrix-admin", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (for scripts)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr at INFO")
    sub = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for group in GROUPS:
        group.register(sub)
    return parser


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
