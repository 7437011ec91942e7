"""``cattune experiment``: baseline vs CAT (and variants), trained and evaluated end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from cattune.config import load_config
from cattune.experiment_config import ExperimentConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="train baseline and CAT arms, evaluate IID/OOD accuracy, flip rate and attention, write a report",
        description=(
            "Run a baseline-vs-CAT experiment from a YAML config: every arm is trained with the same "
            "data and seed(s), evaluated on every test split (accuracy with 95% intervals beside the "
            "majority baseline), the spurious flip rate and attention shares are measured, and "
            "results.json, report.md and PNG plots are written to the run folder "
            "(runs/<name>/ by default). Re-running the same command resumes an interrupted "
            "experiment without redoing finished steps."
        ),
        epilog="Override any key with key=value, e.g. seeds=[1,2,3] train.max_steps=20 eval_limit=50.",
    )
    p.add_argument("--config", required=True, help="experiment YAML (see configs/experiment_*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (nested keys with dots)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cattune.experiment import ExperimentRunner
    from cattune.report import comparison_table, findings

    config = load_config(ExperimentConfig, args.config, args.overrides)
    runner = ExperimentRunner(config)
    results = runner.run()
    print()
    print(comparison_table(results))
    print()
    for line in findings(results):
        print(f"- {line}")
    print(f"\nresults: {Path(runner.out) / 'results.json'}  report: {Path(runner.out) / 'report.md'}")
    return 0
