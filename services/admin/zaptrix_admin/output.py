"""Output shared by every command: a table for people, JSON for scripts (--json), progress on long work."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class UsageError(Exception):
    """A mistake of the caller (bad arguments, unknown id): printed as `error: ...`, exit code 1."""


class Output:
    def __init__(self, *, as_json: bool, stdout: Any = None, stderr: Any = None) -> None:
        self.as_json = as_json
        self.out = Console(file=stdout or sys.stdout, soft_wrap=True)
        self.err = Console(file=stderr or sys.stderr, soft_wrap=True)

    def say(self, message: str) -> None:
        """A sentence for people; with --json it goes to stderr so stdout stays one JSON document."""
        (self.err if self.as_json else self.out).print(message, markup=False, highlight=False)

    def error(self, message: str) -> None:
        self.err.print(f"error: {message}", markup=False, highlight=False)

    def table(
        self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], data: Any = None
    ) -> None:
        """Rows as a table, or `data` (default: rows as dicts keyed by header) as JSON."""
        if self.as_json:
            doc = data if data is not None else [dict(zip(header, r, strict=True)) for r in rows]
            self.out.file.write(json.dumps(doc, indent=2, default=str) + "\n")
            return
        t = Table(title=title, title_justify="left", box=None, header_style="bold")
        for h in header:
            t.add_column(h)
        for r in rows:
            t.add_row(*("-" if c is None or c == "" else str(c) for c in r))
        self.out.print(t)

    def json(self, data: Any) -> None:
        self.out.file.write(json.dumps(data, indent=2, default=str) + "\n")

    @contextmanager
    def progress(self, what: str, total: int | None) -> Iterator[Progress]:
        """A progress bar on stderr (hidden with --json or when stderr is not a terminal)."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            disable=self.as_json or not self.err.is_terminal,
        )
        with bar:
            bar.add_task(what, total=total)
            yield bar


def confirm(out: Output, question: str, *, assume_yes: bool) -> bool:
    """Ask before a change (unless --yes); refuses when there is no terminal to ask on."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{question} - no terminal to confirm on: pass --yes")
    out.err.print(f"{question} [y/N] ", end="", markup=False)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}
