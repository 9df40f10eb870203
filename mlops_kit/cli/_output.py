"""Shared output helpers for the CLI: tables (rich) and JSON."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 200  # files and pipes: no wrapping of ids and paths
    console.print(table)
