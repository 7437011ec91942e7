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
        epilog=("Override any key with key=value, e.g. seeds=[1,2,3] train.max_steps=20 eval_limit=50. "
                "Every arm is compared with the arm named baseline; reference=ARM compares them with another "
                "(e.g. --arms baseline-lr2,cat reference=baseline-lr2)."),
    )
    p.add_argument("--config", required=True, help="experiment YAML (see configs/experiment_*.yaml)")
    p.add_argument("--arms", default=None, metavar="NAME,...",
                   help="run and report only these arms of the config (their finished runs are reused)")
    p.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                   help="write config.yaml, results.json, report.md and plots here instead of the run folder "
                        "(with --arms: report a subset without replacing the whole grid's results)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (nested keys with dots)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.cli.report import print_results
    from cattune.experiment import ExperimentRunner

    config = load_config(ExperimentConfig, args.config, args.overrides)
    if args.arms:
        names = [name.strip() for name in args.arms.split(",") if name.strip()]
        unknown = [name for name in names if name not in config.arms]
        if unknown or not names:
            raise UserError(f"--arms {args.arms}: {', '.join(unknown) or 'no arm named'}; "
                            f"the arms of {args.config} are {', '.join(config.arms)}")
        config.arms = {name: config.arms[name] for name in names}
    runner = ExperimentRunner(config, results_dir=args.results_dir)
    results = runner.run()
    print()
    print_results(results)
    print(f"\nresults: {runner.results_dir / 'results.json'}  report: {runner.results_dir / 'report.md'}")
    return 0
