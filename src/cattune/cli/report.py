"""``cattune report``: rewrite an experiment's report and plots from its results.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rewrite report.md and the plots of a finished experiment from its results.json",
        description=(
            "Rewrite report.md and the PNG plots of a finished experiment from its results.json, "
            "without training or evaluating anything: after upgrading cattune, or for a results "
            "folder copied without its runs. Training curves and attention heat-maps are drawn "
            "when the arms' run folders are beside results.json (runs/<name>/<arm>/); a copied "
            "folder gets a report without those two plots. Prints the comparison table and the findings."
        ),
        epilog="Example: cattune report runs/stg-smollm2    or    cattune report results/stg-study --out /tmp/r",
    )
    p.add_argument("results", type=Path, help="an experiment folder (runs/<name>) or its results.json")
    p.add_argument("--out", type=Path, default=None, help="write the report here instead (default: beside results.json)")
    p.set_defaults(func=run)


def print_results(results: dict[str, Any]) -> None:
    """The comparison table and the findings of an experiment's results, on the terminal."""
    from cattune.report import comparison_table, findings

    print(comparison_table(results))
    print()
    for line in findings(results):
        print(f"- {line}")


def run(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.experiment import report_from_folder

    try:
        results, written = report_from_folder(args.results, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print_results(results)
    print(f"\nwrote {', '.join(str(p) for p in written.values())}")
    return 0
