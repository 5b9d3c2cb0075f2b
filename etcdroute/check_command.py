"""``etcdroute check HISTORY.jsonl``: check a saved history.

Reads a history in the documented JSON-lines format (docs/checking.md),
checks G1, G2 and G3 with :mod:`etcdroute.checker` and prints a report:
a summary line, then each violation with its evidence (a minimal failing
sub-history for linearizability). Exit 0 when nothing is wrong, 1 when a
violation was found, 2 when the file is unreadable or breaks the format,
3 when no violation was found but some uid's search ran out of time
(inconclusive: not a pass). Uids, process names and messages come from
the file and are printed as plain text, never as rich markup.
"""

from __future__ import annotations

import logging
import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from etcdroute.checker import (
    MAX_SECONDS_PER_UID,
    CheckResult,
    Violation,
    check_history,
)
from etcdroute.errors import HistoryFormatError
from etcdroute.history import read_history

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_FILE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


@click.command(name="check")
@click.argument("history", type=click.Path(dir_okay=False))
@click.option(
    "--show",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="Print at most this many violations in full.",
)
@click.option(
    "--no-shrink",
    is_flag=True,
    help="Report whole failing uids instead of minimal sub-histories.",
)
@click.option(
    "--max-seconds-per-uid",
    type=click.FloatRange(0, min_open=True),
    default=MAX_SECONDS_PER_UID,
    show_default=True,
    help="Search time per uid; past it the uid is INCONCLUSIVE (exit 3).",
)
def check_command(
    history: str, show: int, no_shrink: bool, max_seconds_per_uid: float
) -> None:
    """Check a recorded history (JSON lines) for G1, G2 and G3."""
    console = Console()
    try:
        operations = read_history(history)
    except (OSError, HistoryFormatError) as exc:
        click.echo(f"Error: cannot read {history}: {exc}", err=True)
        sys.exit(EXIT_BAD_FILE)
    result = check_history(
        operations,
        shrink=not no_shrink,
        max_seconds_per_uid=max_seconds_per_uid,
    )
    render(console, result, show)
    if result.violations:
        sys.exit(EXIT_VIOLATIONS)
    sys.exit(EXIT_OK if result.ok else EXIT_INCONCLUSIVE)


def render(console: Console, result: CheckResult, show: int) -> None:
    """Print the summary, then up to ``show`` violations."""
    outcomes = ", ".join(
        f"{count} {name}" for name, count in sorted(result.counts.items())
    )
    console.print(
        f"{result.operations} operations ({outcomes or 'none'}) on "
        f"{result.uids} uids checked in {result.elapsed:.3f} s"
    )
    if result.ok:
        console.print("[bold green]OK[/]: G1, G2 and G3 hold")
        return
    if result.inconclusive:
        line = Text("INCONCLUSIVE", style="bold yellow")
        line.append(
            f": the search ran out of time on {len(result.inconclusive)} "
            "uid(s), neither passed nor failed: "
        )
        line.append(", ".join(map(repr, result.inconclusive)))
        console.print(line)
    if not result.violations:
        return
    kinds: dict[str, int] = {}
    for violation in result.violations:
        kinds[violation.kind] = kinds.get(violation.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    console.print(
        f"[bold red]VIOLATIONS[/]: {summary} on "
        f"{len(result.failed_uids())} uid(s)"
    )
    for violation in result.violations[:show]:
        console.print(_table(violation))
    hidden = len(result.violations) - show
    if hidden > 0:
        console.print(f"... and {hidden} more (use --show)")


def _table(violation: Violation) -> Table:
    # Text objects: uids and process names are data, never markup.
    table = Table(
        title=Text(f"{violation.kind} on uid {violation.uid!r}"),
        caption=Text(violation.message),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("ms", "until", "process", "call", "outcome"):
        table.add_column(column)
    origin = min(op.invoke for op in violation.operations)
    for op in sorted(violation.operations, key=lambda o: o.invoke):
        argument = "" if op.pod is None else f"pod {op.pod}"
        until = (
            "never"
            if op.complete is None
            else f"{(op.complete - origin) * 1000:.3f}"
        )
        table.add_row(
            f"{(op.invoke - origin) * 1000:.3f}",
            until,
            Text(op.process),
            f"{op.op}({argument})",
            Text(op.answer()),
        )
    return table
